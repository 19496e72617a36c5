"""Content and motion control that falls out of the decomposition (spec §5, paper Fig. 1).

The base noise b is shared by every frame and carries the content; the residual noises r^i carry
what differs between frames, the motion. ``content_motion_grid`` samples an R x C grid of videos
in one batch: the videos of row r share one base noise, the videos of column c share one
residual noise. Along a row the content should stay and the motion change; down a column, the
other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .choices import DEFAULT_NUM_FRAMES
from .class_names import class_indices
from .video_io import contact_sheet, to_uint8, write_gif


@dataclass
class ControlGrid:
    """An R x C grid of videos: row r was sampled from ``base_noise[r]``, column c from
    ``residual_noise[c]``."""

    videos: np.ndarray  # (rows, cols, frames, H, W, C) in [0, 1]
    base_noise: torch.Tensor  # (rows, C, h, w)
    residual_noise: torch.Tensor  # (cols, C, frames, h, w)

    def save(self, out_dir: str | Path, fps: int = 8, scale: int = 1) -> list[Path]:
        """Write ``control_grid.gif`` (the grid, playing) and ``control_grid.png`` (a contact
        sheet: one video per row, row-major: base 0 with residuals 0..C-1, then base 1, ...)."""
        out_dir = Path(out_dir)
        rows, cols = self.videos.shape[:2]
        gif = write_gif(tile(self.videos), out_dir / "control_grid.gif", fps, scale)
        sheet = contact_sheet(self.videos.reshape(rows * cols, *self.videos.shape[2:]),
                              out_dir / "control_grid.png", scale=scale)
        return [gif, sheet]


def content_motion_grid(
    pipe,
    rows: int = 3,
    cols: int = 3,
    *,
    prompt: str | None = None,
    class_labels: int | str | list[int | str] | None = None,
    num_frames: int = DEFAULT_NUM_FRAMES,
    height: int | None = None,
    width: int | None = None,
    seed: int = 0,
    **kwargs,
) -> ControlGrid:
    """Sample the R x C grid with ``pipe`` (a ``VideoFusionPipeline``), for one prompt and/or
    class label (an index or a class name). ``seed`` draws the R base noises, then the C
    residual noises, then seeds the sampler; other keyword arguments are those of the
    pipeline's ``plan`` (steps, guidance, lambda, eta, signal leak, dtype) and ``progress``."""
    if not isinstance(rows, int) or not isinstance(cols, int) or rows < 1 or cols < 1:
        raise ValueError(f"rows and cols must be integers >= 1, got {rows!r} and {cols!r}")
    for name in ("image", "base_noise", "residual_noise", "num_videos", "output_type"):
        if name in kwargs:
            raise ValueError(f"content_motion_grid sets {name} itself")
    labels = (None if class_labels is None
              else class_indices(class_labels, pipe.class_names, "class_labels"))
    if not (prompt is None or isinstance(prompt, str)) or (labels is not None
                                                             and len(labels) != 1):
        raise ValueError("content_motion_grid takes one prompt and/or one class label")
    if pipe.model.is_baseline:
        raise ValueError("the VDM baseline has no base noise to share: content and motion "
                         "control needs a VideoFusion model")
    progress = kwargs.pop("progress", True)
    plan = pipe.plan(prompt, labels, num_frames=num_frames,
                     height=height, width=width, num_videos=rows * cols, **kwargs)
    _, channels, frames, h, w = plan.latent_shape
    generator = torch.Generator().manual_seed(seed)
    base_noise = torch.randn((rows, channels, h, w), generator=generator)
    residual_noise = torch.randn((cols, channels, frames, h, w), generator=generator)
    videos = pipe.generate(
        plan, generator, base_noise=base_noise.repeat_interleave(cols, dim=0),
        residual_noise=residual_noise.repeat(rows, 1, 1, 1, 1), progress=progress,
    )  # (rows * cols, frames, H, W, C), row-major
    return ControlGrid(videos.reshape(rows, cols, *videos.shape[1:]), base_noise, residual_noise)


def tile(grid: np.ndarray, gap: int = 1) -> np.ndarray:
    """``(rows, cols, frames, H, W, C)`` -> one video ``(frames, rows*H + gaps, cols*W + gaps,
    C)`` uint8 that plays every cell at once, on white."""
    grid = to_uint8(grid)
    rows, cols, frames, h, w, c = grid.shape
    out = np.full((frames, rows * (h + gap) - gap, cols * (w + gap) - gap, c), 255, np.uint8)
    for r in range(rows):
        for col in range(cols):
            out[:, r * (h + gap): r * (h + gap) + h, col * (w + gap): col * (w + gap) + w] = \
                grid[r, col]
    return out
