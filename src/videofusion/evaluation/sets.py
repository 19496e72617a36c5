"""The two sides of an evaluation as uint8 clips: the moving-digits test split and folders.

Every set is ``(N, frames, H, W, 3)`` uint8 (grey repeated to three channels), so the metrics
see one layout whatever the source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from videofusion.choices import DEFAULT_FOLDER_ORDER, MOVING_DIGITS

_CAPTION_DIGIT = re.compile(r"\bdigit (\d)\b")


@dataclass
class VideoSet:
    """One side of the comparison: uint8 clips ``(N, frames, H, W, 3)`` and what is known."""

    videos: np.ndarray
    class_labels: list[int]  # -1 where unknown
    description: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    conditioning: str | None = None
    sampling: dict | None = None
    # a folder's videos: the caption ("" when none) and the class-folder label (-1 when none)
    captions: list[str] = field(default_factory=list)
    folder_labels: list[int] = field(default_factory=list)


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / "model_index.json").is_file()


def to_uint8(videos: np.ndarray) -> np.ndarray:
    """Float ``(N, F, H, W, C)`` in [0, 1] -> uint8 with 3 channels (grey is repeated)."""
    videos = (np.clip(videos, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(videos, 3, axis=-1) if videos.shape[-1] == 1 else videos


def load_moving_digits(
    num_videos: int,
    num_frames: int,
    resolution: tuple[int, int],
    progress: bool = True,
    start: int = 0,
    **options,
) -> VideoSet:
    """Clips ``start`` to ``start + num_videos`` of the moving-digits TEST split (``options`` go
    to ``MovingDigits``, e.g. ``channels``, ``source``), with their digit labels. Evaluation
    uses the first ones; later ones are a second real set, disjoint from the first."""
    from videofusion.data import MovingDigits

    ds = MovingDigits(split="test", num_frames=num_frames, resolution=resolution,
                      length=max(start + num_videos, 1), **options)
    videos, labels = [], []
    for i in tqdm(range(start, start + num_videos), desc=MOVING_DIGITS, unit="video",
                  disable=not progress):
        item = ds[i]
        videos.append((item["video"].permute(1, 2, 3, 0).numpy() + 1.0) / 2.0)
        labels.append(item["class_label"])
    where = f", clips {start}-{start + num_videos - 1}" if start else ""
    return VideoSet(to_uint8(np.stack(videos)), labels, f"{MOVING_DIGITS} (test split{where})")


def _folder_label(classes: list[str], label: int, caption: str) -> int:
    """A digit label from a class folder named 0-9, else from a caption "... digit N ..."."""
    if label >= 0 and classes[label].isdigit() and int(classes[label]) < 10:
        return int(classes[label])
    match = _CAPTION_DIGIT.search(caption)
    return int(match.group(1)) if match else -1


def in_order(entries: list, order: str = DEFAULT_FOLDER_ORDER) -> list:
    """A folder listing in the order an evaluation reads it (``FOLDER_ORDERS``): ``natural`` as
    listed (sorted); ``balanced`` round-robin over the class labels, each class in its own
    sorted order, so the first ``n`` entries hold every class as evenly as ``n`` allows."""
    if order == "natural":
        return list(entries)
    groups: dict[int, list] = {}
    for entry in entries:
        groups.setdefault(entry.class_label, []).append(entry)
    rounds = max(len(group) for group in groups.values()) if groups else 0
    return [group[i] for i in range(rounds) for group in groups.values() if i < len(group)]


def _native_size(entries) -> tuple[int, int] | None:
    """``(height, width)`` of the first readable entry of a folder listing."""
    import av
    from PIL import Image

    from videofusion.data.video_folder import frame_files

    for entry in entries:
        try:
            if entry.is_frame_folder:
                with Image.open(frame_files(entry.path)[0]) as image:
                    return image.height, image.width
            with av.open(str(entry.path)) as container:
                stream = container.streams.video[0]
                if stream.height and stream.width:
                    return stream.height, stream.width
        except (OSError, IndexError, av.FFmpegError):
            continue
    return None


def load_video_folder(
    path: str | Path,
    num_videos: int,
    num_frames: int,
    resolution: tuple[int, int] | None,
    name: str = "videos",
    progress: bool = True,
    order: str = DEFAULT_FOLDER_ORDER,
) -> VideoSet:
    """The first ``num_frames`` frames of up to ``num_videos`` readable videos of a folder, taken
    in ``order`` (:func:`in_order`), resized to cover ``resolution`` and centre-cropped.

    ``resolution=None`` keeps the folder's native size (its first readable video's): FVD then
    resizes each frame straight to the I3D's input, as its protocol does, with no detour
    through a smaller size.

    Unreadable videos are skipped and listed; a video with fewer than ``num_frames`` frames is a
    protocol mismatch and raises ``ValueError``.
    """
    from videofusion.data import VideoFolder
    from videofusion.data.transforms import MIN_RESOLUTION, center_crop
    from videofusion.data.video_folder import read_frame_folder, read_video_file

    # the listing (frame counts, labels, captions); its own resolution is not used
    ds = VideoFolder(path, split=None, num_frames=1, resolution=resolution or MIN_RESOLUTION,
                     start="center")
    size = resolution or _native_size(ds.entries) or ds.size
    skipped = list(ds.skipped)
    videos, labels, captions, folder_labels = [], [], [], []
    bar = tqdm(total=min(num_videos, len(ds.entries)), desc=f"reading {name}", unit="video",
               disable=not progress)
    with bar:
        for entry in in_order(ds.entries, order):
            if len(videos) == num_videos:
                break
            if entry.num_frames < num_frames:
                raise ValueError(
                    f"{name}: {entry.path} has {entry.num_frames} frames, fewer than "
                    f"num_frames={num_frames}; all videos must be at least that long"
                )
            read = read_frame_folder if entry.is_frame_folder else read_video_file
            try:
                frames = center_crop(read(entry.path, range(num_frames), size, 3), size)
            except Exception as err:  # decoders raise many types on corrupt data
                reason = " ".join(str(err).split())
                skipped.append((str(entry.path), f"failed to decode ({reason})"))
                continue
            videos.append(frames)
            labels.append(_folder_label(ds.classes, entry.class_label, entry.caption))
            captions.append(entry.caption)
            folder_labels.append(entry.class_label)
            bar.update()
    if not videos:
        raise ValueError(f"{name}: no readable video in {path} ({len(skipped)} skipped)")
    return VideoSet(np.stack(videos), labels, str(path), skipped, captions=captions,
                    folder_labels=folder_labels)


def folder_captions(path: str | Path, num_videos: int,
                    order: str = DEFAULT_FOLDER_ORDER) -> list[str]:
    """The captions of the ``num_videos`` videos :func:`load_video_folder` reads first (same
    ``order``), without reading a frame: the prompts to sample a text-conditioned model with
    when the folder is the real set, so that both sides hold the same mix of classes."""
    from videofusion.data import VideoFolder
    from videofusion.data.transforms import MIN_RESOLUTION

    ds = VideoFolder(path, split=None, num_frames=1, resolution=MIN_RESOLUTION, start="center")
    captions = [entry.caption for entry in in_order(ds.entries, order)[:num_videos]]
    if not any(captions):
        raise ValueError(f"real: {path} has no captions to prompt a text-conditioned model with "
                         "(sidecar .txt or captions.json); sample it with condition 'class'")
    return captions


def label_folder_set(videos: VideoSet, class_labels: tuple[int, ...] | None) -> VideoSet:
    """A fake folder's labels for prompt adherence: ``class_labels`` (one per readable video),
    else those found in class folders or captions; says where they came from."""
    if class_labels is not None:
        if len(class_labels) != len(videos.videos):
            raise ValueError(f"class_labels: {len(class_labels)} labels for "
                             f"{len(videos.videos)} readable fake videos")
        videos.class_labels = list(class_labels)
        videos.conditioning = "class_labels argument"
    elif max(videos.class_labels) >= 0:
        videos.conditioning = "labels from class folders 0-9 or 'digit N' captions"
    return videos
