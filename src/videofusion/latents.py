"""Decomposed initial noise (spec §1) for other diffusers video pipelines.

``decomposed_latents`` draws z_T = sqrt(lambda^i) b + sqrt(1 - lambda^i) r^i in the layout a
pipeline's ``latents=`` argument takes, so that any video model starts from frames that share
a base noise: with the same ``base_noise`` and different ``residual_noise`` the videos tend to
share their content, and the other way round (spec §5), even for models that were not trained
with decomposed noise. Only the initial latent is decomposed: a stochastic scheduler inside the
target pipeline (DDPM, DDIM with eta > 0) adds independent per-frame noise at every step, which
weakens the correlation; use a deterministic one (DDIM eta=0, DPM-Solver++, Euler).

Layouts: ``"bcfhw"`` ``(batch, channels, frames, h, w)`` for ``TextToVideoSDPipeline``,
``AnimateDiffPipeline``, ``VideoToVideoSDPipeline`` (see their ``prepare_latents``);
``"bfchw"`` ``(batch, frames, channels, h, w)`` for pipelines that put frames second. Those
``prepare_latents`` multiply the given ``latents`` by ``scheduler.init_noise_sigma``
themselves, so the latents returned here are unit-variance; pass ``init_noise_sigma`` only for
a pipeline that does not scale them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .noise import decomposed_noise

LAYOUTS = ("bcfhw", "bfchw")


def decomposed_latents(
    pipe_or_channels,
    num_frames: int,
    height: int,
    width: int,
    lambda_: float | Sequence[float] | torch.Tensor = 0.5,
    generator: torch.Generator | None = None,
    *,
    batch_size: int = 1,
    layout: str = "bcfhw",
    base_noise: torch.Tensor | None = None,
    residual_noise: torch.Tensor | None = None,
    init_noise_sigma: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Initial latents with decomposed noise for ``pipe(..., latents=...)``.

    ``pipe_or_channels`` is a diffusers pipeline (latent channels from its ``unet`` or
    ``transformer`` config, ``height``/``width`` in pixels divided by ``pipe.vae_scale_factor``,
    device and dtype from the denoiser) or the number of latent channels (``height``/``width``
    are then latent sizes; also for denoisers whose input carries extra conditioning
    channels). ``lambda_`` is the spec's scalar (key frame ``num_frames // 2`` all
    base) or a per-frame vector. ``base_noise`` ``(batch, C, h, w)`` / ``residual_noise``
    ``(batch, C, frames, h, w)`` fix a part, as in ``videofusion.noise.decomposed_noise``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if isinstance(pipe_or_channels, int):
        channels, factor = pipe_or_channels, 1
    else:
        denoiser = getattr(pipe_or_channels, "unet", None) or getattr(
            pipe_or_channels, "transformer", None)
        if denoiser is None:
            raise ValueError("pipe_or_channels must be a diffusers pipeline with a unet or "
                             f"transformer, or an int, got {type(pipe_or_channels).__name__}")
        channels = denoiser.config.in_channels
        factor = getattr(pipe_or_channels, "vae_scale_factor", 1)
        device = device or denoiser.device
        dtype = dtype or denoiser.dtype
    if height % factor or width % factor:
        raise ValueError(f"height and width must be divisible by the VAE's factor {factor}, got "
                         f"{height}x{width}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    shape = (batch_size, channels, num_frames, height // factor, width // factor)
    # drawn where the generator lives (as diffusers' randn_tensor), then moved
    latents = decomposed_noise(shape, lambda_, generator, base_noise=base_noise,
                               residual_noise=residual_noise)
    latents = (latents * init_noise_sigma).to(device=device, dtype=dtype)
    return latents if layout == "bcfhw" else latents.transpose(1, 2).contiguous()
