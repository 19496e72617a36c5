"""Coherence metrics of a model folder beside the real clips' (issue: coherent videos).

    python scripts/coherence_probe.py MODEL_DIR [--real FOLDER] [--num-videos 16] [--steps 25] \
        [--out FILE] [--long-videos 4]

Samples ``--num-videos`` class-prompted and as many caption-prompted videos with the folder's
default sampler and guidance (or ``--guidance``/``--scheduler``), and prints the coherence
numbers of each set and of as many real clips. The real clips and the prompts are those of the
moving-digits test split, or with ``--real`` those of a held-out video folder (class subfolders
and caption sidecars, e.g. ``videofusion data render-dmc`` output): each sampled video gets a
real clip's class or caption. Key-frame seam and flicker apply to any video; colour, palette and
motion only to moving digits. ``--long-videos N`` adds the seam at the joins of N
class-prompted long videos (40 frames, clips of 16 overlapping by 4).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from videofusion.evaluation import (
    EvalProtocol,
    VideoSet,
    load_moving_digits,
    load_video_folder,
    sample_model,
)
from videofusion.metrics.coherence import coherence_metrics


def long_video_seam_of(args, labels: list[int], frames: int = 40, clip: int = 16,
                       overlap: int = 4) -> dict:
    import numpy as np
    import torch

    from videofusion.long_video import iter_long_video
    from videofusion.metrics.coherence import long_video_seam
    from videofusion.pipeline import load_pipeline

    pipe = load_pipeline(args.model_dir).use_scheduler(args.scheduler)
    guidance = pipe.default_guidance if args.guidance is None else args.guidance
    chunks = list(iter_long_video(pipe, frames, clip, overlap, class_labels=labels,
                                  num_inference_steps=args.steps, guidance_scale=guidance,
                                  residual_guidance_scale=args.residual_guidance,
                                  lambda_=args.lambda_, num_videos=1, progress=False,
                                  colour_anchoring=args.colour_anchoring,
                                  generator=torch.Generator().manual_seed(args.seed)))
    videos = np.concatenate(chunks, axis=1)  # (batch, frames, H, W, C)
    return {"videos": len(labels), "frames": frames, "clip_frames": clip, "overlap": overlap,
            "seam": long_video_seam(videos, clip, overlap)}


def real_clips(args, size: int) -> tuple[VideoSet, list[int], list[str] | None]:
    """The real clips at the model's size, the class label and the caption to prompt each
    sampled video with (``None``: the moving-digits test split's own captions)."""
    if args.real is None:
        real = load_moving_digits(args.num_videos, args.frames, (size, size), progress=False)
        return real, list(range(10)), None
    real = load_video_folder(args.real, args.num_videos, args.frames, (size, size), "real",
                             progress=False)
    return real, real.folder_labels, real.captions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("--real", help="a held-out video folder (default: the moving-digits test "
                                  "split)")
    p.add_argument("--num-videos", type=int, default=16)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float)
    p.add_argument("--residual-guidance", type=float, help="default: the same as --guidance")
    p.add_argument("--lambda", dest="lambda_", type=float, help="default: the trained value")
    p.add_argument("--scheduler")
    p.add_argument("--colour-anchoring", type=float, help="default: the folder's own")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--conditions", default="class,text")
    p.add_argument("--long-videos", type=int, default=0)
    p.add_argument("--out")
    args = p.parse_args()
    size = json.loads((Path(args.model_dir) / "model_index.json").read_text())["sample_size"]
    real, labels, captions = real_clips(args, size)
    digits = args.real is None
    num_videos = len(real.videos)
    report = {"model": args.model_dir, "real_set": real.description, "steps": args.steps,
              "guidance": args.guidance, "residual_guidance": args.residual_guidance,
              "lambda": args.lambda_, "scheduler": args.scheduler, "seed": args.seed,
              "colour_anchoring": args.colour_anchoring,
              "num_videos": num_videos}
    report["real"] = coherence_metrics(real.videos, digits=digits)
    print("real", json.dumps(report["real"]))
    for condition in args.conditions.split(","):
        if condition == "class" and min(labels) < 0:
            raise SystemExit(f"{args.real}: no class subfolders to prompt a class with; pass "
                             "--conditions text")
        start = time.perf_counter()
        protocol = EvalProtocol(num_videos=num_videos, num_frames=args.frames, seed=args.seed,
                                num_inference_steps=args.steps, guidance_scale=args.guidance,
                                residual_guidance_scale=args.residual_guidance,
                                lambda_=args.lambda_, colour_anchoring=args.colour_anchoring,
                                condition=condition, scheduler=args.scheduler,
                                class_labels=labels)
        fake = sample_model(args.model_dir, protocol, "cpu", progress=False,
                            captions=captions).videos
        report[condition] = coherence_metrics(fake, digits=digits)
        report[condition]["seconds"] = round(time.perf_counter() - start, 1)
        print(condition, json.dumps(report[condition]))
    if args.long_videos:
        report["long_video"] = long_video_seam_of(
            args, [labels[i % len(labels)] for i in range(args.long_videos)])
        print("long video", json.dumps(report["long_video"]))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
