"""Clips from a folder of videos: video files decoded with PyAV, or folders of frame images.

Supported layouts (``layout=``):

- ``"files"``: video files anywhere under ``root``; unlabelled.
- ``"frames"``: every folder that directly holds images is one video (Sky Time-lapse:
  ``root/<video_id>[/<clip_id>]/<frames>.jpg``); unlabelled.
- ``"ucf101"``: class folders, ``root/<ClassName>/<video>.avi`` (or ``<video>/`` frame folders);
  label = class folder. With the official ``classInd.txt`` + ``trainlist0N.txt``/``testlist0N.txt``
  the split and class indices come from those files.
- ``"taichi"``: ``root/<split>/<video>.mp4`` (or frame folders); unlabelled.
- ``"auto"``: ``taichi`` if ``root/train`` or ``root/test`` exists; else ``ucf101`` when every
  video file sits exactly one folder below ``root``, ``files`` when video files exist elsewhere,
  ``frames`` when there are only frame folders.

Bad input never crashes training: construction probes every video (header frame count, packet
count when the header lacks one) and skips unreadable or too-short ones with one warning each;
``__getitem__`` marks a video that fails to decode as bad in a shared-memory table (visible to the
main process and all DataLoader workers) and returns the next good index instead.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from videofusion.data.transforms import center_crop, cover_size, parse_resolution, to_clip_tensor

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".webm", ".mkv", ".mov", ".gif"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
LAYOUTS = ("auto", "files", "frames", "ucf101", "taichi")
# Clips starting this many frames in are reached by seeking to the preceding keyframe rather than
# decoding from the first frame.
SEEK_MIN_FRAMES = 32
FAILED_IN_WORKER = "failed to decode (reason in the log of the process that read it)"


class VideoDecodeError(Exception):
    """A video that cannot provide the requested frames; the message is the skip reason."""


@dataclass(frozen=True)
class VideoEntry:
    """One indexed video: a file or a folder of frames."""

    path: Path
    is_frame_folder: bool
    num_frames: int
    class_label: int = -1
    caption: str = ""


def natural_key(name: str) -> list:
    """Sort key that orders ``frame_2`` before ``frame_10``."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def scan(directory: Path) -> tuple[list[Path], list[Path]]:
    """Video files and frame folders (folders directly holding images) under ``directory``."""
    files, frame_dirs = [], []
    for current, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted((d for d in dirnames if not d.startswith(".")), key=natural_key)
        names = [n for n in filenames if not n.startswith(".")]
        suffixes = [Path(n).suffix.lower() for n in names]
        files += [
            Path(current, n)
            for n, s in sorted(zip(names, suffixes, strict=True), key=lambda x: natural_key(x[0]))
            if s in VIDEO_EXTENSIONS
        ]
        if Path(current) != directory and any(s in IMAGE_EXTENSIONS for s in suffixes):
            frame_dirs.append(Path(current))
    return files, frame_dirs


def frame_files(folder: Path) -> list[Path]:
    """Image files of a frame folder in natural order."""
    names = [n for n in os.listdir(folder) if Path(n).suffix.lower() in IMAGE_EXTENSIONS]
    return [folder / n for n in sorted(names, key=natural_key)]


def probe_frame_count(path: Path) -> int:
    """Frames in a video file, from the container header or by counting packets (no decoding)."""
    if path.stat().st_size == 0:
        raise VideoDecodeError("empty file (0 bytes)")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError("no video stream")
            stream = container.streams.video[0]
            if stream.frames > 0:
                return stream.frames
            return sum(1 for packet in container.demux(stream) if packet.size)
    except av.FFmpegError as err:
        raise VideoDecodeError(f"not a readable video ({err})") from err


def _to_array(frame: av.VideoFrame, target: tuple[int, int], channels: int) -> np.ndarray:
    h, w = cover_size(frame.height, frame.width, target)
    fmt = "rgb24" if channels == 3 else "gray"
    array = frame.reformat(width=w, height=h, format=fmt, interpolation="AREA").to_ndarray()
    return array.reshape(h, w, channels)


class _SeekFailed(Exception):
    """Seeking did not land at or before the wanted frame; decode from the start instead."""


def read_video_file(
    path: Path, indices: Sequence[int], target: tuple[int, int], channels: int
) -> np.ndarray:
    """Decode frames ``indices`` (ascending) of a video file, resized to cover ``target``.

    Decoding stops after the last wanted frame; a clip starting late seeks to the keyframe
    before it and maps presentation timestamps to frame indices, falling back to decoding from
    the first frame when the container cannot seek. Returns uint8 ``(T, h, w, C)``.
    """
    if indices[0] >= SEEK_MIN_FRAMES:
        try:
            return _decode(path, indices, target, channels, seek=True)
        except _SeekFailed:
            pass
    return _decode(path, indices, target, channels, seek=False)


def _decode(
    path: Path, indices: Sequence[int], target: tuple[int, int], channels: int, seek: bool
) -> np.ndarray:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate, base = stream.average_rate, stream.time_base
        origin = stream.start_time or 0
        if seek:
            if not rate or base is None:
                raise _SeekFailed
            try:
                container.seek(origin + int(indices[0] / rate / base), stream=stream, backward=True)
            except av.FFmpegError as err:
                raise _SeekFailed from err
        out: list[np.ndarray] = []
        position = -1
        for frame in container.decode(stream):
            if seek:
                if frame.pts is None:
                    raise _SeekFailed
                landed, position = position, round((frame.pts - origin) * base * rate)
                if landed < 0 and position > indices[0]:  # first frame is past the clip start
                    raise _SeekFailed
            else:
                position += 1
            if position < indices[len(out)]:
                continue
            array = _to_array(frame, target, channels)
            # A frame whose timestamp jumps past several wanted indices stands in for all of them.
            while len(out) < len(indices) and indices[len(out)] <= position:
                out.append(array)
            if len(out) == len(indices):
                return np.stack(out)
    raise VideoDecodeError(f"decoded only up to frame {position}, clip needs frame {indices[-1]}")


def read_frame_folder(
    folder: Path, indices: Sequence[int], target: tuple[int, int], channels: int
) -> np.ndarray:
    """Load frames ``indices`` of a frame folder, resized to cover ``target``: ``(T, h, w, C)``."""
    files = frame_files(folder)
    if indices[-1] >= len(files):
        raise VideoDecodeError(f"has {len(files)} frames, clip needs frame {indices[-1]}")
    out = []
    for i in indices:
        with Image.open(files[i]) as image:
            image = image.convert("RGB" if channels == 3 else "L")
            h, w = cover_size(image.height, image.width, target)
            image = image.resize((w, h), Image.BICUBIC)
            out.append(np.asarray(image).reshape(h, w, channels))
    return np.stack(out)


def _load_captions(root: Path) -> dict[str, str]:
    """``captions.json`` ({relative path: caption}) or ``captions.txt`` (path TAB caption)."""
    captions: dict[str, str] = {}
    json_path, txt_path = root / "captions.json", root / "captions.txt"
    if json_path.is_file():
        try:
            captions.update({str(k): str(v) for k, v in json.loads(json_path.read_text()).items()})
        except (ValueError, AttributeError) as err:
            raise ValueError(f"captions file is not a JSON object: {json_path} ({err})") from err
    if txt_path.is_file():
        for line in txt_path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key, _, caption = line.partition("\t") if "\t" in line else line.partition(" ")
                captions[key.strip()] = caption.strip()
    return {k.replace("\\", "/").lower(): v for k, v in captions.items()}


def _find_ucf_split_dir(root: Path, split_dir: str | Path | None) -> Path | None:
    if split_dir is not None:
        if not (Path(split_dir) / "classInd.txt").is_file():
            raise FileNotFoundError(f"split_dir has no classInd.txt: {split_dir}")
        return Path(split_dir)
    for candidate in (root, root / "ucfTrainTestlist", root.parent / "ucfTrainTestlist"):
        if (candidate / "classInd.txt").is_file():
            return candidate
    return None


class VideoFolder(Dataset):
    """Clips of ``num_frames`` frames, every ``frame_stride``-th, from a folder of videos.

    Items are ``{"video": float32 (channels, num_frames, H, W) in [-1, 1], "class_label": int
    (-1 when unlabelled), "caption": str ("" when none)}``; frames are resized (shorter side) and
    centre-cropped to ``resolution``. ``classes`` lists class names (index = label).
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = "train",
        num_frames: int = 16,
        resolution: int | Sequence[int] = 32,
        frame_stride: int = 1,
        start: str = "random",
        channels: int = 3,
        layout: str = "auto",
        split_dir: str | Path | None = None,
        fold: int = 1,
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data folder not found: {self.root}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if start not in ("random", "center"):
            raise ValueError(f"start must be 'random' or 'center', got {start!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if num_frames < 1 or frame_stride < 1:
            raise ValueError(f"num_frames, frame_stride must be >= 1: {num_frames}, {frame_stride}")
        self.split = split
        self.num_frames = num_frames
        self.frame_stride = frame_stride
        self.span = (num_frames - 1) * frame_stride + 1
        self.size = parse_resolution(resolution)
        self.start = start
        self.channels = channels
        self.seed = seed
        self.layout = self._detect_layout() if layout == "auto" else layout
        self.classes: list[str] = []
        self._skipped_at_init: list[tuple[str, str]] = []
        self._warned: set[str] = set()
        self._reasons: dict[int, str] = {}
        self.entries = self._index(split_dir, fold)
        if not self.entries:
            raise ValueError(
                f"no readable videos with >= {self.span} frames in {self.root} "
                f"(layout {self.layout!r}, {len(self._skipped_at_init)} skipped)"
            )
        # Shared memory so that bad videos found inside DataLoader workers are visible everywhere.
        self._bad = torch.zeros(len(self.entries), dtype=torch.uint8).share_memory_()
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        logger.info(
            "%s: %d videos (layout %s), %d skipped",
            self.root, len(self.entries), self.layout, len(self._skipped_at_init),
        )

    # ---- indexing -------------------------------------------------------------------------

    def _detect_layout(self) -> str:
        if (self.root / "train").is_dir() or (self.root / "test").is_dir():
            return "taichi"
        files, frame_dirs = scan(self.root)
        if files:
            depth_one = all(len(p.relative_to(self.root).parts) == 2 for p in files)
            return "ucf101" if depth_one else "files"
        return "frames" if frame_dirs else "files"

    def _candidates(self) -> list[Path]:
        if self.layout == "taichi":
            base = self.root / (self.split or "train")
            if not base.is_dir():
                raise FileNotFoundError(f"split folder not found: {base}")
            files, frame_dirs = scan(base)
            return files + frame_dirs
        files, frame_dirs = scan(self.root)
        if self.layout == "files":
            return files
        if self.layout == "frames":
            return frame_dirs
        return [p for p in files + frame_dirs if len(p.relative_to(self.root).parts) == 2]

    def _labels(
        self, candidates: list[Path], split_dir: str | Path | None, fold: int
    ) -> list[tuple[Path, int]]:
        """Candidates kept by the split, with labels; sets ``classes`` (``ucf101`` layout only)."""
        if self.layout != "ucf101":
            return [(p, -1) for p in candidates]
        lists = _find_ucf_split_dir(self.root, split_dir)
        if lists is None:
            self.classes = sorted({p.relative_to(self.root).parts[0] for p in candidates})
            index = {c.lower(): i for i, c in enumerate(self.classes)}
            return [(p, index[p.relative_to(self.root).parts[0].lower()]) for p in candidates]
        rows = [line.split() for line in (lists / "classInd.txt").read_text().splitlines()]
        ordered = sorted((int(i), name) for i, name in (r for r in rows if len(r) == 2))
        self.classes = [name for _, name in ordered]
        index = {c.lower(): i for i, c in enumerate(self.classes)}
        allowed = None
        if self.split is not None:
            list_file = lists / f"{self.split}list{fold:02d}.txt"
            if not list_file.is_file():
                raise FileNotFoundError(f"UCF101 split file not found: {list_file}")
            allowed = {
                line.split()[0].lower().rsplit(".", 1)[0]
                for line in list_file.read_text().splitlines()
                if line.strip()
            }
        kept = []
        for p in candidates:
            rel = p.relative_to(self.root)
            key = rel.with_suffix("").as_posix().lower() if p.is_file() else rel.as_posix().lower()
            if (allowed is None or key in allowed) and rel.parts[0].lower() in index:
                kept.append((p, index[rel.parts[0].lower()]))
        if allowed is not None and len(kept) < len(allowed):
            logger.warning(
                "%d videos listed in %s%s not found under %s",
                len(allowed) - len(kept), self.split, f"list{fold:02d}.txt", self.root,
            )
        return kept

    def _caption(self, path: Path, captions: dict[str, str]) -> str:
        sidecar = path.with_suffix(".txt") if path.is_file() else path.parent / f"{path.name}.txt"
        if sidecar.is_file():
            return sidecar.read_text().strip()
        rel = path.relative_to(self.root).as_posix().lower()
        return captions.get(rel, captions.get(rel.rsplit(".", 1)[0] if path.is_file() else rel, ""))

    def _index(self, split_dir: str | Path | None, fold: int) -> list[VideoEntry]:
        labelled = self._labels(self._candidates(), split_dir, fold)
        captions = _load_captions(self.root)
        entries = []
        for path, label in labelled:
            try:
                is_folder = path.is_dir()
                count = len(frame_files(path)) if is_folder else probe_frame_count(path)
                if count < self.span:
                    raise VideoDecodeError(
                        f"too short: {count} frames, clip needs {self.span} "
                        f"(num_frames={self.num_frames}, frame_stride={self.frame_stride})"
                    )
            except Exception as err:  # never let one odd file stop indexing
                self._skip(path, str(err))
                self._skipped_at_init.append((str(path), str(err)))
                continue
            entries.append(VideoEntry(path, is_folder, count, label, self._caption(path, captions)))
        return entries

    # ---- bad-input bookkeeping ------------------------------------------------------------

    def _skip(self, path: Path, reason: str) -> None:
        if str(path) not in self._warned:
            self._warned.add(str(path))
            logger.warning("skipping video %s: %s", path, reason)

    def _mark_bad(self, i: int, reason: str) -> None:
        self._bad[i] = 1
        self._reasons[i] = reason
        self._skip(self.entries[i].path, reason)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(path, reason) of every video skipped so far, at construction or while decoding.

        Bad videos found in DataLoader workers are included (shared table); their detailed
        reason is in the warning that worker logged.
        """
        found = [
            (str(self.entries[i].path), self._reasons.get(i, FAILED_IN_WORKER))
            for i in torch.nonzero(self._bad).flatten().tolist()
        ]
        return self._skipped_at_init + found

    @property
    def num_classes(self) -> int:
        """Number of labels (0 for unlabelled layouts)."""
        return len(self.classes)

    @property
    def class_names(self) -> list[str] | None:
        """The name of each label (its class folder, or ``classInd.txt``'s), None for
        unlabelled layouts: what a model trained on it records."""
        return list(self.classes) or None

    @property
    def num_skipped(self) -> int:
        return len(self._skipped_at_init) + int(self._bad.sum())

    def validate(self) -> int:
        """Decode every frame of every video now and mark failures as bad; return how many.

        Optional and as slow as one full decoding pass, so that a training run can learn about
        all bad files before it starts. Also corrects frame counts that headers overstated.
        """
        failures = 0
        for i, entry in enumerate(self.entries):
            if self._bad[i]:
                continue
            try:
                if entry.is_frame_folder:
                    files = frame_files(entry.path)
                    for file in files:
                        with Image.open(file) as image:
                            image.load()
                    count = len(files)
                else:
                    with av.open(str(entry.path)) as container:
                        count = sum(1 for _ in container.decode(container.streams.video[0]))
                if count < self.span:
                    raise VideoDecodeError(f"too short: {count} decodable frames of {self.span}")
                self.entries[i] = replace(entry, num_frames=count)
            except Exception as err:  # decoders raise many types on corrupt data
                self._mark_bad(i, f"failed to decode ({err})")
                failures += 1
        return failures

    # ---- sampling -------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Reseed random clip starts (shared with DataLoader workers); same epoch, same clips."""
        self._epoch[0] = epoch

    def frame_indices(self, i: int) -> list[int]:
        """Frame indices of the clip drawn from video ``i`` at the current epoch."""
        free = self.entries[i].num_frames - self.span
        if self.start == "center":
            first = free // 2
        else:
            rng = np.random.default_rng([self.seed, int(self._epoch[0]), i])
            first = int(rng.integers(free + 1))
        return list(range(first, first + self.span, self.frame_stride))

    def read_frames(self, i: int, indices: Sequence[int]) -> torch.Tensor:
        """Frames ``indices`` (ascending) of video ``i``, resized and cropped as every clip is:
        float32 ``(channels, len(indices), H, W)`` in [-1, 1]. Raises on a video that cannot
        deliver them; the latent cache (``videofusion.latent_cache``) reads through this too."""
        entry = self.entries[i]
        read = read_frame_folder if entry.is_frame_folder else read_video_file
        frames = read(entry.path, indices, self.size, self.channels)
        return to_clip_tensor(center_crop(frames, self.size))

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.entries):
            raise IndexError(f"index {index} out of range for {len(self.entries)} videos")
        for offset in range(len(self.entries)):
            i = (index + offset) % len(self.entries)
            if self._bad[i]:
                continue
            entry = self.entries[i]
            try:
                video = self.read_frames(i, self.frame_indices(i))
            except Exception as err:  # decoders raise many types on corrupt data
                self._mark_bad(i, f"failed to decode ({err})")
                continue
            return {"video": video, "class_label": entry.class_label, "caption": entry.caption}
        raise RuntimeError(f"every video in {self.root} failed to decode; see the warnings above")
