"""Long videos as consecutive clips that share the base noise (spec §5).

Every clip of ``clip_frames`` frames is sampled with the SAME base noise and fresh residual
noise, so the content stays while the motion goes on. Consecutive clips overlap by ``overlap``
frames; while a clip is sampled, its first ``overlap`` frames are pinned, at every step, to the
noisy latents the previous clip had for those frames at the same step (replacement of the known
frames, as in inpainting). The new frames are therefore denoised next to exactly the context
that produced the frames already written, and the video does not jump at the seams.

Memory is bounded by one clip: the sampler only ever holds one clip, the previous clip is kept
as the trajectory of its last ``overlap`` frames (``steps`` small tensors), and frames leave as
soon as they are decoded (``iter_long_video`` yields them, ``generate_long`` can stream them into
an mp4). Time is linear in the number of clips. What a clip holds while the next one is sampled
is only that trajectory, and it shrinks as the next clip's grows (``SeamInpainting`` lets go of
each step's pinned frames once used): no earlier latents, frames or decoded chunks stay
referenced, and the mp4 writer's encoder keeps a fixed look-ahead (``video_io.Mp4Writer``) so
that its buffer stops growing within the first clip. Between clips the C heap's free memory goes
back to the OS (``release_freed_memory``), so that one clip's heap layout does not raise the
next one's resident peak.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .allocator import release_freed_memory
from .video_io import Mp4Writer


class SeamInpainting:
    """``before_step`` hook of one clip: pins its first frames to the previous clip's trajectory
    and records the trajectory of its last ``record`` frames for the next clip.

    Each step's entry of ``known`` is dropped (set to None) once used, so the previous clip's
    trajectory and this one's together never hold more than ``steps`` entries."""

    def __init__(self, known: list[torch.Tensor] | None, record: int):
        self.known = known
        self.record = record
        self.trajectory: list[torch.Tensor] = []

    def __call__(self, step: int, z: torch.Tensor) -> torch.Tensor:
        if self.known is not None:
            pinned, self.known[step] = self.known[step], None
            z = torch.cat([pinned, z[:, :, pinned.shape[2]:]], dim=2)
        if self.record:
            self.trajectory.append(z[:, :, -self.record:].clone())
        return z


def check_clips(num_frames: int, clip_frames: int, overlap: int) -> None:
    if not isinstance(num_frames, int) or num_frames < 2:
        raise ValueError(f"num_frames must be an integer >= 2, got {num_frames!r}")
    if not isinstance(clip_frames, int) or clip_frames < 2:
        raise ValueError(f"clip_frames must be an integer >= 2, got {clip_frames!r}")
    # the key frame k = clip_frames // 2 must stay free: it carries the shared base (spec §1)
    if not isinstance(overlap, int) or not 0 <= overlap <= clip_frames // 2:
        raise ValueError(
            f"overlap must be an integer in [0, clip_frames // 2 = {clip_frames // 2}], "
            f"got {overlap!r}"
        )


def num_clips(num_frames: int, clip_frames: int, overlap: int) -> int:
    """Clips needed for ``num_frames``: the first gives ``clip_frames``, each next one
    ``clip_frames - overlap`` new frames."""
    if num_frames <= clip_frames:
        return 1
    return 1 + math.ceil((num_frames - clip_frames) / (clip_frames - overlap))


def iter_long_video(
    pipeline,
    num_frames: int = 512,
    clip_frames: int = 16,
    overlap: int = 4,
    *,
    prompt: str | list[str] | None = None,
    class_labels: int | list[int] | torch.Tensor | None = None,
    height: int | None = None,
    width: int | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    residual_guidance_scale: float | None = None,
    lambda_: float | None = None,
    generator: torch.Generator | None = None,
    base_noise: torch.Tensor | None = None,
    num_videos: int = 1,
    eta: float = 0.0,
    progress: bool = True,
    signal_leak: bool = True,
    dtype: str | torch.dtype | None = None,
    colour_anchoring: float | None = None,
) -> Iterator[np.ndarray]:
    """Yield the frames of a long video clip by clip: numpy ``(batch, n, H, W, C)`` in [0, 1],
    ``n`` new frames per clip, ``num_frames`` in all.

    ``pipeline`` is a ``VideoFusionPipeline``; the other arguments are its ``__call__``'s.
    ``base_noise`` ``(batch, C, h, w)`` is the noise shared by every clip (drawn once if None).
    ``overlap=0`` gives independent clips that only share the base noise.
    """
    check_clips(num_frames, clip_frames, overlap)
    plan = pipeline.plan(prompt, class_labels, num_frames=min(clip_frames, num_frames),
                         height=height, width=width, num_inference_steps=num_inference_steps,
                         guidance_scale=guidance_scale,
                         residual_guidance_scale=residual_guidance_scale, lambda_=lambda_,
                         num_videos=num_videos, eta=eta, signal_leak=signal_leak, dtype=dtype,
                         colour_anchoring=colour_anchoring)
    batch, channels, _, h, w = plan.latent_shape
    frame_shape = (batch, channels, h, w)
    if base_noise is None:
        base_noise = torch.randn(frame_shape, generator=generator,
                                 device=generator.device if generator else "cpu",
                                 dtype=pipeline.residual.dtype)
    elif tuple(base_noise.shape) != frame_shape:
        raise ValueError(f"base_noise must have shape {frame_shape}, got {tuple(base_noise.shape)}")

    clips = num_clips(num_frames, clip_frames, overlap)
    known, produced = None, 0
    for clip in tqdm(range(clips), disable=not progress, desc="clips"):
        seam = SeamInpainting(known, overlap if clip < clips - 1 else 0)
        first = 0 if known is None else overlap
        frames = _sample_clip(pipeline, plan, generator, base_noise, seam,
                              slice(first, first + num_frames - produced))
        known = seam.trajectory if overlap else None
        produced += frames.shape[1]
        release_freed_memory()  # the clip's working memory, freed, leaves the heap too
        yield frames
        del frames  # the caller has it: hold no decoded clip while the next one is sampled


# Not iter_long_video: torch.no_grad() around a generator function drives it through a wrapper
# that keeps the last value it yielded until the next one is ready, i.e. one decoded clip more
# while the next clip is sampled.
@torch.no_grad()
def _sample_clip(pipeline, plan, generator, base_noise, seam: SeamInpainting,
                 keep: slice) -> np.ndarray:
    """One clip's ``keep`` frames, decoded; its latents are freed on return."""
    latents, fresh_noise = pipeline.prepare_latents(plan, generator, base_noise)
    latents = pipeline.denoise(plan, latents, fresh_noise, before_step=seam, progress=False)
    return pipeline.postprocess(pipeline.decode(latents[:, :, keep]), "np")


def generate_long(
    pipeline,
    num_frames: int = 512,
    clip_frames: int = 16,
    overlap: int = 4,
    *,
    out_path: str | Path | None = None,
    fps: int | None = None,
    scale: int = 1,
    **kwargs,
) -> np.ndarray | Path:
    """A long video (spec §5). Without ``out_path``: the frames, numpy ``(batch, num_frames, H,
    W, C)`` in [0, 1]. With ``out_path``: the frames are streamed into that mp4 as each clip is
    produced (one video only) and the path is returned; the video never sits in memory.

    ``kwargs`` are those of ``iter_long_video`` (prompt, class_labels, generator, ...).
    """
    chunks = iter_long_video(pipeline, num_frames, clip_frames, overlap, **kwargs)
    if out_path is None:
        return np.concatenate(list(chunks), axis=1)
    if kwargs.get("num_videos", 1) != 1:
        raise ValueError("out_path writes one video: use num_videos=1")
    labels = kwargs.get("class_labels")
    prompt = kwargs.get("prompt")
    if (labels is not None and np.size(labels) != 1) or (
            prompt is not None and not isinstance(prompt, str) and len(prompt) != 1):
        raise ValueError("out_path writes one video: pass one prompt or class label")
    first = next(chunks)  # bad arguments fail here, before the file is created
    with Mp4Writer(out_path, fps or pipeline.config.fps, scale) as writer:
        writer.write(first[0])
        del first  # written: no clip stays referenced while the next is sampled
        for frames in chunks:
            writer.write(frames[0])
            del frames
    return Path(out_path)
