"""The sampling spread of a set-level metric: how much it would move on another draw of clips.

A comparison of two sampler settings on 128 videos each cannot tell apart differences smaller
than this spread. FVD has its own (``fvd.frechet_distance_bootstrap_std``, which resamples
features); every other set-level number (a mean of per-clip values, a ratio of sums, a count
of distinct colours) is a function of which clips are in the set, so one helper resamples the
clips' indices and recomputes it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

NUM_RESAMPLES = 100


def bootstrap_std(statistic: Callable[[np.ndarray], float], num_items: int,
                  num_resamples: int = NUM_RESAMPLES, seed: int = 0) -> float | None:
    """Standard deviation of ``statistic(indices)`` over index sets drawn with replacement.

    ``statistic`` gets ``num_items`` indices into the set (repeats allowed) and returns the
    metric of that resampled set; resamples where it is undefined (``None`` or NaN) are left
    out. ``None`` when fewer than two resamples are defined.
    """
    if num_items < 1:
        raise ValueError(f"num_items: need at least 1, got {num_items}")
    if num_resamples < 2:
        raise ValueError(f"num_resamples: need at least 2, got {num_resamples}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_resamples):
        value = statistic(rng.integers(0, num_items, num_items))
        if value is not None and np.isfinite(value):
            values.append(float(value))
    return float(np.std(values, ddof=1)) if len(values) >= 2 else None


def mean_std(per_item: np.ndarray, num_resamples: int = NUM_RESAMPLES,
             seed: int = 0) -> float | None:
    """:func:`bootstrap_std` of the NaN-ignoring mean of per-item values (NaN: undefined)."""
    per_item = np.asarray(per_item, dtype=np.float64)

    def statistic(indices: np.ndarray) -> float:
        chosen = per_item[indices]
        return float(np.nanmean(chosen)) if np.isfinite(chosen).any() else float("nan")

    return bootstrap_std(statistic, len(per_item), num_resamples, seed)
