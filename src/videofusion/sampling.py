"""The two-step decomposed sampler of spec §4, in the manner of k-diffusion's ``sampling.py``.

``sample_decomposed`` is the denoising loop alone: per step the base generator denoises the key
frame, the residual generator all frames in one batch (``guided_noise_prediction``), and the
combined epsilon goes through a diffusers scheduler that predicts epsilon. Everything else is
prepared before the loop: z_T by ``initial_latents`` (the decomposed draw of spec §1, the
signal-leak start, the key frame of image-to-video), and the scheduler's step by
``noise_injecting_step``, which passes every step's fresh noise in explicitly as a decomposed
draw (``FreshNoise``, spec §1 and §5), as diffusers' ``variance_noise`` does. No library is
patched: a scheduler that can only draw its own, independent noise is refused.

Layout: ``(batch, channels, frames, height, width)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial

import torch
from diffusers import DDPMScheduler, EulerDiscreteScheduler
from tqdm.auto import tqdm

from .colour_anchoring import anchored_noise, check_colour_anchoring
from .condition import Condition
from .guidance_interval import check_guidance_interval, guided_at, noise_level
from .models.videofusion import VideoFusionModel
from .noise import DecomposedNoise, FreshNoise, combine_noise, key_frame_index
from .reconstruction_guidance import check_reconstruction_guidance, reconstruction_guidance

# One scheduler step: (epshat, t, z_t, fresh noise) -> z_{t-1}.
Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, FreshNoise], torch.Tensor]


def guided_noise_prediction(
    model: VideoFusionModel,
    z_t: torch.Tensor,
    timestep: torch.Tensor,
    alpha_bar: torch.Tensor,
    lambdas: torch.Tensor,
    condition: Condition,
    guidance_scale: float = 1.0,
    key_frame: torch.Tensor | None = None,
    residual_guidance_scale: float | None = None,
    reconstruction_guidance_scale: float = 0.0,
) -> torch.Tensor:
    """epshat with classifier-free guidance applied to each network in turn (spec §4).

    ``timestep`` and ``alpha_bar`` are ``(B,)``, one per clip of ``z_t`` ``(B, C, F, H, W)``.

    The guided bhat is removed from the residual input, so both passes of the residual generator
    see the same z'. A known ``key_frame`` ``(B, C, H, W)`` replaces bhat by the base noise it
    implies (:func:`implied_base_noise`); the base generator is then not run.

    ``residual_guidance_scale`` guides the residual generator with a scale of its own (``None``:
    ``guidance_scale``, the paper's one scale for both). Beyond the paper, to ask which network
    carries the prompt into the clip: a residual scale of 1 skips the residual generator's
    unconditional pass, the costlier of the two, and on the shipped model loses the digit in a
    quarter of the class-prompted frames (``docs/results.md``, "Few-step sampling").

    ``reconstruction_guidance_scale`` > 0, with a ``key_frame``, moves the other frames towards
    agreeing with it (``videofusion.reconstruction_guidance``).
    """
    if residual_guidance_scale is None:
        residual_guidance_scale = guidance_scale
    # the networks' other inputs for 1 copy of the batch, or 2 (null first), made once
    inputs = {1: (timestep, alpha_bar, condition.plain())}
    if guidance_scale != 1.0 or residual_guidance_scale != 1.0:
        inputs[2] = (torch.cat([timestep, timestep]), torch.cat([alpha_bar, alpha_bar]),
                     condition.for_guidance())  # (2B,)

    def guided(run: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor,
               scale: float) -> torch.Tensor:
        """``run(x, copies)`` under guidance ``scale``."""
        if scale == 1.0:
            return run(x, 1)
        return mix(*run(torch.cat([x, x]), 2).chunk(2), scale)

    def base_pass(x: torch.Tensor, copies: int) -> torch.Tensor:
        t, _, cond = inputs[copies]
        return model.predict_base(x, t, **cond)

    def residual_pass(x: torch.Tensor, copies: int) -> torch.Tensor:
        t, a, cond = inputs[copies]
        return model.predict_residual(x, None if base is None else torch.cat([base] * copies),
                                      t, a, lambdas, **cond)

    base = None
    if key_frame is not None:
        base = implied_base_noise(z_t, key_frame, alpha_bar)  # (B, C, H, W)
        if reconstruction_guidance_scale:
            # the gradient's pass is the residual generator's conditional one: not run twice
            conditional, change = reconstruction_guidance(
                model, z_t, base, timestep, alpha_bar, lambdas, condition.plain(),
                reconstruction_guidance_scale)  # (B, C, F, H, W) each
            residual = conditional
            if residual_guidance_scale != 1.0:
                uncond = model.predict_residual(z_t, base, timestep, alpha_bar, lambdas,
                                                **condition.null())
                residual = mix(uncond, conditional, residual_guidance_scale)
            return combine_noise(base, residual, lambdas) + change
    elif not model.is_baseline:
        base = guided(base_pass, z_t, guidance_scale)  # (B, C, H, W)
    residual = guided(residual_pass, z_t, residual_guidance_scale)  # (B, C, F, H, W)
    if base is None:
        return residual
    if key_frame is not None:  # the key frame is known: nothing to correct
        return combine_noise(base, residual, lambdas)
    return model.combine(base, residual, lambdas)


def mix(uncond: torch.Tensor, conditional: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: the two predictions mixed at ``scale`` (1: the conditional)."""
    return uncond + scale * (conditional - uncond)


def implied_base_noise(z_t: torch.Tensor, key_frame: torch.Tensor,
                       alpha_bar: torch.Tensor) -> torch.Tensor:
    """The base noise b for which z_t^k = sqrt(abar_t) x^k + sqrt(1 - abar_t) b (spec §2).

    The key frame's noise is all base (lambda^k = 1), so a known key frame ``x^k`` ``(B, C, H,
    W)`` fixes b exactly: it is what a perfect base generator would predict.
    """
    a = alpha_bar.to(z_t).view(-1, 1, 1, 1)
    return (z_t[:, :, key_frame_index(z_t.shape[2])] - a.sqrt() * key_frame) / (1 - a).sqrt()


def initial_latents(
    scheduler,
    noise: DecomposedNoise,
    num_inference_steps: int,
    *,
    signal_leak: torch.Tensor | None = None,
    key_frame: torch.Tensor | None = None,
) -> torch.Tensor:
    """Set the scheduler's timesteps and return z_T ``(B, C, F, H, W)`` from its decomposed draw
    ``noise`` (spec §4): the timesteps come first because z_T depends on them.

    ``signal_leak`` ``(C,)``, the training data's per-channel mean in model space, starts from
    z_T = sqrt(abar_T) mean + sqrt(1 - abar_T) eps instead of eps alone. Training never noises
    a clip completely (sqrt(abar_T) = 0.068 on Stable Diffusion's schedule), so every z_T the
    networks learned from holds a faint copy of its clip, and of its mean (a black background
    on moving digits) that pure noise lacks; without it the generated frames sit on a tinted
    background. This is the signal-leak bias of Everaert et al. (WACV 2024), corrected at
    inference with the simplest leak model, the mean; it departs from spec §4 (``None``: pure
    decomposed noise). The noise, and so every control of spec §5, is unchanged.

    ``key_frame`` ``(B, C, H, W)``, in model space, starts image-to-video (spec §2): z_T^k is
    the image noised with the clip's base noise (its noise is all base, lambda^k = 1); the
    denoising loop then uses the base noise the image implies (``sample_decomposed``).
    """
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    batch, channels = noise.noise.shape[:2]
    scheduler.set_timesteps(num_inference_steps, device=noise.noise.device)
    first = scheduler.timesteps[:1].expand(batch)
    if signal_leak is None:
        z = noise.noise * scheduler.init_noise_sigma
    else:
        if tuple(signal_leak.shape) != (channels,):
            raise ValueError(f"signal_leak must be one mean per channel, shape ({channels},), "
                             f"got {tuple(signal_leak.shape)}")
        mean = signal_leak.to(noise.noise).view(1, -1, 1, 1, 1).expand_as(noise.noise)
        z = scheduler.add_noise(mean, noise.noise, first)
    if key_frame is not None:
        if key_frame.shape != noise.base_noise.shape:
            raise ValueError(f"key_frame must have shape {tuple(noise.base_noise.shape)} (batch, "
                             f"channels, height, width), got {tuple(key_frame.shape)}")
        z[:, :, key_frame_index(z.shape[2])] = scheduler.add_noise(
            key_frame.to(z), noise.base_noise, first)
    return z


def sample_decomposed(
    model: VideoFusionModel,
    scheduler,
    latents: torch.Tensor,
    fresh_noise: FreshNoise,
    *,
    condition: Condition | None = None,
    guidance_scale: float = 1.0,
    residual_guidance_scale: float | None = None,
    eta: float = 0.0,
    key_frame: torch.Tensor | None = None,
    reconstruction_guidance_scale: float = 0.0,
    colour_anchoring: float = 0.0,
    guidance_interval: tuple[float, float] | None = None,
    before_step: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Two-step decomposed sampling (spec §4) from z_T ``latents`` ``(B, C, F, H, W)`` over the
    scheduler's timesteps (``initial_latents`` sets them). Returns z_0.

    ``fresh_noise`` holds the lambdas and draws the fresh noise of stochastic steps (spec §1),
    faithful to the parts of z_T the caller fixed (spec §5). ``eta`` is DDIM's stochasticity
    (0: deterministic, 1: DDPM-like); other schedulers ignore it. ``before_step(i, z_t)`` returns
    the z_t that step ``i`` denoises: long videos use it to pin the frames a clip shares with
    the previous one (spec §5, ``videofusion.long_video``).

    ``key_frame`` ``(B, C, H, W)``, in model space, makes this image-to-video, the clip generated
    around a given key frame (z_T from ``initial_latents`` with the same key frame). The key
    frame carries the base noise (spec §2, lambda^k = 1), so a known key frame determines b at
    every step: the noise prediction uses that implied base noise (``implied_base_noise``)
    instead of the base generator's estimate. The key frame then follows the forward-noised
    image exactly (its epsilon is the b it was noised with), the other frames get the same b
    through ``sqrt(lambda^i) b`` in epshat and in the residual input, and fresh noise of
    stochastic schedulers stays consistent because the key frame's share of it is, again, the
    base. This is chosen over pinning z_t^k to ``sqrt(abar_t) x + sqrt(1 - abar_t) b_T``
    (replacement): replacement still feeds the other frames the base generator's estimate of
    b, not the b the image was noised with, and pins the key frame to b_T although DDPM-like
    steps renew the base. The returned key frame is the image itself (schedulers whose last
    step stops short of abar = 1 would leave a trace of noise).

    ``residual_guidance_scale``: the residual generator's own guidance; with a ``key_frame``,
    ``reconstruction_guidance_scale`` pulls the other frames towards it
    (``guided_noise_prediction``). ``colour_anchoring`` > 0 moves each frame's foreground colour
    towards the key frame's at the late steps (``videofusion.colour_anchoring``; pixel space
    only). ``guidance_interval`` ``(low, high)`` guides only the steps whose noise level lies in
    it (``videofusion.guidance_interval``); the others run each network once, on the condition
    alone.

    ``dtype`` float16 or bfloat16 runs the networks' forward passes under autocast, for speed
    on a GPU; the latents, epshat and the scheduler's arithmetic stay in the latents' dtype,
    where rounding would add up over the steps.
    """
    model.check_resolution(*latents.shape[-2:])
    lambdas = fresh_noise.lambdas.to(latents.device)
    check_reconstruction_guidance(model, reconstruction_guidance_scale, key_frame is not None)
    check_colour_anchoring(colour_anchoring)
    check_guidance_interval(guidance_interval)
    if key_frame is not None:
        check_key_frame(model, lambdas)
        key_frame = key_frame.to(latents)
    predict = partial(guided_noise_prediction, model, lambdas=lambdas,
                      condition=condition or Condition(), key_frame=key_frame,
                      reconstruction_guidance_scale=reconstruction_guidance_scale)
    unguided = {"guidance_scale": 1.0, "residual_guidance_scale": 1.0}
    guided = {"guidance_scale": guidance_scale,
              "residual_guidance_scale": residual_guidance_scale}
    step = noise_injecting_step(scheduler, eta)
    batch = latents.shape[0]
    z = latents
    with torch.inference_mode():
        for i, t in enumerate(tqdm(scheduler.timesteps, disable=not progress, desc="sampling")):
            if before_step is not None:
                z = before_step(i, z)
            alpha_bar = alpha_bar_at(scheduler, t, i).to(z)
            z_in = scheduler.scale_model_input(z, t)
            scales = guided if guided_at(noise_level(alpha_bar), guidance_interval) else unguided
            with torch.autocast(z.device.type, dtype, enabled=dtype != torch.float32):
                eps = predict(z_in, t.to(z.device).expand(batch), alpha_bar.expand(batch),
                              **scales)
            eps = eps.to(z.dtype)
            if colour_anchoring:
                eps = anchored_noise(eps, z_in, alpha_bar.expand(batch), colour_anchoring)
            z = step(eps, t, z, fresh_noise)
    return z if key_frame is None else with_key_frame(z, key_frame)


def with_key_frame(z: torch.Tensor, key_frame: torch.Tensor) -> torch.Tensor:
    """``z`` ``(B, C, F, H, W)`` with its key frame replaced by ``key_frame`` ``(B, C, H, W)``."""
    z = z.clone()
    z[:, :, key_frame_index(z.shape[2])] = key_frame
    return z


def check_key_frame(model: VideoFusionModel, lambdas: torch.Tensor) -> None:
    """Refuse a key frame that cannot carry the base noise (its shape: ``initial_latents``)."""
    if model.is_baseline:
        raise ValueError("image-to-video needs a base generator: the VDM baseline has no base "
                         "noise for the key frame to carry")
    key = float(lambdas[key_frame_index(lambdas.numel())])
    if key != 1.0:
        raise ValueError("image-to-video needs lambda = 1 on the key frame (its noise all base, "
                         f"spec §1), got {key}")


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


def noise_injecting_step(scheduler, eta: float = 0.0) -> Step:
    """``scheduler.step`` with its fresh noise passed in, worked out once per run.

    Every fresh noise is ``FreshNoise``'s decomposed draw (spec §1), made only when the step
    uses it (``adds_no_noise``), on the generator's device, then moved. Schedulers whose step
    takes ``variance_noise`` (DDIM, DPM-Solver) get it directly; DDPM's step cannot take it
    and goes through ``ddpm_step``. Any other scheduler that draws its own noise is refused:
    its noise would be independent per frame, against spec §1.
    """
    if scheduler.config.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError(
            f"the sampler needs an epsilon-predicting scheduler, got prediction_type="
            f"{scheduler.config.prediction_type!r}"
        )
    takes = inspect.signature(scheduler.step).parameters
    kwargs = {"eta": eta} if "eta" in takes else {}
    if "use_clipped_model_output" in takes and clips_x0(scheduler):
        # DDIM clips x0 but by default steps along the network's epsilon; re-derived from the
        # clipped x0 (as GLIDE does), the step and x0 agree. Otherwise whatever pushed x0 out of
        # range (reconstruction guidance at high noise) enters whole through epsilon.
        kwargs["use_clipped_model_output"] = True
    if isinstance(scheduler, DDPMScheduler):
        if scheduler.config.variance_type not in DDPM_VARIANCES:
            raise ValueError(f"DDPM with variance_type={scheduler.config.variance_type!r} is not "
                             f"supported: the sampler injects noise with {DDPM_VARIANCES}")
        return partial(ddpm_step, scheduler)
    if adds_no_noise(scheduler, takes, eta):
        return lambda eps, t, z, fresh_noise: scheduler.step(eps, t, z, **kwargs).prev_sample
    if "variance_noise" in takes:
        def step(eps, t, z, fresh_noise):
            noise = draw(fresh_noise, z)
            return scheduler.step(eps, t, z, variance_noise=noise, **kwargs).prev_sample
        return step
    raise ValueError(
        f"{type(scheduler).__name__} draws its own fresh noise, independent for every frame, "
        "and cannot take the decomposed draw of spec §1: use DDIM, DDPM, DPM-Solver or Euler"
    )


def clips_x0(scheduler) -> bool:
    """Whether the scheduler clips or thresholds its x0 estimate."""
    return bool(scheduler.config.get("clip_sample") or scheduler.config.get("thresholding"))


def adds_no_noise(scheduler, takes, eta: float) -> bool:
    """Whether a step, taking the arguments ``takes``, adds no fresh noise: DDIM-like steps
    with eta = 0, DPM-Solver's ODE variants, Euler (noise only with ``s_churn``, which the
    sampler never passes), and steps that have no means to draw any."""
    if "eta" in takes:
        return not eta > 0
    if scheduler.config.get("algorithm_type") in ("dpmsolver", "dpmsolver++"):
        return True
    return isinstance(scheduler, EulerDiscreteScheduler) or not (
        "variance_noise" in takes or "generator" in takes)


# DDPM variances whose noise scale ``ddpm_step`` can read off the scheduler (not learned ones).
DDPM_VARIANCES = ("fixed_small", "fixed_small_log", "fixed_large")


def ddpm_step(scheduler: DDPMScheduler, eps: torch.Tensor, t: torch.Tensor, z: torch.Tensor,
              fresh_noise: FreshNoise) -> torch.Tensor:
    """DDPM's step with the fresh noise injected.

    ``DDPMScheduler.step`` draws its own noise whenever t > 0 and has no argument to take ours.
    Its documented output ``pred_original_sample`` x0 (clipped as the scheduler is configured)
    gives the posterior mean of DDPM's eq. 7, to which the decomposed draw is added times the
    scheduler's own standard deviation, the same arithmetic as the step's. The step's own draw
    goes to a throwaway generator, never to the caller's or to torch's global one.
    """
    out = scheduler.step(eps, t, z, generator=torch.Generator(z.device))
    if t == 0:  # the last step adds no noise
        return out.prev_sample
    prev_t = scheduler.previous_timestep(t)
    alpha_prod_t = scheduler.alphas_cumprod[t]
    alpha_prod_t_prev = scheduler.alphas_cumprod[prev_t] if prev_t >= 0 else scheduler.one
    current_alpha_t = alpha_prod_t / alpha_prod_t_prev
    mean = ((alpha_prod_t_prev ** 0.5 * (1 - current_alpha_t)) / (1 - alpha_prod_t)
            * out.pred_original_sample
            + current_alpha_t ** 0.5 * (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * z)
    variance = scheduler._get_variance(t)
    std = variance if scheduler.config.variance_type == "fixed_small_log" else variance ** 0.5
    return mean + std * draw(fresh_noise, z)


def draw(fresh_noise: FreshNoise, like: torch.Tensor) -> torch.Tensor:
    """A decomposed draw shaped as ``like``, made on the generator's device, then moved."""
    return fresh_noise(like.shape, dtype=like.dtype).to(like.device)
