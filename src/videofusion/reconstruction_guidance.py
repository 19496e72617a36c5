"""Reconstruction guidance for image-to-video (beyond the paper, ``docs/method.md`` §7).

Given the key frame x^k, the base noise b is known exactly (``sampling.implied_base_noise``), and
a key-frame-correcting model's own estimate of the key frame (spec §7, epshat^k = b + rhat^k)

    xhat0^k = (z_t^k - sqrt(1 - abar_t) (b + rhat^k)) / sqrt(abar_t)
            = x^k - sqrt(1 - abar_t) / sqrt(abar_t) * rhat^k

misses it only by what the residual generator, reading the whole clip, still wants to change
in the key frame: where the other frames have another colour or position, rhat^k says so. The
key frame itself cannot move (it is given), so the guidance moves the other frames instead,
down the gradient of that miss (Ho et al., "Video Diffusion Models", 2022, §3.1):

    xtilde^i   = xhat^i - (w_r sqrt(abar_t) / 2) grad_{z_t^i} || x^k - xhat0^k(z_t) ||^2
    epstilde^i = epshat^i + w_r abar_t / sqrt(1 - abar_t) grad_{z_t^i} (1/2) || x^k - xhat0^k ||^2

(the same change written for epsilon, since xhat = (z_t - sqrt(1 - abar_t) epshat) /
sqrt(abar_t)), applied only while sigma_t = sqrt((1 - abar_t) / abar_t) >= ``MIN_SIGMA``. It
costs one forward and one backward pass of the residual generator per guided step, on the
conditional input. Why: the residual generator, trained to read the key frame's colour
from its fifteen neighbours, does not read the neighbours' colour from the key frame
(``docs/results/coherence/README.md``).

Layout: ``(batch, channels, frames, height, width)``.
"""

from __future__ import annotations

import math

import torch

from .models.videofusion import VideoFusionModel
from .noise import key_frame_index

# No guidance below this noise level. In epsilon the change stays about W |rhat^k| as the noise
# vanishes (the gradient of rhat grows as 1 / sqrt(1 - abar_t)), but no later step is left to
# denoise what it adds: with guidance on the last two of 25 DDPM steps (sigma 0.2 and 0.03),
# the key frame's neighbours came out grainy, with it off there they were as clean as the other
# frames (``docs/results/coherence/README.md``, "Reconstruction guidance").
MIN_SIGMA = 0.25


def check_reconstruction_guidance(model: VideoFusionModel, scale: float,
                                  has_key_frame: bool) -> None:
    """Refuse a scale the model or the request cannot use."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) \
            or not math.isfinite(scale) or scale < 0:
        raise ValueError(f"reconstruction guidance must be a finite number >= 0, got {scale!r}")
    if scale == 0:
        return
    if not has_key_frame:
        raise ValueError("reconstruction guidance needs a given key frame (image-to-video)")
    if not model.key_frame_correction:
        raise ValueError("reconstruction guidance reads the residual generator's key-frame "
                         "correction (spec §7): this model has none")


def reconstruction_guidance(
    model: VideoFusionModel,
    z_t: torch.Tensor,
    base: torch.Tensor,
    timestep: torch.Tensor,
    alpha_bar: torch.Tensor,
    lambdas: torch.Tensor,
    condition: dict,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual generator's conditional rhat and the change to epshat, ``(B, C, F, H, W)``
    each (the change zero on the key frame, and on clips below ``MIN_SIGMA``), for a given key
    frame whose base noise is ``base`` ``(B, C, H, W)`` (``sampling.implied_base_noise``). rhat
    comes with the gradient's pass, so the sampler need not run that pass again; below
    ``MIN_SIGMA`` it is the plain pass, without the backward one.

    ``timestep`` and ``alpha_bar`` are ``(B,)``; ``condition`` is the networks' conditional
    input (``Condition.plain()``).
    """
    guided = (1 - alpha_bar) / alpha_bar >= MIN_SIGMA**2  # (B,): sigma_t^2 against the floor
    if not guided.any():
        rhat = model.predict_residual(z_t, base, timestep, alpha_bar, lambdas, **condition)
        return rhat.detach(), torch.zeros_like(rhat)
    k = key_frame_index(z_t.shape[2])
    # the sampler runs in inference mode, whose tensors cannot enter autograd: clone them out
    with torch.inference_mode(False), torch.enable_grad():
        z, base, t, a, lambdas = (x.clone() for x in (z_t, base, timestep, alpha_bar, lambdas))
        condition = {name: None if v is None else v.clone() for name, v in condition.items()}
        z.requires_grad_(True)
        rhat = model.predict_residual(z, base, t, a, lambdas, **condition)
        a = a.to(z).view(-1, 1, 1, 1)
        miss = (1 - a) / a * rhat[:, :, k].pow(2)  # (x^k - xhat0^k)^2, (B, C, H, W)
        (grad,) = torch.autograd.grad(0.5 * miss.sum(), z)  # (B, C, F, H, W)
    grad[:, :, k] = 0  # the given key frame stays as it is
    a = alpha_bar.to(grad).view(-1, 1, 1, 1, 1)
    weight = scale * a / (1 - a).sqrt() * guided.to(grad).view(-1, 1, 1, 1, 1)
    return rhat.detach(), weight * grad
