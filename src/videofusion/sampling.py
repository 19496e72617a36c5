"""The two-step decomposed sampler of spec §4.

Per iteration the base generator denoises the key frame (one frame per clip), then the residual
generator runs on all frames in one batch; the combined epsilon goes through any diffusers
scheduler that predicts epsilon (DDIM, DDPM, DPM-Solver, Euler, ...). Every noise the sampler
draws, the initial latent and the fresh noise of stochastic schedulers, is decomposed (spec §1),
and a part of z_T the caller fixed stays fixed in the fresh noise too (``FreshNoise``, spec §5).

Layout: ``(batch, channels, frames, height, width)``.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .models.videofusion import VideoFusionModel
from .noise import FreshNoise, combine_noise, decomposed_noise, key_frame_index


@dataclass
class Condition:
    """What the networks are conditioned on, and its null counterpart for guidance."""

    class_labels: torch.Tensor | None = None  # (B,)
    encoder_hidden_states: torch.Tensor | None = None  # (B, tokens, dim)
    null_class_labels: torch.Tensor | None = None
    null_encoder_hidden_states: torch.Tensor | None = None

    def for_guidance(self) -> dict:
        """The unconditional and conditional inputs stacked on the batch axis (null first)."""
        def stack(null, cond):
            if cond is None:
                return None
            if null is None:
                raise ValueError("classifier-free guidance needs the null condition")
            return torch.cat([null, cond])

        return {
            "class_labels": stack(self.null_class_labels, self.class_labels),
            "encoder_hidden_states": stack(self.null_encoder_hidden_states,
                                           self.encoder_hidden_states),
        }

    def plain(self) -> dict:
        return {"class_labels": self.class_labels,
                "encoder_hidden_states": self.encoder_hidden_states}


def guided_noise_prediction(
    model: VideoFusionModel,
    z_t: torch.Tensor,
    timestep: torch.Tensor,
    alpha_bar: torch.Tensor,
    lambdas: torch.Tensor,
    condition: Condition,
    guidance_scale: float = 1.0,
    key_frame: torch.Tensor | None = None,
) -> torch.Tensor:
    """epshat with classifier-free guidance applied to each network in turn (spec §4).

    ``timestep`` and ``alpha_bar`` are ``(B,)``, one per clip of ``z_t`` ``(B, C, F, H, W)``.

    The guided bhat is removed from the residual input, so both passes of the residual generator
    see the same z'. A known ``key_frame`` ``(B, C, H, W)`` replaces bhat by the base noise it
    implies (:func:`implied_base_noise`); the base generator is then not run.
    """
    guide = guidance_scale != 1.0
    cond = condition.for_guidance() if guide else condition.plain()

    def doubled(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x]) if guide else x

    def guided(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if not guide:
            return run(x)
        uncond, conditional = run(doubled(x)).chunk(2)
        return uncond + guidance_scale * (conditional - uncond)

    t, a = doubled(timestep), doubled(alpha_bar)  # (B,) or (2B,)
    base = None
    if key_frame is not None:
        base = implied_base_noise(z_t, key_frame, alpha_bar)  # (B, C, H, W)
    elif not model.is_baseline:
        base = guided(lambda x: model.predict_base(x, t, **cond), z_t)  # (B, C, H, W)
    residual = guided(
        lambda x: model.predict_residual(x, None if base is None else doubled(base), t, a,
                                         lambdas, **cond),
        z_t,
    )  # (B, C, F, H, W)
    if base is None:
        return residual
    return combine_noise(base, residual, lambdas)


def implied_base_noise(z_t: torch.Tensor, key_frame: torch.Tensor,
                       alpha_bar: torch.Tensor) -> torch.Tensor:
    """The base noise b for which z_t^k = sqrt(abar_t) x^k + sqrt(1 - abar_t) b (spec §2).

    The key frame's noise is all base (lambda^k = 1), so a known key frame ``x^k`` ``(B, C, H,
    W)`` fixes b exactly: it is what a perfect base generator would predict.
    """
    a = alpha_bar.to(z_t).view(-1, 1, 1, 1)
    return (z_t[:, :, key_frame_index(z_t.shape[2])] - a.sqrt() * key_frame) / (1 - a).sqrt()


def sample_decomposed(
    model: VideoFusionModel,
    scheduler,
    shape: tuple[int, int, int, int, int],
    lambdas: torch.Tensor,
    *,
    num_inference_steps: int = 50,
    generator: torch.Generator | None = None,
    condition: Condition | None = None,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    base_noise: torch.Tensor | None = None,
    residual_noise: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    before_step: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    key_frame: torch.Tensor | None = None,
    signal_leak: torch.Tensor | None = None,
) -> torch.Tensor:
    """Two-step decomposed sampling (spec §4). Returns z_0 ``(B, C, F, H, W)``.

    ``base_noise`` ``(B, C, H, W)`` and ``residual_noise`` ``(B, C, F, H, W)`` fix the parts of
    the initial latent z_T (spec §5: same base = same content, same residual = same motion);
    with a stochastic scheduler they also fix that part of every step's fresh noise
    (``FreshNoise``).
    ``eta`` is DDIM's stochasticity (0: deterministic, 1: DDPM-like); other schedulers ignore it.
    ``before_step(i, z_t)`` returns the z_t that step ``i`` denoises: long videos use it to pin
    the frames a clip shares with the previous one (spec §5, ``videofusion.long_video``).

    ``key_frame`` ``(B, C, H, W)``, in model space, turns this into image-to-video: the clip is
    generated around a given key frame. The key frame carries the base noise (spec §2,
    lambda^k = 1), so a known key frame determines b at every step: the sampler uses that
    implied base noise (:func:`implied_base_noise`) instead of the base generator's estimate.
    The key frame then follows the forward-noised image exactly (its epsilon is the b it was
    noised with), the other frames get the same b through ``sqrt(lambda^i) b`` in epshat and in
    the residual input, and fresh noise of stochastic schedulers stays consistent because the
    key frame's share of it is, again, the base. This is chosen over pinning z_t^k to
    ``sqrt(abar_t) x + sqrt(1 - abar_t) b_T`` (replacement): replacement still feeds the other
    frames the base generator's estimate of b, not the b the image was noised with, and pins
    the key frame to b_T although DDPM-like steps renew the base. z_T^k starts as the image
    noised with the clip's base noise (``scheduler.add_noise``); the returned key frame is the
    image itself (schedulers whose last step stops short of abar = 1 would leave a trace of
    noise).

    ``signal_leak`` ``(C,)``, the training data's per-channel mean in model space, starts from
    z_T = sqrt(abar_T) mean + sqrt(1 - abar_T) eps instead of eps alone. Training never noises
    a clip completely (sqrt(abar_T) = 0.068 on Stable Diffusion's schedule), so every z_T the
    networks learned from holds a faint copy of its clip, and of its mean (a black background
    on moving digits) that pure noise lacks; without it the generated frames sit on a tinted
    background. This is the signal-leak bias of Everaert et al. (WACV 2024), corrected at
    inference with the simplest leak model, the mean; it departs from spec §4 (``None``: pure
    decomposed noise). The noise, and so every control of spec §5, is unchanged.
    """
    if scheduler.config.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError(
            f"the sampler needs an epsilon-predicting scheduler, got prediction_type="
            f"{scheduler.config.prediction_type!r}"
        )
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    model.check_resolution(*shape[-2:])
    condition = condition or Condition()
    lambdas = lambdas.to(device)
    k = key_frame_index(shape[2])
    if key_frame is not None:
        check_key_frame(model, key_frame, shape, lambdas)
        key_frame = key_frame.to(device=device, dtype=dtype)
    parts = decomposed_noise(shape, lambdas, generator, base_noise=base_noise,
                             residual_noise=residual_noise, device=device, dtype=dtype,
                             return_parts=True)
    fresh_noise = FreshNoise(lambdas, generator, base_noise, residual_noise)
    scheduler.set_timesteps(num_inference_steps, device=device)
    first = scheduler.timesteps[:1].expand(shape[0])
    if signal_leak is None:
        z = parts.noise * scheduler.init_noise_sigma
    else:
        if tuple(signal_leak.shape) != (shape[1],):
            raise ValueError(f"signal_leak must be one mean per channel, shape ({shape[1]},), "
                             f"got {tuple(signal_leak.shape)}")
        mean = signal_leak.to(device=device, dtype=dtype).view(1, -1, 1, 1, 1).expand(shape)
        z = scheduler.add_noise(mean, parts.noise, first)
    if key_frame is not None:
        z[:, :, k] = scheduler.add_noise(key_frame, parts.base_noise, first)
    with torch.inference_mode():
        for i, t in enumerate(tqdm(scheduler.timesteps, disable=not progress, desc="sampling")):
            if before_step is not None:
                z = before_step(i, z)
            z_in = scheduler.scale_model_input(z, t)
            alpha_bar = alpha_bar_at(scheduler, t, i).to(device=device, dtype=dtype)
            eps = guided_noise_prediction(model, z_in, t.to(device).expand(shape[0]),
                                          alpha_bar.expand(shape[0]), lambdas, condition,
                                          guidance_scale, key_frame)
            z = scheduler_step(scheduler, eps, t, z, fresh_noise, eta)
        if key_frame is not None:
            z[:, :, k] = key_frame
    return z


def check_key_frame(model: VideoFusionModel, key_frame: torch.Tensor, shape: tuple,
                    lambdas: torch.Tensor) -> None:
    """Refuse a key frame of the wrong shape, or one that cannot carry the base noise."""
    expected = (shape[0], shape[1], *shape[3:])
    if tuple(key_frame.shape) != expected:
        raise ValueError(f"key_frame must have shape {expected} (batch, channels, height, "
                         f"width), got {tuple(key_frame.shape)}")
    if model.is_baseline:
        raise ValueError("image-to-video needs a base generator: the VDM baseline has no base "
                         "noise for the key frame to carry")
    if float(lambdas[key_frame_index(shape[2])]) != 1.0:
        raise ValueError("image-to-video needs lambda = 1 on the key frame (its noise all base, "
                         f"spec §1), got {float(lambdas[key_frame_index(shape[2])])}")


def alpha_bar_at(scheduler, timestep: torch.Tensor, step_index: int) -> torch.Tensor:
    """abar_t of the current step, which the residual input needs (spec §2).

    Karras-style schedulers (Euler, DPM-Solver) carry ``sigma = sqrt((1 - abar) / abar)`` per
    step, also at fractional timesteps; the others index ``alphas_cumprod``.
    """
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) == len(scheduler.timesteps) + 1:
        sigma = sigmas[step_index].double()
        return (1.0 / (1.0 + sigma**2)).float()
    return scheduler.alphas_cumprod[int(timestep)].float()


def scheduler_step(scheduler, eps, t, z, fresh_noise: FreshNoise,
                   eta: float = 0.0) -> torch.Tensor:
    """One scheduler step whose fresh noise, if any, is ``fresh_noise``'s decomposed draw.

    Schedulers that take ``variance_noise`` (DDIM, DPM-Solver) get the draw directly; for the
    others (DDPM, Euler with churn, ...) the draw inside ``step`` is redirected to
    ``fresh_noise`` for the duration of the call.
    """
    params = inspect.signature(scheduler.step).parameters
    kwargs = {"eta": eta} if "eta" in params else {}
    if "variance_noise" in params:
        noise = fresh_noise(z.shape, device=z.device, dtype=z.dtype)
        return scheduler.step(eps, t, z, variance_noise=noise, **kwargs).prev_sample
    with _decomposed_randn(scheduler, fresh_noise):
        return scheduler.step(eps, t, z, generator=fresh_noise.generator).prev_sample


@contextlib.contextmanager
def _decomposed_randn(scheduler, fresh_noise: FreshNoise):
    module = sys.modules[type(scheduler).__module__]
    original = getattr(module, "randn_tensor", None)
    if original is None:
        yield
        return

    def randn_tensor(shape, generator=None, device=None, dtype=None, **kwargs):
        if len(shape) == 5 and shape[2] == fresh_noise.lambdas.numel():
            return fresh_noise(shape, device=device, dtype=dtype or torch.float32)
        return original(shape, generator=generator, device=device, dtype=dtype, **kwargs)

    module.randn_tensor = randn_tensor
    try:
        yield
    finally:
        module.randn_tensor = original
