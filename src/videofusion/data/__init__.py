"""Datasets yielding ``{"video", "class_label", "caption"}`` dicts; see ``docs/data.md``."""

from __future__ import annotations

from torch.utils.data import Dataset

from videofusion.data.moving_digits import MovingDigits

__all__ = ["MovingDigits", "build_dataset"]


def build_dataset(
    name_or_path: str, split: str = "train", num_frames: int = 16, resolution: int = 32, **kwargs
) -> Dataset:
    """``"moving-digits"`` -> :class:`MovingDigits`; other extra keyword arguments go to it."""
    if name_or_path == "moving-digits":
        return MovingDigits(split=split, num_frames=num_frames, resolution=resolution, **kwargs)
    raise ValueError(f"unknown dataset {name_or_path!r}")
