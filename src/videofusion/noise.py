"""Decomposed noise, spec §1.

Each frame's noise is split into a base noise ``b`` shared by the clip and a residual noise
``r^i`` of its own::

    eps^i = sqrt(lambda^i) * b + sqrt(1 - lambda^i) * r^i

so every ``eps^i`` is N(0, I) and ``corr(eps^i, eps^j) = sqrt(lambda^i * lambda^j)``. The same
draw is used for training noise, the initial latent and the fresh noise of stochastic samplers.

Video layout everywhere: ``(batch, channels, frames, height, width)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import NamedTuple

import torch


class DecomposedNoise(NamedTuple):
    """A draw of spec §1: the combined noise and the two parts it was made from."""

    noise: torch.Tensor  # (batch, channels, frames, height, width)
    base_noise: torch.Tensor  # (batch, channels, height, width): one per clip
    residual_noise: torch.Tensor  # (batch, channels, frames, height, width)


def key_frame_index(num_frames: int) -> int:
    """The key frame k = N // 2 (0-based), whose noise is all base (spec: notation)."""
    return num_frames // 2


def make_lambdas(
    num_frames: int, lambda_: float | Sequence[float] | torch.Tensor = 0.5
) -> torch.Tensor:
    """Per-frame share of the noise that is common to the clip, shape ``(frames,)``.

    A scalar gives the spec's default vector: 1 on the key frame, ``lambda_`` everywhere else.
    A length-``num_frames`` vector is taken as is.
    """
    if not isinstance(num_frames, int) or num_frames < 2:
        raise ValueError(f"num_frames must be an integer >= 2, got {num_frames!r}")
    if isinstance(lambda_, (int, float)):
        lambdas = torch.full((num_frames,), float(lambda_), dtype=torch.float64)
        lambdas[key_frame_index(num_frames)] = 1.0
    else:
        lambdas = torch.as_tensor(lambda_, dtype=torch.float64).flatten()
        if lambdas.numel() != num_frames:
            raise ValueError(
                f"lambda_ has {lambdas.numel()} values but num_frames is {num_frames}"
            )
    if not torch.isfinite(lambdas).all() or (lambdas < 0).any() or (lambdas > 1).any():
        raise ValueError(f"lambda_ values must lie in [0, 1], got {lambdas.tolist()}")
    return lambdas.float()


def combine_noise(
    base_noise: torch.Tensor, residual_noise: torch.Tensor, lambdas: torch.Tensor
) -> torch.Tensor:
    """eps^i = sqrt(lambda^i) b + sqrt(1 - lambda^i) r^i (spec §1).

    ``base_noise`` is one frame per clip ``(B, C, H, W)`` or already per frame ``(B, C, F, H, W)``
    (the sampler's epshat uses this with bhat and rhat in place of b and r).
    """
    if base_noise.ndim == 4:
        base_noise = base_noise.unsqueeze(2)
    scale = per_frame(lambdas, residual_noise)
    return scale.sqrt() * base_noise + (1 - scale).sqrt() * residual_noise


def decomposed_noise(
    shape: Sequence[int],
    lambdas: float | Sequence[float] | torch.Tensor = 0.5,
    generator: torch.Generator | None = None,
    *,
    base_noise: torch.Tensor | None = None,
    residual_noise: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    return_parts: bool = False,
) -> torch.Tensor | DecomposedNoise:
    """Draw decomposed noise of ``shape = (batch, channels, frames, height, width)``.

    Pass ``base_noise`` (``(batch, channels, height, width)``) or ``residual_noise``
    (``shape``) to fix that part and draw only the other one: that is how content and motion
    are controlled separately (spec §5). The base noise is drawn before the residual noise, so
    one seed gives one video whatever is fixed.

    Every part is drawn on ``generator``'s device (CPU without one) and then moved to
    ``device``, as diffusers' ``randn_tensor`` does: one seed then gives the same noise for a
    model on any device, and a CPU generator can serve a CUDA model.
    """
    if len(shape) != 5:
        raise ValueError(
            f"shape must be (batch, channels, frames, height, width), got {tuple(shape)}"
        )
    batch, channels, frames, height, width = (int(s) for s in shape)
    lambdas = make_lambdas(frames, lambdas)
    source = generator.device if generator is not None else torch.device("cpu")
    device = source if device is None else device
    base_shape = (batch, channels, height, width)
    if base_noise is None:
        base_noise = torch.randn(base_shape, generator=generator, device=source, dtype=dtype)
    elif tuple(base_noise.shape) != base_shape:
        raise ValueError(f"base_noise must have shape {base_shape}, got {tuple(base_noise.shape)}")
    if residual_noise is None:
        residual_noise = torch.randn(
            tuple(shape), generator=generator, device=source, dtype=dtype
        )
    elif tuple(residual_noise.shape) != tuple(shape):
        raise ValueError(
            f"residual_noise must have shape {tuple(shape)}, got {tuple(residual_noise.shape)}"
        )
    base_noise = base_noise.to(device=device, dtype=dtype)
    residual_noise = residual_noise.to(device=device, dtype=dtype)
    noise = combine_noise(base_noise, residual_noise, lambdas)
    if return_parts:
        return DecomposedNoise(noise, base_noise, residual_noise)
    return noise


class FreshNoise:
    """The fresh noise a stochastic sampler adds at every step (DDPM, DDIM with eta > 0), drawn
    as in spec §1 and faithful to the parts of z_T the caller fixed (spec §5).

    Fixing the initial base noise alone fixes the content only until the first stochastic step
    renews the noise. So a video whose ``base_noise`` was given draws every later base noise from
    a generator of its own, seeded by that base noise: videos (or runs) given the same base noise
    share the base at every step, whatever the other seeds. The same holds for ``residual_noise``
    and motion. Parts not given come from ``generator``.
    """

    def __init__(self, lambdas: torch.Tensor, generator: torch.Generator | None = None,
                 base_noise: torch.Tensor | None = None,
                 residual_noise: torch.Tensor | None = None):
        self.lambdas = lambdas
        self.generator = generator
        self.base_streams = None if base_noise is None else [seeded_by(b) for b in base_noise]
        self.residual_streams = (None if residual_noise is None
                                 else [seeded_by(r) for r in residual_noise])

    def __call__(self, shape: Sequence[int], device=None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A decomposed draw of ``shape`` ``(batch, channels, frames, height, width)``."""
        _, channels, frames, height, width = shape
        base = _draw(self.base_streams, (channels, height, width))
        residual = _draw(self.residual_streams, (channels, frames, height, width))
        return decomposed_noise(shape, self.lambdas, self.generator, base_noise=base,
                                residual_noise=residual, device=device, dtype=dtype)


def seeded_draw(shape: tuple[int, ...], seed: int, batch: int = 1) -> torch.Tensor:
    """One standard normal draw of ``shape`` from ``seed``, the same for each of ``batch`` videos
    ``(batch, *shape)``: the part of the noise that ``--base-seed`` / ``--residual-seed`` and the
    studio's content and motion locks fix (spec §5)."""
    draw = torch.randn((1, *shape), generator=torch.Generator().manual_seed(seed))
    return draw.expand(batch, *shape).clone()


def seeded_by(noise: torch.Tensor) -> torch.Generator:
    """A CPU generator whose seed is a hash of ``noise``'s float32 values: equal noises, equal
    streams, on any device."""
    data = noise.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    seed = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1
    return torch.Generator().manual_seed(seed)


def _draw(streams: list[torch.Generator] | None, shape: tuple) -> torch.Tensor | None:
    if streams is None:
        return None
    return torch.stack([torch.randn(shape, generator=g) for g in streams])


def per_frame(lambdas: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """lambdas ``(frames,)`` reshaped to broadcast against ``(batch, channels, frames, H, W)``."""
    return lambdas.to(device=like.device, dtype=like.dtype).view(1, 1, -1, 1, 1)
