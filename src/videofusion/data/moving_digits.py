"""Built-in moving-digits videos: the project's default, offline training data.

Digits come from scikit-learn's bundled 8x8 handwritten digits (no download) and, optionally,
from PIL's default font. Each clip shows ``num_digits`` digits on a black background moving with
constant velocity and bouncing off the borders. Item ``i`` is a pure function of
``(seed, split, i)``, so clips are generated on the fly yet always identical.

Train/test disjointness: each source's digit images are split once (stratified 80/20, fixed
``SPLIT_SEED``, independent of ``seed``) and a split only draws images from its own part, so no
(digit image, trajectory) pair can appear in both splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from videofusion.data.transforms import parse_resolution, to_clip_tensor

PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
    "white": (1.0, 1.0, 1.0),
}
SOURCES = ("handwritten", "font")
SPLIT_SEED = 0
TEST_FRACTION = 0.2
FONT_ANGLES = (-15, -10, -5, 0, 5, 10, 15)
FONT_STROKES = (0, 1, 2)
# Compass directions in image coordinates (y grows downwards), 45 degrees apart.
_DIRECTIONS = (
    "right",
    "down and to the right",
    "down",
    "down and to the left",
    "left",
    "up and to the left",
    "up",
    "up and to the right",
)


def direction_words(vx: float, vy: float) -> str:
    """Describe a velocity (image coordinates, y down) with one of eight compass phrases."""
    if vx == 0 and vy == 0:
        return "still"
    angle = np.degrees(np.arctan2(vy, vx)) % 360.0
    return _DIRECTIONS[int(np.round(angle / 45.0)) % 8]


def bounce(start: np.ndarray, velocity: np.ndarray, limit: np.ndarray, steps: int) -> np.ndarray:
    """Positions ``(steps, dims)`` of points moving at constant speed, reflected into [0, limit].

    Reflection is the closed-form triangle wave, so there is no per-frame loop.
    """
    t = np.arange(steps, dtype=np.float64)[:, None]
    free = start[None, :] + velocity[None, :] * t
    period = 2.0 * limit[None, :]
    return limit[None, :] - np.abs(limit[None, :] - np.mod(free, period))


@cache
def _handwritten_images() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 1,797 digits as float ``(N, 10, 10)`` in [0, 1] (1 px black margin), labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.pad(digits.images.astype(np.float32) / 16.0, ((0, 0), (1, 1), (1, 1)))
    return images, digits.target.astype(np.int64)


@cache
def _font_images() -> tuple[np.ndarray, np.ndarray]:
    """Digits 0-9 in PIL's default font, one per (rotation, stroke width): ``(N, 32, 32)``."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=48)
    images, labels = [], []
    for digit in range(10):
        for angle in FONT_ANGLES:
            for stroke in FONT_STROKES:
                canvas = Image.new("L", (96, 96))
                ImageDraw.Draw(canvas).text(
                    (48, 48), str(digit), fill=255, font=font, anchor="mm",
                    stroke_width=stroke, stroke_fill=255,
                )
                glyph = canvas.rotate(angle, resample=Image.BICUBIC)
                glyph = glyph.crop(glyph.getbbox())
                side = int(max(glyph.size) * 1.25)
                square = Image.new("L", (side, side))
                square.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
                square = square.resize((32, 32), Image.LANCZOS)
                images.append(np.asarray(square, dtype=np.float32) / 255.0)
                labels.append(digit)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _source_images(source: str) -> tuple[np.ndarray, np.ndarray]:
    return _handwritten_images() if source == "handwritten" else _font_images()


@cache
def split_indices(source: str, split: str) -> np.ndarray:
    """Indices (into the source's full image set) of the images a split may use."""
    from sklearn.model_selection import train_test_split

    _, labels = _source_images(source)
    train, test = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels,
        random_state=SPLIT_SEED,
    )
    return np.sort(train if split == "train" else test)


def _upscale(images: np.ndarray, size: int) -> np.ndarray:
    """Smoothly resize ``(N, h, w)`` float images to ``(N, size, size)`` uint8."""
    x = F.interpolate(
        torch.from_numpy(images)[:, None], size=(size, size), mode="bicubic",
        align_corners=False, antialias=True,
    )
    return (x[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()


class MovingDigits(Dataset):
    """Procedural clips of bouncing digits; items are dicts (see ``docs/data.md``).

    ``video`` is float32 ``(channels, frames, H, W)`` in [-1, 1]; ``class_label`` is the first
    digit's class; ``caption`` names colour, digit and initial direction of every digit.
    """

    num_classes = 10
    classes = [str(d) for d in range(10)]
    class_names = classes  # by label: the digit

    def __init__(
        self,
        split: str = "train",
        num_frames: int = 16,
        resolution: int | Sequence[int] = 32,
        num_digits: int = 1,
        channels: int = 3,
        colors: Sequence[str] = tuple(PALETTE),
        source: str = "handwritten",
        digit_size: int | None = None,
        speed: tuple[float, float] = (0.03, 0.1),
        length: int = 10_000,
        seed: int = 0,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if num_digits < 1:
            raise ValueError(f"num_digits must be >= 1, got {num_digits}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (colour), got {channels}")
        unknown = [c for c in colors if c not in PALETTE]
        if unknown or not colors:
            raise ValueError(f"colors must be a non-empty subset of {list(PALETTE)}: {colors!r}")
        if source not in (*SOURCES, "both"):
            raise ValueError(f"source must be one of {[*SOURCES, 'both']}, got {source!r}")
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if not 0 <= speed[0] <= speed[1]:
            raise ValueError(f"speed must be (min, max) with 0 <= min <= max, got {speed!r}")
        self.split = split
        self.num_frames = num_frames
        self.height, self.width = parse_resolution(resolution)
        self.num_digits = num_digits
        self.channels = channels
        self.colors = tuple(colors) if channels == 3 else ("white",)
        self.sources = SOURCES if source == "both" else (source,)
        self.digit_size = digit_size or round(min(self.height, self.width) / 2)
        if not 4 <= self.digit_size <= min(self.height, self.width):
            raise ValueError(f"digit_size must be in [4, frame side], got {self.digit_size}")
        self.speed = (float(speed[0]), float(speed[1]))
        self.length = length
        self.seed = seed
        # Per source: image indices this split may use, and those images at digit size (uint8).
        self.image_indices = {s: split_indices(s, split) for s in self.sources}
        self._images = {
            s: _upscale(_source_images(s)[0][self.image_indices[s]], self.digit_size)
            for s in self.sources
        }
        self._labels = {s: _source_images(s)[1][self.image_indices[s]] for s in self.sources}
        self._rgb = {name: np.asarray(PALETTE[name], dtype=np.float32) for name in PALETTE}

    def __len__(self) -> int:
        return self.length

    def metadata(self, index: int) -> dict:
        """Everything that defines item ``index`` (what evaluation metrics compare against).

        Keys: ``class_label``, ``caption``, ``digit_classes``, ``colors``, ``sources``,
        ``image_indices`` (into the source's full image set, e.g. ``load_digits()`` order),
        ``directions``, ``digit_size``, ``velocity`` float ``(digits, 2)`` (vx, vy) in px/frame at
        frame 0, ``top_left`` int ``(digits, frames, 2)`` (x, y), ``centers`` float
        ``(digits, frames, 2)`` (x, y) = ``top_left + (digit_size - 1) / 2`` in pixel indices.
        """
        return self._sample(index)[0]

    def _sample(self, index: int) -> tuple[dict, list[int]]:
        """Draw item ``index``'s parameters; also return the picks into ``self._images``."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        rng = np.random.default_rng([self.seed, ("train", "test").index(self.split), index])
        n, size = self.num_digits, self.digit_size
        sources = [self.sources[i] for i in rng.integers(len(self.sources), size=n)]
        picks = [int(rng.integers(len(self._labels[s]))) for s in sources]
        colors = [self.colors[i] for i in rng.integers(len(self.colors), size=n)]
        limit = np.array([self.width - size, self.height - size], dtype=np.float64)
        start = rng.uniform(0.0, 1.0, size=(n, 2)) * limit
        angle = rng.integers(8, size=n) * (np.pi / 4)
        speed = rng.uniform(*self.speed, size=n) * min(self.height, self.width)
        velocity = np.stack([np.cos(angle), np.sin(angle)], axis=1) * speed[:, None]
        velocity[np.abs(velocity) < 1e-9] = 0.0
        # Point the velocity away from a wall it would hit on the first step, so the motion seen
        # at the start of the clip is the one the caption describes.
        first = start + velocity
        velocity[(first < 0) | (first > limit)] *= -1
        top_left = np.stack(
            [np.rint(bounce(start[d], velocity[d], limit, self.num_frames)) for d in range(n)]
        ).astype(np.int64)
        classes = [int(self._labels[s][p]) for s, p in zip(sources, picks, strict=True)]
        directions = [direction_words(*v) for v in velocity]
        meta = {
            "class_label": classes[0],
            "caption": self._caption(classes, colors, directions),
            "digit_classes": classes,
            "colors": colors,
            "sources": sources,
            "image_indices": [
                int(self.image_indices[s][p]) for s, p in zip(sources, picks, strict=True)
            ],
            "directions": directions,
            "digit_size": size,
            "velocity": velocity,
            "top_left": top_left,
            "centers": top_left + (size - 1) / 2.0,
        }
        return meta, picks

    def _caption(self, classes: list[int], colors: list[str], directions: list[str]) -> str:
        parts = []
        for digit, color, direction in zip(classes, colors, directions, strict=True):
            color_word = f"{color} " if self.channels == 3 else ""
            motion = "standing still" if direction == "still" else f"moving {direction}"
            parts.append(f"a {color_word}digit {digit} {motion}")
        return ", and ".join(parts)

    def __getitem__(self, index: int) -> dict:
        meta, picks = self._sample(index)
        size = self.digit_size
        canvas = np.zeros((self.num_frames, self.height, self.width, self.channels), np.float32)
        for d, (source, pick) in enumerate(zip(meta["sources"], picks, strict=True)):
            glyph = self._images[source][pick].astype(np.float32) / 255.0
            patch = glyph[:, :, None] * self._rgb[meta["colors"][d]][: self.channels]
            # A per-frame slice beats one fancy-indexed scatter by ~3x at these sizes.
            for t, (x, y) in enumerate(meta["top_left"][d].tolist()):
                view = canvas[t, y : y + size, x : x + size]
                np.maximum(view, patch, out=view)
        return {
            "video": to_clip_tensor(canvas),
            "class_label": meta["class_label"],
            "caption": meta["caption"],
        }
