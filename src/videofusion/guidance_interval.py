"""Guidance in a limited interval of noise levels (beyond the paper, ``docs/method.md`` §7).

Classifier-free guidance costs an unconditional pass of both networks per step. Kynkäänniemi
et al. (NeurIPS 2024) apply it only at the middle noise levels of image models: at the highest
it narrows what is generated, at the lowest it changes little. In a decomposed video model the
highest levels are also where each frame's digit is placed, and there guidance made digits jump
between frames under few-step sampling (``docs/results.md``, "Few-step sampling"). A step is
guided when its noise-to-signal ratio sigma_t = sqrt((1 - abar_t) / abar_t) lies in
``(low, high)``, both ends included; the other steps run each network once, on the condition
alone (a guidance scale of 1).

Torch-free, so the evaluation protocol and the command line check an interval without loading
the library.
"""

from __future__ import annotations

import math


def check_guidance_interval(interval) -> tuple[float, float] | None:
    """Refuse a ``guidance_interval`` that is not two noise levels 0 <= low <= high; return it as
    two floats (``None`` stays ``None``: every step guided)."""
    if interval is None:
        return None
    if (isinstance(interval, str) or not hasattr(interval, "__len__") or len(interval) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in interval)):
        raise ValueError(f"guidance_interval must be two noise levels (low, high), got "
                         f"{interval!r}")
    low, high = interval
    if not 0 <= low <= high:  # also False for a NaN at either end
        raise ValueError(f"guidance_interval must have 0 <= low <= high, got {interval!r}")
    return float(low), float(high)


def noise_level(alpha_bar) -> float:
    """sigma_t = sqrt((1 - abar_t) / abar_t) of a step at ``alpha_bar`` (a number or a
    one-element tensor); infinite at abar_t = 0."""
    a = float(alpha_bar)
    return math.inf if a <= 0 else math.sqrt(max(1.0 - a, 0.0) / a)


def guided_at(sigma: float, interval: tuple[float, float] | None) -> bool:
    """Whether a step at noise level ``sigma`` is guided (``None``: every step is)."""
    return interval is None or interval[0] <= sigma <= interval[1]
