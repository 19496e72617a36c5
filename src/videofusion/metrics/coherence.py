"""Temporal coherence: whether a clip's frames belong together, compared with real clips.

Distribution distances (FVD) and per-frame classifiers (content consistency) can stay good while
a clip visibly falls apart in time: a key frame of another colour than its neighbours, a colour
that drifts, a digit that jumps. These metrics look at exactly that.

For any video (pixels in [0, 1], frames ``(batch, frames, H, W, channels)``):

* **key-frame seam**: how much the key frame ``k = frames // 2`` differs from the mean of its two
  neighbours, divided by the same quantity averaged over the other inner frames
  (:func:`seam_ratio`). In VideoFusion the key frame is drawn by the base generator alone and
  every other frame through the residual generator, so a disagreement between the two networks
  shows here first. Real clips: about 1 (no frame is special). The same ratio at the frames
  where consecutive clips of a long video meet is the long-video seam.
* **flicker**: the mean frame-to-frame change of the low-frequency appearance (frames averaged
  down to ``FLICKER_SIZE`` x ``FLICKER_SIZE``), read against the real clips' value: slow,
  smooth motion changes it little, colour or brightness jumps change it a lot.
* **foreground pieces** and **foreground area change**: the shape of what stands out from the
  background (pixels with a channel at least ``FOREGROUND_DISTANCE`` from that channel's median
  over the frame), as the number of its connected pieces per frame and the mean relative change
  of its area from frame to frame (:func:`foreground_shapes`). A body that smears or falls
  apart in the second half of a clip (a walker's legs drifting off as blobs) keeps a smooth
  low-frequency appearance, so flicker misses it; it shows as more pieces and an area that
  swells and shrinks. Read against the real clips' values (a render's thin pole may show as two
  pieces).
* **background grain** and **neighbour grain**: the fine speckle left in the background (pixels
  at least ``GRAIN_MARGIN`` pixels from the foreground), as the mean |frame - its 3 x 3 box
  blur| (:func:`background_grain`), over the whole clip and at the key frame's two neighbours
  divided by the other non-key frames. A sampler that changes the frames next to a given key
  frame late, when no step is left to denoise the change, leaves grain there that the seam and
  colour metrics do not see. Real clips: a flat background, grain 0.

For moving digits (one digit on a dark background):

* **colour constancy**: the digit's colour per frame (mean RGB of its brightest pixels, the
  background median removed), as the mean absolute deviation from the clip's median colour;
  real clips: 0.
* **colour spread**: how many colours one frame's digit shows at once: the mean absolute
  deviation of its bright pixels' hue (each pixel's colour scaled to a brightest channel of 1)
  from the frame's median hue. A clip can hold its mean colour while its digit is drawn half in
  one colour and half in another; real clips: 0 (each digit is one colour).
* **palette coverage**: the data's colour nearest to each clip's median digit colour; how many
  of the seven colours a set of clips covers.
* **motion smoothness**: the digit's tracked position (:func:`~videofusion.metrics.digits.
  track_positions`), its mean speed and mean jerk (norm of the second difference), both in frame
  sides per frame. A static clip has no jerk, so jerk is read together with the speed.
* **worst jerk**: each clip's largest jerk (its worst frame), averaged over the clips. A mean
  jerk hides one jump in an otherwise smooth clip; a real clip's worst frame is a bounce off a
  wall (a reversed velocity, about twice its speed), a generated clip's may be a digit that
  jumps across the frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from videofusion.data.moving_digits import PALETTE
from videofusion.metrics import bootstrap
from videofusion.metrics.digits import track_positions, unit_frames

FLICKER_SIZE = 4
# A pixel belongs to the digit's bright core if its foreground is at least this share of the
# frame's brightest; frames whose brightest foreground is below DIGIT_MIN show no digit.
CORE_SHARE = 0.5
DIGIT_MIN = 0.2
# Foreground: a channel at least this far from its median over the frame (RGB in [0, 1]).
# Connected pieces of fewer than MIN_PIECE pixels are speckle, not shape.
FOREGROUND_DISTANCE = 0.25
MIN_PIECE = 3
# Background grain is read this many pixels away from the foreground, whose edges are sharp.
GRAIN_MARGIN = 2
# Below this grain a background is flat (real moving digits: about 5e-6, the digits' soft edges).
FLAT_GRAIN = 1e-4


def _frames(videos) -> torch.Tensor:
    """``(batch, frames, channels, H, W)`` float64 in [0, 1]."""
    return unit_frames(videos).double()


def frame_deviations(videos) -> np.ndarray:
    """``(batch, frames - 2)``: mean |x_i - (x_{i-1} + x_{i+1}) / 2| of each inner frame i."""
    x = _frames(videos)
    if x.shape[1] < 3:
        raise ValueError(f"videos: coherence metrics need at least 3 frames, got {x.shape[1]}")
    middle = (x[:, :-2] + x[:, 2:]) / 2
    return (x[:, 1:-1] - middle).abs().mean(dim=(2, 3, 4)).numpy()


def _seam_mask(num_frames: int, frames: Sequence[int]) -> np.ndarray:
    """Which columns of :func:`frame_deviations` (inner frames 1..F-2) are the seam's."""
    chosen = sorted({int(f) for f in frames})
    if not chosen or chosen[0] < 1 or chosen[-1] > num_frames - 2:
        raise ValueError(f"frames: inner frame indices 1..{num_frames - 2} expected, got {frames}")
    mask = np.zeros(num_frames - 2, dtype=bool)
    mask[[f - 1 for f in chosen]] = True
    if mask.all():
        raise ValueError("frames: at least one inner frame must be left to compare with")
    return mask


def _ratio(deviations: np.ndarray, mask: np.ndarray) -> float:
    return float(deviations[:, mask].mean() / max(deviations[:, ~mask].mean(), 1e-12))


def seam_ratio(videos, frames: Sequence[int]) -> float:
    """Mean deviation at ``frames`` (inner frame indices) over that of the other inner frames.

    Averaged over the whole set before dividing, so near-static clips do not blow it up.
    """
    deviations = frame_deviations(videos)  # (B, F - 2), column j is frame j + 1
    return _ratio(deviations, _seam_mask(deviations.shape[1] + 2, frames))


def key_frame_seam(videos) -> float:
    """:func:`seam_ratio` at the key frame ``frames // 2``."""
    num_frames = _num_frames(videos)
    return seam_ratio(videos, [num_frames // 2])


def long_video_seam(videos, clip_frames: int, overlap: int) -> float:
    """:func:`seam_ratio` at the joins of a long video made of consecutive clips
    (:mod:`videofusion.long_video`): the last frame of a clip and the first new frame of the
    next one."""
    num_frames = _num_frames(videos)
    step = clip_frames - overlap
    joins = range(clip_frames, num_frames, step) if step > 0 else range(0)
    frames = [f for b in joins for f in (b - 1, b) if 1 <= f <= num_frames - 2]
    if not frames:
        raise ValueError(f"videos: {num_frames} frames hold no join of {clip_frames}-frame "
                         f"clips overlapping by {overlap}")
    return seam_ratio(videos, frames)


def _num_frames(videos) -> int:
    return int(videos.shape[1] if isinstance(videos, np.ndarray) else videos.shape[2])


def flicker_per_clip(videos) -> np.ndarray:
    """Per clip: mean |L_{i+1} - L_i| of the frames averaged down to ``FLICKER_SIZE`` squared."""
    x = _frames(videos)
    b, f, c, h, w = x.shape
    low = F.adaptive_avg_pool2d(x.flatten(0, 1), FLICKER_SIZE).view(b, f, c, -1)
    return (low[:, 1:] - low[:, :-1]).abs().mean(dim=(1, 2, 3)).numpy()


def flicker(videos) -> float:
    """The set's flicker: :func:`flicker_per_clip` averaged over the clips."""
    return float(flicker_per_clip(videos).mean())


def foreground_shapes(videos) -> tuple[np.ndarray, np.ndarray]:
    """``(batch, frames)`` each: the number of foreground pieces (8-connected, at least
    ``MIN_PIECE`` pixels) and the foreground area in pixels, counting those pieces only."""
    x = _frames(videos)
    background = x.flatten(-2).median(dim=-1).values[..., None, None]
    mask = ((x - background).abs().amax(dim=2) >= FOREGROUND_DISTANCE).numpy()  # (B, F, H, W)
    pieces = np.zeros(mask.shape[:2], dtype=np.int64)
    areas = np.zeros(mask.shape[:2], dtype=np.int64)
    for index in np.ndindex(*mask.shape[:2]):
        labels, _ = ndimage.label(mask[index], structure=np.ones((3, 3), dtype=bool))
        sizes = np.bincount(labels.ravel())[1:]
        kept = sizes[sizes >= MIN_PIECE]
        pieces[index], areas[index] = len(kept), kept.sum()
    return pieces, areas


def background_grain(videos) -> np.ndarray:
    """``(batch, frames)``: mean |x - 3 x 3 box blur of x| over the background pixels (at least
    ``GRAIN_MARGIN`` pixels from the foreground) and channels; NaN for a frame without any."""
    x = _frames(videos)
    b, f, c, h, w = x.shape
    background = x.flatten(-2).median(dim=-1).values[..., None, None]
    foreground = (x - background).abs().amax(dim=2, keepdim=True) >= FOREGROUND_DISTANCE
    size = 2 * GRAIN_MARGIN + 1
    near = F.max_pool2d(foreground.flatten(0, 1).double(), size, 1, GRAIN_MARGIN) > 0
    frames = x.flatten(0, 1)  # (B * F, C, H, W)
    blur = F.avg_pool2d(F.pad(frames, (1, 1, 1, 1), mode="replicate"), 3, 1)
    detail = (frames - blur).abs().mean(dim=1, keepdim=True)  # (B * F, 1, H, W)
    far = (~near).double()
    count = far.sum(dim=(1, 2, 3))
    grain = (detail * far).sum(dim=(1, 2, 3)) / count.clamp(min=1)
    grain[count == 0] = float("nan")
    return grain.view(b, f).numpy()


def neighbour_grain(grain: np.ndarray) -> float | None:
    """Grain at the key frame's two neighbours over that at the other non-key frames, from
    :func:`background_grain`'s ``(batch, frames)``, averaged over the set before dividing;
    ``None`` where the other frames are flat (below ``FLAT_GRAIN``: real clips) or missing."""
    k = grain.shape[1] // 2
    other = np.delete(grain, [k - 1, k, k + 1], axis=1)
    if not np.isfinite(other).any() or np.nanmean(other) < FLAT_GRAIN:
        return None
    return float(np.nanmean(grain[:, [k - 1, k + 1]]) / np.nanmean(other))


def area_change(areas: np.ndarray) -> np.ndarray:
    """Per clip: mean |A_{i+1} - A_i| / ((A_{i+1} + A_i) / 2) over frame pairs with any
    foreground (NaN for a clip with none)."""
    a = areas.astype(np.float64)
    mean = (a[:, 1:] + a[:, :-1]) / 2
    change = np.where(mean > 0, np.abs(np.diff(a, axis=1)) / np.maximum(mean, 1e-12), np.nan)
    seen = ~np.isnan(change).all(axis=1)
    out = np.full(len(a), np.nan)
    out[seen] = np.nanmean(change[seen], axis=1)
    return out


def digit_core(videos) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each frame's foreground ``(B, F, 3, H, W)`` (the background, each channel's median,
    removed), its brightest channel ``(B, F, H, W)`` and the digit's bright core ``(B, F, H, W)``
    (empty where a frame shows no digit)."""
    x = _frames(videos)
    if x.shape[2] == 1:
        x = x.expand(-1, -1, 3, -1, -1)
    background = x.flatten(-2).median(dim=-1).values[..., None, None]
    fg = (x - background).clamp(min=0.0)
    intensity = fg.amax(dim=2)
    peak = intensity.flatten(-2).amax(dim=-1)[..., None, None]
    return fg, intensity, (intensity >= CORE_SHARE * peak) & (peak >= DIGIT_MIN)


def digit_colours(videos) -> np.ndarray:
    """``(batch, frames, 3)``: mean colour of each frame's brightest digit pixels, the
    background (each channel's median) removed; NaN where a frame shows no digit."""
    fg, _, core = digit_core(videos)
    weights = core.unsqueeze(2).double()
    colours = (fg * weights).sum(dim=(-2, -1)) / weights.sum(dim=(-2, -1)).clamp(min=1)
    colours[~core.flatten(-2).any(dim=-1)] = float("nan")
    return colours.numpy()


def colour_spread(videos) -> np.ndarray:
    """Per clip: over the frames that show a digit, the mean absolute deviation of its bright
    pixels' hue (colour over its brightest channel) from the frame's median hue (NaN for a clip
    without any)."""
    fg, intensity, core = digit_core(videos)
    hue = (fg / intensity.unsqueeze(2).clamp(min=1e-9)).numpy()
    core = core.numpy()
    out = np.full(len(hue), np.nan)
    for n in range(len(hue)):
        spreads = [np.abs(pixels - np.median(pixels, axis=0)).mean()
                   for pixels in (hue[n, f].reshape(3, -1).T[core[n, f].ravel()]
                                  for f in range(hue.shape[1])) if len(pixels)]
        if spreads:
            out[n] = float(np.mean(spreads))
    return out


def colour_deviation(videos) -> np.ndarray:
    """Per clip: mean |colour - clip median colour| over frames that show a digit and over the
    three channels (NaN for a clip without any)."""
    colours = digit_colours(videos)
    out = np.full(len(colours), np.nan)
    for n, clip in enumerate(colours):
        seen = clip[~np.isnan(clip).any(axis=1)]
        if len(seen):
            out[n] = np.abs(seen - np.median(seen, axis=0)).mean()
    return out


def palette_names(videos) -> list[str | None]:
    """Per clip: the data palette's colour nearest to its median digit colour, compared after
    scaling each colour to a brightest channel of 1 (a dim red is still red)."""
    names, table = list(PALETTE), np.array(list(PALETTE.values()))
    out: list[str | None] = []
    for clip in digit_colours(videos):
        seen = clip[~np.isnan(clip).any(axis=1)]
        if not len(seen):
            out.append(None)
            continue
        colour = np.median(seen, axis=0)
        colour = colour / max(colour.max(), 1e-9)
        out.append(names[int(np.linalg.norm(table - colour, axis=1).argmin())])
    return out


def motion_statistics(videos) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per clip: mean speed, mean jerk and worst (largest) jerk of the tracked digit, in frame
    sides per frame."""
    positions, (h, w) = track_positions(videos)  # (B, F, 2) pixels
    side = float(max(h, w))
    speed = np.linalg.norm(np.diff(positions, axis=1), axis=-1).mean(axis=1) / side
    jerks = np.linalg.norm(np.diff(positions, n=2, axis=1), axis=-1) / side  # (B, F - 2)
    return speed, jerks.mean(axis=1), jerks.max(axis=1)


def coherence_metrics(videos, digits: bool = False) -> dict:
    """The set's coherence numbers (moving-digits ones with ``digits``), JSON-ready.

    The metrics a sampler comparison judges also get their sampling spread over the clips,
    ``NAME_bootstrap_std`` (:mod:`videofusion.metrics.bootstrap`).
    """
    pieces, areas = foreground_shapes(videos)
    changes = area_change(areas)
    grain = background_grain(videos)
    deviations = frame_deviations(videos)  # (B, F - 2)
    num_frames = deviations.shape[1] + 2
    key = _seam_mask(num_frames, [num_frames // 2])
    flickers = flicker_per_clip(videos)
    result = {"key_frame_seam": _ratio(deviations, key), "flicker": float(flickers.mean()),
              "background_grain": float(np.nanmean(grain)) if np.isfinite(grain).any()
              else None,
              "neighbour_grain": neighbour_grain(grain),
              "foreground_pieces": float(pieces.mean()),
              "foreground_area_change": float(np.nanmean(changes)) if np.isfinite(changes).any()
              else None,
              "key_frame_seam_bootstrap_std": bootstrap.bootstrap_std(
                  lambda i: _ratio(deviations[i], key), len(deviations)),
              "flicker_bootstrap_std": bootstrap.mean_std(flickers)}
    if digits:
        deviation = colour_deviation(videos)
        spread = colour_spread(videos)
        speed, jerk, worst_jerk = motion_statistics(videos)
        clip_names = palette_names(videos)
        names = [n for n in clip_names if n is not None]
        result.update({
            "colour_deviation": float(np.nanmean(deviation)) if np.isfinite(deviation).any()
            else None,
            "colour_spread": float(np.nanmean(spread)) if np.isfinite(spread).any() else None,
            "palette_coverage": len(set(names)),
            # which colours, not only how many: a set can cover six while drawing mostly one
            "palette_counts": {name: names.count(name) for name in PALETTE if name in names},
            "mean_speed": float(speed.mean()),
            "jerk": float(jerk.mean()),
            "worst_jerk": float(worst_jerk.mean()),
            "colour_deviation_bootstrap_std": bootstrap.mean_std(deviation),
            "colour_spread_bootstrap_std": bootstrap.mean_std(spread),
            "palette_coverage_bootstrap_std": bootstrap.bootstrap_std(
                lambda i: len({clip_names[j] for j in i} - {None}), len(clip_names)),
            "jerk_bootstrap_std": bootstrap.mean_std(jerk),
            "worst_jerk_bootstrap_std": bootstrap.mean_std(worst_jerk),
        })
    return result
