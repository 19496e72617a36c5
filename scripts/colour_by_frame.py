"""Where a class-prompted clip changes colour: frame by frame, and when its key frame is given.

    python scripts/colour_by_frame.py [MODEL_DIR] [--num-videos 32] [--guidance W] [--steps N]
        [--scheduler NAME] [--out FILE]

Samples ``--num-videos`` class-prompted videos of a moving-digits model folder at its default
sampler, steps and guidance unless given (the coherence probe's protocol, seed 0; a run's
``pipeline/`` folder records no defaults and keeps its training scheduler, DDIM, so compare it
with the bundled model at its ``--scheduler ddpm --guidance 4 --steps 25``), then samples them
again by image-to-video from each one's own key frame, same labels. For each set it prints the mean
|colour - the clip's median colour| at every frame position (the key frame is frame
``frames // 2``), the sorted colour deviation per clip, and the coherence metrics.

If the residual generator read the clip's colour from the key frame, the second set would hold
its colour around a key frame it is given; if the key frame stands out there too, the other
frames take their colour from elsewhere.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from videofusion.evaluation import EvalProtocol, sample_model
from videofusion.metrics.coherence import coherence_metrics, colour_deviation, digit_colours
from videofusion.pipeline import load_pipeline

DEFAULT_MODEL_DIR = "src/videofusion/assets/default_model"
BATCH = 8


def colour_report(videos: np.ndarray) -> dict:
    """``videos`` ``(batch, frames, H, W, C)`` uint8 -> per-frame and per-clip colour numbers."""
    colours = digit_colours(videos)  # (batch, frames, 3), NaN where no digit
    off = np.abs(colours - np.nanmedian(colours, axis=1, keepdims=True)).mean(-1)
    metrics = coherence_metrics(videos, digits=True)
    return {"per_frame": np.round(np.nanmean(off, axis=0), 4).tolist(),
            "per_clip_sorted": np.round(np.sort(colour_deviation(videos)), 4).tolist(),
            **{k: metrics[k] for k in ("colour_deviation", "palette_coverage", "palette_counts",
                                       "key_frame_seam", "mean_speed", "jerk")}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", nargs="?", default=DEFAULT_MODEL_DIR)
    p.add_argument("--num-videos", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, help="default: the folder's")
    p.add_argument("--steps", type=int, help="default: the folder's")
    p.add_argument("--scheduler", help="default: the folder's")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    pipe = load_pipeline(args.model_dir).use_scheduler(args.scheduler)
    guidance = pipe.default_guidance if args.guidance is None else args.guidance
    steps = pipe.default_steps if args.steps is None else args.steps
    protocol = EvalProtocol(num_videos=args.num_videos, seed=args.seed, condition="class",
                            guidance_scale=guidance, num_inference_steps=steps,
                            scheduler=args.scheduler)
    sampled = sample_model(args.model_dir, protocol, progress=False)
    videos, labels = sampled.videos, list(sampled.class_labels)  # (batch, frames, H, W, C) uint8
    report = {"model": args.model_dir, "num_videos": args.num_videos, "seed": args.seed,
              "guidance_scale": guidance, "num_inference_steps": steps,
              "scheduler": type(pipe.scheduler).__name__, "sampled": colour_report(videos)}
    print("sampled", json.dumps(report["sampled"]))
    key_frames = videos[:, videos.shape[1] // 2]  # (batch, H, W, C)
    again = []
    for start in range(0, len(videos), BATCH):
        stop = start + BATCH
        again.append(pipe(class_labels=labels[start:stop], image=list(key_frames[start:stop]),
                          num_frames=videos.shape[1], num_inference_steps=steps,
                          guidance_scale=guidance, progress=False,
                          generator=torch.Generator().manual_seed(args.seed + 1 + start)).frames)
    again = (np.concatenate(again) * 255).round().astype(np.uint8)
    report["from_own_key_frame"] = colour_report(again)
    print("from its own key frame", json.dumps(report["from_own_key_frame"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
