"""Key-frame colour anchoring (beyond the paper, ``docs/method.md`` §7).

A class label does not say which colour a digit has, and the residual generator, whose temporal
layers join a pixel only to the same pixel in other frames, settles a moving digit's colour
separately in runs of frames: half the shipped model's class-prompted clips switch colour part
way (``docs/results/coherence/README.md``). The key frame is the clip's anchor in VideoFusion
(it carries the base noise every frame shares), so at each late step (below) each frame's clean
estimate has its foreground's colour moved towards the key frame's:

    w_f      = (max over channels of the foreground of xhat0_f)^2           per pixel
    c_f      = sum w_f xhat0_f / sum w_f                                    per frame, RGB
    xhat0_f <- xhat0_f + s (w_f / max w_f) (c_k - c_f)

where the foreground is how far a pixel's channel rises above that channel's median over the
frame (its background), and the step goes on along the epsilon of the moved estimate,
eps' = (z_t - sqrt(abar_t) xhat0') / sqrt(1 - abar_t), as clipping x0 does (``sampling``).
The background (w = 0) is left alone and so is the key frame; the shape, position and brightness
pattern of each frame stay the networks'. With a given key frame (image-to-video) its estimate
is the image itself, so the clip takes the image's colours.

It acts only once the signal outweighs the noise, sigma_t = sqrt((1 - abar_t) / abar_t) <=
``MAX_SIGMA``. Before that the clean estimate is a blur of candidate shapes, and colouring its
faint ones like the digit made them survive as ghost digits and coloured grain in the
background (caption-prompted FVD 213 -> 237 on 128 videos); the colour is still open when the
gate opens (``docs/results/coherence/README.md``, "Anchoring late").

It works on pixels in [-1, 1]: a latent folder has no colours to anchor (refused).

Layout: ``(batch, channels, frames, height, width)``.
"""

from __future__ import annotations

import math

import torch

from .noise import key_frame_index

MAX_SIGMA = 1.0  # the largest noise-to-signal ratio sigma_t at which colours are anchored


def check_colour_anchoring(strength: float, latent: bool = False) -> None:
    """Refuse a strength the sampler cannot use (``latent``: the folder samples VAE latents)."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) \
            or not math.isfinite(strength) or strength < 0:
        raise ValueError(f"colour anchoring must be a finite number >= 0, got {strength!r}")
    if strength and latent:
        raise ValueError("colour anchoring moves colours of pixels: this folder samples VAE "
                         "latents, which have none")


def foreground_weights(pixels: torch.Tensor) -> torch.Tensor:
    """``(B, 1, F, H, W)``: each pixel's weight in its frame's colour, the square of its largest
    rise above its channel's median over the frame. ``pixels`` ``(B, C, F, H, W)`` in [0, 1]."""
    background = pixels.flatten(-2).median(dim=-1).values[..., None, None]  # (B, C, F, 1, 1)
    return (pixels - background).clamp(min=0).amax(dim=1, keepdim=True).square()


def anchor_colours(x0: torch.Tensor, strength: float) -> torch.Tensor:
    """``x0`` ``(B, C, F, H, W)`` clipped to [-1, 1], the pixels it stands for, with each frame's
    foreground colour moved towards the key frame's, by ``strength`` at the frame's brightest
    pixel (module docstring)."""
    x0 = x0.clamp(-1, 1)
    pixels = (x0 + 1) / 2
    weights = foreground_weights(pixels)  # (B, 1, F, H, W)
    total = weights.sum(dim=(-2, -1)).clamp(min=1e-12)  # (B, 1, F)
    colours = (weights * pixels).sum(dim=(-2, -1)) / total  # (B, C, F)
    target = colours[:, :, key_frame_index(x0.shape[2])].unsqueeze(2)  # (B, C, 1)
    share = weights / weights.amax(dim=(-2, -1), keepdim=True).clamp(min=1e-12)
    return x0 + 2 * strength * share * (target - colours)[..., None, None]


def anchored_noise(eps: torch.Tensor, z_t: torch.Tensor, alpha_bar: torch.Tensor,
                   strength: float) -> torch.Tensor:
    """The epsilon whose clean estimate is ``anchor_colours`` of ``eps``'s, at z_t with
    ``alpha_bar`` ``(B,)``: the step the scheduler then takes follows the anchored estimate.
    ``eps`` itself for a clip whose sigma_t is above ``MAX_SIGMA``."""
    a = alpha_bar.to(z_t).view(-1, 1, 1, 1, 1)
    x0 = (z_t - (1 - a).sqrt() * eps) / a.sqrt()
    anchored = (z_t - a.sqrt() * anchor_colours(x0, strength)) / (1 - a).sqrt()
    return torch.where(((1 - a) / a).sqrt() <= MAX_SIGMA, anchored, eps)
