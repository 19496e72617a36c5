"""Datasets yielding ``{"video", "class_label", "caption"}`` dicts; see ``docs/data.md``.

``video`` is a float32 ``(channels, frames, H, W)`` clip in [-1, 1], so the default collate gives
``(batch, channels, frames, H, W)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset

from videofusion.data.moving_digits import MovingDigits
from videofusion.data.video_folder import VideoFolder

__all__ = ["MovingDigits", "VideoFolder", "build_dataset", "check_data_source", "DATASET_NAMES"]

DATASET_NAMES = ("moving-digits",)


def check_data_source(name_or_path: str | Path) -> None:
    """Refuse a ``--data`` value that is neither a built-in dataset nor an existing path, before
    a run creates anything."""
    if str(name_or_path) != "moving-digits" and not Path(name_or_path).exists():
        raise FileNotFoundError(
            f"data: {name_or_path!r} is neither a built-in dataset {DATASET_NAMES} nor a folder"
        )


def build_dataset(
    name_or_path: str | Path,
    split: str = "train",
    num_frames: int = 16,
    resolution: int | Sequence[int] = 32,
    **kwargs,
) -> Dataset:
    """The dataset behind a ``--data`` value: a built-in name or a folder of videos.

    ``"moving-digits"`` builds :class:`MovingDigits`; any other value is a folder path for
    :class:`VideoFolder`. ``split`` is "train" or "test"; ``resolution`` is an int (square) or
    ``(height, width)``; ``kwargs`` go to the dataset class (e.g. ``channels``, ``num_digits``,
    ``length``, ``seed`` for moving digits; ``frame_stride``, ``start``, ``layout``, ``channels``
    for folders).
    """
    check_data_source(name_or_path)
    if str(name_or_path) == "moving-digits":
        return MovingDigits(split=split, num_frames=num_frames, resolution=resolution, **kwargs)
    return VideoFolder(
        name_or_path, split=split, num_frames=num_frames, resolution=resolution, **kwargs
    )
