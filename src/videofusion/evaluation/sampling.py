"""The generated side of an evaluation: a saved ``VideoFusionPipeline`` sampled by the protocol.

Each video's initial noise is drawn video by video from the protocol's seed, so a video does
not depend on the batch it was sampled in.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import shards
from .protocol import EvalProtocol
from .sets import VideoSet, to_uint8


def _resize(videos: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Float ``(N, F, H, W, C)`` resized bilinearly (antialiased when shrinking) to ``size``."""
    if videos.shape[2:4] == size:
        return videos
    import torch
    import torch.nn.functional as F

    n, f, h, w, c = videos.shape
    x = torch.from_numpy(np.ascontiguousarray(videos)).reshape(n * f, h, w, c).permute(0, 3, 1, 2)
    shrink = h > size[0] or w > size[1]
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return x.permute(0, 2, 3, 1).reshape(n, f, *size, c).numpy()


def _conditions(pipe, protocol: EvalProtocol, channels: int, resolution: tuple[int, int],
                captions: Sequence[str] | None = None):
    """What each video is sampled with: ``(conditioning, prompts or None, labels)``.

    Class-conditioned models get labels 0..9 in turn (or ``protocol.class_labels``, cycled);
    text-conditioned models ``captions`` (cycled), else the captions of the moving-digits test
    split (the digit is the label); unconditional models nothing. Labels are kept for prompt
    adherence.
    """
    n, condition = protocol.num_videos, protocol.condition
    text = pipe.residual.config.cross_attention_dim is not None
    if condition == "text" and not text or condition == "class" and pipe.num_classes is None:
        raise ValueError(f"this model cannot be sampled with condition {condition!r}")
    if text and condition != "class" and captions is not None:
        if not captions:
            raise ValueError("captions: empty")
        return ("text (the real set's captions)", [captions[i % len(captions)] for i in range(n)],
                [-1] * n)
    if text and condition != "class":
        from videofusion.data import MovingDigits

        digits = MovingDigits(split="test", num_frames=protocol.num_frames,
                              resolution=resolution, channels=channels if channels in (1, 3)
                              else 3, length=n)
        metas = [digits.metadata(i) for i in range(n)]
        return ("text (moving-digits test-split captions)", [m["caption"] for m in metas],
                [m["class_label"] for m in metas])
    if pipe.num_classes is not None:
        cycle = (list(protocol.class_labels) if protocol.class_labels is not None
                 else list(range(pipe.num_classes)))
        if not cycle:
            raise ValueError("class_labels: empty")
        return "class", None, [cycle[i % len(cycle)] for i in range(n)]
    return "none", None, [-1] * n


def sample_model(path: str | Path, protocol: EvalProtocol, device="cpu",
                 progress: bool = True, captions: Sequence[str] | None = None) -> VideoSet:
    """``protocol.num_videos`` samples of the pipeline in ``path``, resized to
    ``protocol.resolution`` (default: the model's sample size).

    A model conditioned on class and text is sampled with captions (``captions``, else the
    moving-digits test split's), or with class labels alone for ``condition="class"``. The
    guidance scale defaults to the pipeline's ``default_guidance`` (as ``videofusion sample``),
    1 when a model is sampled unconditionally.
    Under a multi-process launch each process samples its share of the batches (``shards``).
    """
    import torch

    from videofusion.pipeline import VideoFusionPipeline

    pipe = VideoFusionPipeline.from_pretrained(path).to(device).use_scheduler(protocol.scheduler)
    channels = (pipe.vae.config.out_channels if pipe.vae is not None
                else pipe.residual.config.out_channels)
    size = int(pipe.config.sample_size)
    resolution = protocol.resolution or (size, size)
    conditioning, prompts, labels = _conditions(pipe, protocol, channels, resolution, captions)
    guidance_scale = protocol.guidance_scale
    if guidance_scale is None:
        guidance_scale = 1.0 if conditioning == "none" else pipe.default_guidance
    steps = protocol.num_inference_steps or pipe.default_steps
    num_videos, num_frames, seed = protocol.num_videos, protocol.num_frames, protocol.seed
    generator = torch.Generator().manual_seed(seed)
    share = shards.my_share(num_videos, protocol.batch_size)
    chunks = []
    with tqdm(total=len(share), desc="sampling", unit="video", disable=not progress) as bar:
        for batch in shards.batches(num_videos, protocol.batch_size):
            start, stop = batch.start, batch.stop
            condition = (
                {"prompt": prompts[start:stop]} if prompts is not None
                else {"class_labels": labels[start:stop]} if conditioning == "class"
                else {"num_videos": stop - start}
            )
            plan = pipe.plan(**condition, num_frames=num_frames, height=size, width=size,
                             num_inference_steps=steps,
                             guidance_scale=guidance_scale,
                             residual_guidance_scale=protocol.residual_guidance_scale,
                             lambda_=protocol.lambda_, eta=protocol.eta,
                             colour_anchoring=protocol.colour_anchoring,
                             guidance_interval=protocol.guidance_interval,
                             signal_leak=protocol.signal_leak, dtype=protocol.dtype)
            _, latent_channels, _, h, w = plan.latent_shape  # (batch, C, frames, h, w)
            # z_T drawn video by video, so a video does not depend on the batch size; a
            # stochastic scheduler's fresh noise then follows each video's own z_T (FreshNoise).
            # base (1, C, h, w) and residual (1, C, frames, h, w) noise per video, drawn on the
            # CPU by every process (another process's share too), then moved
            noise = [(torch.randn(1, latent_channels, h, w, generator=generator),
                      torch.randn(1, latent_channels, num_frames, h, w, generator=generator))
                     for _ in batch]
            if start not in share:
                continue
            frames = pipe.generate(plan, torch.Generator().manual_seed(seed + 1 + start),
                                   base_noise=torch.cat([b for b, _ in noise]),
                                   residual_noise=torch.cat([r for _, r in noise]),
                                   progress=False)
            chunks.append(to_uint8(_resize(frames, resolution)))
            bar.update(stop - start)
    sampling = {"num_inference_steps": steps,
                "guidance_scale": guidance_scale,
                "residual_guidance_scale": plan.residual_guidance_scale,
                "colour_anchoring": plan.colour_anchoring,
                "guidance_interval": plan.guidance_interval,
                "scheduler": type(pipe.scheduler).__name__, "eta": protocol.eta,
                "sample_size": size,
                "channels": channels, "seed": seed,
                "lambda": (protocol.lambda_ if protocol.lambda_ is not None
                           else pipe.config.default_lambda),
                "signal_leak_mean": (None if plan.signal_leak is None
                                     else pipe.config.signal_leak_mean)}
    videos = shards.gather(np.concatenate(chunks) if chunks else None)
    return VideoSet(videos, labels, str(path), conditioning=conditioning,
                    sampling=sampling)
