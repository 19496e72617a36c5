"""Cheap, offline metrics for moving-digits videos: content consistency, prompt adherence,
motion smoothness and FVD-digits.

Kinetics-400 I3D knows nothing about digits and costs ~0.75 s per video on a CPU, so this module
ships two small networks trained on real MovingDigits train-split clips
(``scripts/train_digit_metrics.py``; weights in ``metrics/weights/``, see docs/metrics.md):

* :class:`DigitClassifier`: one frame -> digit 0-9, or :data:`NO_DIGIT` (blank or noise frame).
  It sees the frame's :func:`foreground`, so every palette colour and background tint look the
  same to it.
* :class:`DigitVideoEncoder`: the classifier's frozen frame trunk plus 3D convolutions over time,
  trained to predict a clip's digit, colour, motion (axis and speed) and whether its frames are
  temporally coherent; its pooled penultimate features give the Fréchet distance "FVD-digits".

Per-video metrics (one digit per clip):

* content consistency: share of frames whose predicted digit is the clip's majority digit;
* prompt adherence: whether the majority digit is the conditioned digit;
* motion error: mean distance between the digit's tracked position (intensity-weighted centroid)
  and the best-fitting constant-velocity-with-bounce trajectory, as a fraction of the frame side.

Videos come in the layouts of :mod:`videofusion.metrics.fvd`: torch ``(batch, channels, frames,
H, W)`` in [-1, 1] or numpy ``(batch, frames, H, W, channels)`` uint8 / float in [0, 1]; one or
three channels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from scipy.optimize import least_squares
from torch import nn

from videofusion.data.moving_digits import PALETTE
from videofusion.metrics.fvd import feature_statistics, frechet_distance

WEIGHTS_DIR = Path(__file__).parent / "weights"
CLASSIFIER_WEIGHTS = WEIGHTS_DIR / "digit_classifier.safetensors"
ENCODER_WEIGHTS = WEIGHTS_DIR / "digit_video_encoder.safetensors"
INPUT_SIZE = 32
NUM_DIGITS = 10
NO_DIGIT = 10  # the classifier's "no digit visible" class
COLORS = tuple(PALETTE)
# Motion classes: axis (horizontal, vertical, diagonal) x speed third of MovingDigits' range;
# both survive bounces, unlike the direction.
NUM_MOTIONS = 9
FEATURE_DIM = 64
MAP_CHANNELS = 64 + 3 + 16  # per 8x8 cell: digit evidence, mean colour, 2x2-pixel intensities
# Pixels dimmer than this (foreground, [0, 1]) do not pull the tracked centroid: they are
# background noise of generated frames, not the digit.
TRACK_THRESHOLD = 0.2
# Fitted trajectories may move at most this many frame sides per frame (the data: <= 0.1), so a
# fast zig-zag cannot "explain" jittery positions.
MAX_SPEED = 0.25
_GRID = 48  # speed and phase grid points of the trajectory fit


def unit_frames(videos: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Any accepted video batch -> float32 ``(batch, frames, channels, H, W)`` in [0, 1]."""
    if isinstance(videos, np.ndarray):
        if videos.ndim != 5 or videos.shape[-1] not in (1, 3):
            raise ValueError(
                f"videos: numpy input must be (batch, frames, H, W, 1 or 3), got {videos.shape}"
            )
        if videos.dtype == np.uint8:
            x = torch.from_numpy(videos).float() / 255.0
        elif np.issubdtype(videos.dtype, np.floating):
            x = torch.from_numpy(np.asarray(videos, dtype=np.float32))
        else:
            raise ValueError(f"videos: numpy input must be uint8 or float, got {videos.dtype}")
        return x.permute(0, 1, 4, 2, 3).clamp(0.0, 1.0)
    if isinstance(videos, torch.Tensor):
        if videos.ndim != 5 or videos.shape[1] not in (1, 3) or not videos.is_floating_point():
            raise ValueError(
                "videos: tensor input must be float (batch, 1 or 3, frames, H, W) in [-1, 1], "
                f"got {videos.dtype} {tuple(videos.shape)}"
            )
        return ((videos.float().cpu().transpose(1, 2) + 1.0) / 2.0).clamp(0.0, 1.0)
    raise ValueError(f"videos: expected a torch.Tensor or numpy array, got {type(videos)}")


def _resize(frames: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, C, 32, 32)``; antialiased when shrinking."""
    if frames.shape[-2:] == (INPUT_SIZE, INPUT_SIZE):
        return frames
    shrink = min(frames.shape[-2:]) > INPUT_SIZE
    return F.interpolate(
        frames, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
        antialias=shrink,
    )


def foreground(videos: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Videos -> ``(batch, frames, H, W)`` in [0, 1]: each channel minus its median over the
    frame (the background: digits cover far less than half of it), then the channel maximum.

    Real clips have black backgrounds, for which this is the plain channel maximum; generated
    frames often sit on a tinted background, and a digit on a uniform tint is still the digit
    (the classifier, trained on black, reads a real clip lifted by 0.15 in one channel as "no
    digit" in 86% of frames; docs/metrics.md). A channel maximum makes every palette colour
    (and grey) give the same image.
    """
    x = unit_frames(videos)  # (B, F, C, H, W)
    background = x.flatten(-2).median(dim=-1).values[..., None, None]  # (B, F, C, 1, 1)
    return (x - background).clamp(min=0.0).amax(dim=2)


def classifier_input(videos: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Videos -> frames ``(batch * frames, 1, 32, 32)`` in [0, 1]: :func:`foreground`."""
    return _resize(foreground(videos).flatten(0, 1).unsqueeze(1))


def encoder_input(videos: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Videos -> clips ``(batch, 3, frames, 32, 32)`` in [-1, 1]; grey becomes white."""
    x = unit_frames(videos)
    b, f, c = x.shape[:3]
    x = _resize(x.flatten(0, 1)).view(b, f, c, INPUT_SIZE, INPUT_SIZE).expand(-1, -1, 3, -1, -1)
    return x.transpose(1, 2) * 2.0 - 1.0


def _conv_block(conv: nn.Module, channels: int, norm: type[nn.Module]) -> list[nn.Module]:
    return [conv, norm(channels), nn.ReLU(inplace=True)]


class DigitClassifier(nn.Module):
    """Small CNN: ``(N, 1, 32, 32)`` frames in [0, 1] -> ``(N, 11)`` logits (10 = no digit).

    Global average pooling makes it indifferent to where the digit is in the frame.
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 64)):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 1
        for i, width in enumerate(widths):
            conv = nn.Conv2d(in_channels, width, 3, padding=1)
            layers += _conv_block(conv, width, nn.BatchNorm2d)
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            in_channels = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(in_channels, NUM_DIGITS + 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(frames))


class DigitVideoEncoder(nn.Module):
    """``(B, 3, F, 32, 32)`` clips in [-1, 1] -> 64-d features and four heads.

    A (2+1)D design that is cheap to train on a CPU: every frame goes through the convolutional
    trunk of a :class:`DigitClassifier` (copied from the trained classifier and frozen), which
    gives a ``(64, 4, 4)`` map of digit evidence; the frame's mean colour per 8x8 cell is
    appended; a temporal and a 3D convolution over (time, 4, 4) see content, colour and motion
    together.
    Heads (training targets): digit (10), colour (7, palette order), motion (9: axis x speed)
    and coherence (2: real clip / shuffled, swapped or spliced frames), so that the features also
    notice broken temporal structure.
    """

    def __init__(self):
        super().__init__()
        self.frame_trunk = DigitClassifier().features[:-2]  # without global pooling
        width = FEATURE_DIM // 2
        self.temporal = nn.Sequential(
            nn.BatchNorm3d(MAP_CHANNELS),  # colour and position are ~20x weaker than evidence
            *_conv_block(nn.Conv3d(MAP_CHANNELS, width, (3, 1, 1), padding=(1, 0, 0)),
                         width, nn.BatchNorm3d),
            *_conv_block(nn.Conv3d(width, FEATURE_DIM, 3, stride=(2, 1, 1), padding=1),
                         FEATURE_DIM, nn.BatchNorm3d),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
        )
        self.digit = nn.Linear(FEATURE_DIM, NUM_DIGITS)
        self.color = nn.Linear(FEATURE_DIM, len(COLORS))
        self.motion = nn.Linear(FEATURE_DIM, NUM_MOTIONS)
        self.coherent = nn.Linear(FEATURE_DIM, 2)

    def frame_maps(self, clips: torch.Tensor) -> torch.Tensor:
        """Per-frame digit evidence and cell colours ``(B, F, 67, 4, 4)``."""
        b, _, f = clips.shape[:3]
        frames = (clips.transpose(1, 2).flatten(0, 1) + 1.0) / 2.0  # (B * F, 3, 32, 32)
        grey = frames.amax(dim=1, keepdim=True)
        evidence = self.frame_trunk(grey)
        colour = F.adaptive_avg_pool2d(frames, evidence.shape[-2:])
        # Where the digit is, in 2x2-pixel cells (of the 32x32 frame), stacked as channels.
        position = F.pixel_unshuffle(F.avg_pool2d(grey, 2), 4)
        maps = torch.cat([evidence, colour, position], dim=1)
        return maps.view(b, f, *maps.shape[1:])

    def temporal_features(self, maps: torch.Tensor) -> torch.Tensor:
        """Frame maps -> the pooled penultimate features ``(B, 64)``."""
        return self.temporal(maps.transpose(1, 2))

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """The features that FVD-digits compares."""
        return self.temporal_features(self.frame_maps(clips))

    def heads(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "digit": self.digit(features),
            "color": self.color(features),
            "motion": self.motion(features),
            "coherent": self.coherent(features),
        }

    def forward(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads(self.features(clips))


def _load(module: nn.Module, path: Path) -> nn.Module:
    if not path.is_file():
        raise FileNotFoundError(
            f"digit metric weights missing at {path}; reinstall videofusion or run "
            "scripts/train_digit_metrics.py"
        )
    module.load_state_dict(load_file(str(path)), strict=True)
    return module.eval().requires_grad_(False)


def load_digit_classifier(path: str | Path | None = None) -> DigitClassifier:
    """The shipped (or a retrained) classifier, in eval mode."""
    return _load(DigitClassifier(), Path(path) if path else CLASSIFIER_WEIGHTS)


def load_digit_video_encoder(path: str | Path | None = None) -> DigitVideoEncoder:
    """The shipped (or a retrained) video encoder, in eval mode."""
    return _load(DigitVideoEncoder(), Path(path) if path else ENCODER_WEIGHTS)


def weights_metadata(path: str | Path) -> dict[str, str]:
    """Training record stored with the weights (seed, command, test accuracies)."""
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def _batches(videos: torch.Tensor | np.ndarray, batch_size: int):
    for start in range(0, len(videos), batch_size):
        yield videos[start : start + batch_size]


def predict_digits(
    videos: torch.Tensor | np.ndarray,
    classifier: DigitClassifier | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Per-frame predictions ``(batch, frames)`` int: the digit, or :data:`NO_DIGIT`."""
    classifier = classifier or load_digit_classifier()
    device = next(classifier.parameters()).device
    out = []
    with torch.inference_mode():
        for batch in _batches(videos, batch_size):
            frames = classifier_input(batch).to(device)
            out.append(classifier(frames).argmax(1).view(len(batch), -1).cpu().numpy())
    return np.concatenate(out)


def majority_digits(predictions: np.ndarray) -> np.ndarray:
    """Most frequent digit (ties -> smallest) per video, ignoring no-digit frames; -1 if none."""
    counts = np.stack([(predictions == d).sum(axis=1) for d in range(NUM_DIGITS)], axis=1)
    return np.where(counts.max(axis=1) > 0, counts.argmax(axis=1), -1)


def content_consistency(predictions: np.ndarray) -> np.ndarray:
    """Per video: share of frames showing the majority digit (no-digit frames count against)."""
    majority = majority_digits(predictions)
    return (predictions == majority[:, None]).mean(axis=1) * (majority >= 0)


def prompt_adherence(predictions: np.ndarray, class_labels) -> float | None:
    """Share of labelled videos (label >= 0) whose majority digit is the label; None if none."""
    labels = np.asarray(class_labels, dtype=np.int64)
    known = labels >= 0
    if not known.any():
        return None
    return float((majority_digits(predictions)[known] == labels[known]).mean())


def track_positions(videos: torch.Tensor | np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Intensity-weighted centroid ``(batch, frames, 2)`` as (x, y) pixels, and ``(H, W)``.

    Weights are the :func:`foreground` minus :data:`TRACK_THRESHOLD`; a frame without any
    bright pixel tracks to the frame centre (a small uniform weight), so positions are always
    finite.
    """
    grey = foreground(videos).double()  # (B, F, H, W)
    h, w = grey.shape[-2:]
    weights = (grey - TRACK_THRESHOLD).clamp(min=0.0) + 1e-9
    total = weights.sum(dim=(-2, -1))
    ys = torch.arange(h, dtype=torch.float64)
    xs = torch.arange(w, dtype=torch.float64)
    cx = (weights.sum(dim=-2) * xs).sum(dim=-1) / total
    cy = (weights.sum(dim=-1) * ys).sum(dim=-1) / total
    return torch.stack([cx, cy], dim=-1).numpy(), (int(h), int(w))


def _triangle(params: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Constant speed ``v`` reflected between ``lo`` and ``lo + width`` (MovingDigits' bounce)."""
    phase, speed, lo, width = params
    return lo + width - np.abs(width - np.mod(phase + speed * t, 2.0 * width))


def fit_bounce(positions: np.ndarray, side: float) -> np.ndarray:
    """Best least-squares constant-velocity-with-bounce fit of 1-d ``positions`` (per frame).

    Free parameters: phase, speed (<= ``MAX_SPEED * side`` per frame) and both walls. The
    objective has many local minima, so speed and phase are first searched on a grid with the
    walls at the observed extremes, then all four are refined from the best grid point.
    """
    y = np.asarray(positions, dtype=np.float64)
    if len(y) < 3:
        return y.copy()
    t = np.arange(len(y), dtype=np.float64)
    lo, width = y.min(), max(np.ptp(y), 1e-3)
    speeds = np.linspace(0.0, MAX_SPEED * side, _GRID)
    phases = np.linspace(0.0, 2.0 * width, _GRID, endpoint=False)
    grid = _triangle((phases[:, None, None], speeds[None, :, None], lo, width), t)
    cost = ((grid - y) ** 2).sum(axis=-1)
    p, s = np.unravel_index(cost.argmin(), cost.shape)
    bounds = ([-np.inf, 0.0, -np.inf, 1e-3], [np.inf, MAX_SPEED * side, np.inf, 2.0 * side])
    start = np.clip([phases[p], speeds[s], lo, width], bounds[0], bounds[1])
    fit = least_squares(lambda q: _triangle(q, t) - y, start, bounds=bounds)
    return _triangle(fit.x, t)


def motion_errors(videos: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per video: mean distance between tracked and fitted positions / frame side (max(H, W))."""
    centroids, (h, w) = track_positions(videos)
    side = float(max(h, w))
    errors = []
    for track in centroids:
        fitted = np.stack([fit_bounce(track[:, 0], w), fit_bounce(track[:, 1], h)], axis=1)
        errors.append(np.linalg.norm(track - fitted, axis=1).mean() / side)
    return np.asarray(errors)


def digit_video_features(
    videos: torch.Tensor | np.ndarray,
    encoder: DigitVideoEncoder | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Encoder features ``(batch, 64)`` float64 for FVD-digits."""
    encoder = encoder or load_digit_video_encoder()
    device = next(encoder.parameters()).device
    out = []
    with torch.inference_mode():
        for batch in _batches(videos, batch_size):
            out.append(encoder.features(encoder_input(batch).to(device)).double().cpu().numpy())
    return np.concatenate(out)


def fvd_digits(real_features: np.ndarray, fake_features: np.ndarray) -> float:
    """Fréchet distance between two sets of :func:`digit_video_features`."""
    return frechet_distance(*feature_statistics(real_features), *feature_statistics(fake_features))
