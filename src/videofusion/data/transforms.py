"""Frame geometry and value-range helpers shared by the datasets.

Frames enter as numpy ``(frames, H, W, channels)`` (uint8 in [0, 255] or float in [0, 1]) and leave
as the library's clip layout: a float32 tensor ``(channels, frames, H, W)`` in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

MIN_RESOLUTION = 16


def parse_resolution(resolution: int | Sequence[int]) -> tuple[int, int]:
    """Return ``(height, width)`` from an int (square) or a pair; reject sizes below 16 px."""
    if isinstance(resolution, int | np.integer):
        size = (int(resolution), int(resolution))
    else:
        size = tuple(int(v) for v in resolution)
        if len(size) != 2:
            raise ValueError(f"resolution must be an int or (height, width), got {resolution!r}")
    if min(size) < MIN_RESOLUTION:
        raise ValueError(f"resolution must be >= {MIN_RESOLUTION} px, got {resolution!r}")
    return size


def cover_size(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """Size ``(h, w)`` that scales the frame so it just covers ``target`` (before a centre crop).

    For a square target this is "resize the shorter side to the target"; for a non-square target
    it is the smallest aspect-preserving size from which a ``target`` crop fits.
    """
    th, tw = target
    scale = max(th / height, tw / width)
    return max(th, round(height * scale)), max(tw, round(width * scale))


def center_crop(frames: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """Centre-crop ``(frames, H, W, C)`` to ``target`` = (height, width)."""
    th, tw = target
    h, w = frames.shape[1:3]
    top, left = (h - th) // 2, (w - tw) // 2
    return frames[:, top : top + th, left : left + tw]


def to_clip_tensor(frames: np.ndarray) -> torch.Tensor:
    """``(frames, H, W, C)`` uint8 / float [0, 1] -> float32 ``(C, frames, H, W)`` [-1, 1]."""
    scale, shift = (2.0 / 255.0, 1.0) if frames.dtype == np.uint8 else (2.0, 1.0)
    # numpy, not torch: per-clip tensors are tiny and torch's intra-op threading only adds
    # overhead inside DataLoader workers.
    clip = frames.transpose(3, 0, 1, 2).astype(np.float32) * np.float32(scale) - np.float32(shift)
    return torch.from_numpy(np.ascontiguousarray(clip))
