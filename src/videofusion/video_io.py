"""Writing and reading videos: H.264 mp4 (PyAV), GIF (Pillow), PNG contact sheets.

Frames here are what users see: numpy ``(frames, height, width, channels)``, floats in [0, 1]
or uint8; a batch of videos adds a leading axis.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image


def to_uint8(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    return frames


def upscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour enlargement so that 32x32 samples are visible in a viewer."""
    if scale == 1:
        return frames
    return frames.repeat(scale, axis=-3).repeat(scale, axis=-2)


# x264's rate-control look-ahead in frames. Its default (40 with the medium preset) makes the
# encoder hold up to ~41 frames before the first packet leaves: a stream's memory then grows over
# its first 40 frames (2.7 MB at 32x32, 6.4 MB at 128x128), past a 16-frame clip. 8 frames keep
# it below one clip, with mbtree still on (file sizes within 2% of the default's).
RC_LOOKAHEAD = 8


class Mp4Writer:
    """Streams frames into an H.264 mp4 as they are produced (long videos never sit in memory:
    the encoder holds at most ``RC_LOOKAHEAD`` + 1 frames)."""

    def __init__(self, path: str | Path, fps: int = 8, scale: int = 1):
        self.path, self.fps, self.scale = Path(path), fps, scale
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), mode="w")
        self._stream = None

    def write(self, frames: np.ndarray) -> None:
        for frame in upscale(to_uint8(frames), self.scale):
            if self._stream is None:
                self._stream = self._container.add_stream("libx264", rate=self.fps)
                # yuv420p needs even sides
                self._stream.height = frame.shape[0] + frame.shape[0] % 2
                self._stream.width = frame.shape[1] + frame.shape[1] % 2
                self._stream.pix_fmt = "yuv420p"
                self._stream.options = {"crf": "18", "rc-lookahead": str(RC_LOOKAHEAD)}
            frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)))
            for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                self._container.mux(packet)

    def close(self) -> None:
        if self._stream is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = 8, scale: int = 1) -> Path:
    with Mp4Writer(path, fps, scale) as writer:
        writer.write(frames)
    return Path(path)


def write_gif(frames: np.ndarray, path: str | Path, fps: int = 8, scale: int = 1) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in upscale(to_uint8(frames), scale)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps),
                   loop=0)
    return path


def contact_sheet(videos: np.ndarray, path: str | Path, scale: int = 1, gap: int = 1) -> Path:
    """One row per video, one column per frame, ``videos`` ``(batch, frames, H, W, C)``."""
    videos = upscale(to_uint8(videos), scale)
    b, f, h, w, c = videos.shape
    sheet = np.full((b * (h + gap) - gap, f * (w + gap) - gap, c), 255, dtype=np.uint8)
    for i in range(b):
        for j in range(f):
            sheet[i * (h + gap): i * (h + gap) + h, j * (w + gap): j * (w + gap) + w] = videos[i, j]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)
    return path


def read_video(path: str | Path) -> np.ndarray:
    """All frames of a video file as uint8 ``(frames, H, W, 3)`` (PyAV; GIFs included)."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path} holds no video frames")
    return np.stack(frames)
