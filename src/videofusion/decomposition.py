"""What a generated video owes to its key frame and what to its residuals (spec §1, data side).

The method writes every frame as the key frame plus a residual,
x^i = sqrt(lambda^i) x^k + sqrt(1 - lambda^i) dx^i. The decomposition of a finished video takes
that literally: the **base part** of frame i is sqrt(lambda^i) x^k (what the base generator drew,
scaled as the frame's noise was), the **residual part** is the rest, x^i - sqrt(lambda^i) x^k.
``base_share`` is the base part's energy over the sum of both energies, in pixel space [-1, 1];
the key frame is all base (share 1). It measures the split the method makes, not a projection:
a frame identical to the key frame at lambda = 0.5 scores 0.85, not 1, since its residual part
is the (1 - sqrt(lambda)) x^k that the formula leaves over. So ``difference`` (mean absolute
pixel change from the key frame, in [0, 1]) and its maps sit beside it: where and how much the
residual generator moved the picture. docs/studio.md shows both in the studio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .noise import key_frame_index


@dataclass
class Decomposition:
    """One video's split into key frame and residuals; arrays per frame, frames first."""

    key_index: int
    key_frame: np.ndarray  # (H, W, C) in [0, 1]: the frame the base generator drew
    lambdas: np.ndarray  # (frames,)
    base_share: np.ndarray  # (frames,) in [0, 1]
    difference: np.ndarray  # (frames,) mean |x^i - x^k| in [0, 1] pixels
    difference_maps: np.ndarray  # (frames, H, W, C) |x^i - x^k| in [0, 1]

    @property
    def residual_share(self) -> np.ndarray:
        return 1.0 - self.base_share

    def rows(self) -> list[list]:
        """A table, one row per frame: index, lambda, base share, residual share, difference."""
        return [[i, round(float(lam), 3), round(float(b), 3), round(1.0 - float(b), 3),
                 round(float(d), 4)]
                for i, (lam, b, d) in enumerate(zip(self.lambdas, self.base_share,
                                                    self.difference, strict=True))]


def decompose(video: np.ndarray, lambdas) -> Decomposition:
    """``video`` ``(frames, H, W, C)`` in [0, 1] (a pipeline's ``"np"`` output, one video) and
    the lambdas it was sampled with -> its ``Decomposition``."""
    video = np.asarray(video, dtype=np.float64)
    lambdas = np.asarray(lambdas, dtype=np.float64).reshape(-1)
    if video.ndim != 4 or len(video) != len(lambdas):
        raise ValueError(f"expected a video (frames, H, W, C) with one lambda per frame, got "
                         f"{video.shape} and {len(lambdas)} lambdas")
    k = key_frame_index(len(video))
    x = video * 2 - 1  # the method's pixel space
    base = np.sqrt(lambdas)[:, None, None, None] * x[k]
    residual = x - base
    base_energy = (base ** 2).sum(axis=(1, 2, 3))
    total = base_energy + (residual ** 2).sum(axis=(1, 2, 3))
    share = np.divide(base_energy, total, out=np.ones_like(total), where=total > 0)
    maps = np.abs(video - video[k])
    return Decomposition(k, video[k], lambdas, share, maps.mean(axis=(1, 2, 3)), maps)
