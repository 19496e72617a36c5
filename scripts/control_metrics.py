"""Does the base noise carry the content? Content agreement of videos that share noise.

For one class label or prompt, samples three sets of GROUPS x PER_GROUP videos:

* ``shared_base``: the videos of a group share one base noise, their residual noises differ
  (spec §5: same content, different motion);
* ``shared_residual``: they share one residual noise, their base noises differ (same motion,
  different content);
* ``independent``: nothing shared (every video its own seed).

Each video gets a majority digit (``videofusion.metrics.digits`` classifier), a colour and a
motion class (the digit video encoder's heads, docs/metrics.md). The agreement of a property is
the share of same-group pairs of videos that agree on it, over the pairs in which both videos
show a digit (``pairs``; colour and motion of a digit-less video mean nothing); it is null when
there is no such pair. ``no_digit`` is the share of videos in which the classifier sees no digit
at all. Classifier-free, for models whose frames the classifier rejects: ``key_frame_distance``
and ``other_frames_distance``, the mean absolute pixel difference (in [0, 1]) between same-group
videos on the key frame (all base noise, spec §1) and on the other frames. Prints a table and
writes JSON.

    .venv/bin/python scripts/control_metrics.py runs/digits/pipeline --class-label 3 \\
        --groups 8 --per-group 4 --steps 25 --out control_metrics.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from videofusion.choices import SCHEDULERS

SETS = ("shared_base", "shared_residual", "independent")
PROPERTIES = ("digit", "color", "motion")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", help="a VideoFusionPipeline folder")
    p.add_argument("--class-label", type=int, help="class-conditioned models")
    p.add_argument("--prompt", help="text-conditioned models")
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--per-group", type=int, default=4)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, help="default: the model's own (default_guidance)")
    p.add_argument("--scheduler", choices=SCHEDULERS,
                   help="default: the model folder's own; with a stochastic sampler the "
                        "shared part is shared by every step's fresh noise too (FreshNoise)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="control_metrics.json")
    args = p.parse_args(argv)
    if args.groups < 1 or args.per_group < 2:
        p.error("--groups must be >= 1 and --per-group >= 2 (agreement needs pairs)")
    return args


def sample_set(pipe, kind: str, args, generator: torch.Generator) -> np.ndarray:
    """GROUPS x PER_GROUP videos ``(groups * per_group, frames, H, W, C)``, group-major."""
    side = pipe.config.sample_size // pipe.vae_scale_factor
    channels = pipe.residual.config.out_channels
    guidance = args.guidance if args.guidance is not None else pipe.default_guidance
    out = []
    for _ in range(args.groups):
        noise = {}
        if kind == "shared_base":
            draw = torch.randn((1, channels, side, side), generator=generator)
            noise["base_noise"] = draw.expand(args.per_group, -1, -1, -1)
        elif kind == "shared_residual":
            draw = torch.randn((1, channels, args.frames, side, side), generator=generator)
            noise["residual_noise"] = draw.expand(args.per_group, -1, -1, -1, -1)
        out.append(pipe(
            prompt=args.prompt,
            class_labels=None if args.class_label is None else [args.class_label],
            num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=guidance,
            num_videos=args.per_group, generator=generator, progress=False, **noise,
        ).frames)
    return np.concatenate(out)


def video_properties(videos: np.ndarray) -> dict[str, np.ndarray]:
    """Per video: majority digit (-1: none seen), colour index and motion class."""
    from videofusion.metrics.digits import (
        encoder_input,
        load_digit_video_encoder,
        majority_digits,
        predict_digits,
    )

    encoder = load_digit_video_encoder()
    with torch.inference_mode():
        heads = encoder(encoder_input(videos))
    return {"digit": majority_digits(predict_digits(videos)),
            "color": heads["color"].argmax(1).numpy(),
            "motion": heads["motion"].argmax(1).numpy()}


def agreement(values: np.ndarray, valid: np.ndarray, per_group: int) -> tuple[float | None, int]:
    """Share of same-group pairs, both ``valid``, with equal values (None if no pair), and the
    number of such pairs."""
    same = pairs = 0
    for vals, ok in zip(values.reshape(-1, per_group), valid.reshape(-1, per_group),
                        strict=True):
        for i, j in combinations(range(per_group), 2):
            if ok[i] and ok[j]:
                pairs += 1
                same += int(vals[i] == vals[j])
    return (same / pairs if pairs else None), pairs


def pair_distances(videos: np.ndarray, per_group: int) -> dict[str, float]:
    """Mean absolute difference between same-group videos ``(n, frames, H, W, C)`` in [0, 1],
    on the key frame and on the other frames."""
    key = videos.shape[1] // 2
    others = [f for f in range(videos.shape[1]) if f != key]
    key_d, other_d = [], []
    for group in videos.reshape(-1, per_group, *videos.shape[1:]):
        for i, j in combinations(range(per_group), 2):
            diff = np.abs(group[i].astype(np.float64) - group[j])
            key_d.append(diff[key].mean())
            other_d.append(diff[others].mean())
    return {"key_frame_distance": float(np.mean(key_d)),
            "other_frames_distance": float(np.mean(other_d))}


def main(argv=None) -> int:
    args = parse_args(argv)
    from videofusion.pipeline import load_pipeline

    pipe = load_pipeline(args.model_dir).use_scheduler(args.scheduler)
    generator = torch.Generator().manual_seed(args.seed)
    results = {}
    for kind in SETS:
        start = time.perf_counter()
        videos = sample_set(pipe, kind, args, generator)
        props = video_properties(videos)
        print(f"{kind}: {args.groups * args.per_group} videos in "
              f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
        has_digit = props["digit"] >= 0
        row = {}
        for name in PROPERTIES:
            row[f"{name}_agreement"], row["pairs"] = agreement(props[name], has_digit,
                                                               args.per_group)
        row["no_digit"] = float((~has_digit).mean())
        row["num_videos"] = args.groups * args.per_group
        row.update(pair_distances(videos, args.per_group))
        results[kind] = row
    report = {"model_dir": str(args.model_dir), "class_label": args.class_label,
              "prompt": args.prompt, "groups": args.groups, "per_group": args.per_group,
              "frames": args.frames, "steps": args.steps,
              "scheduler": type(pipe.scheduler).__name__, "seed": args.seed, "sets": results}
    def cell(value):
        return f"{'n/a':>7}" if value is None else f"{value:>7.3f}"

    print(f"{'set':<16} {'digit':>7} {'colour':>7} {'motion':>7} {'pairs':>6} {'no digit':>9} "
          f"{'key d':>7} {'other d':>7}")
    for kind, row in results.items():
        print(f"{kind:<16} {cell(row['digit_agreement'])} {cell(row['color_agreement'])} "
              f"{cell(row['motion_agreement'])} {row['pairs']:>6} {row['no_digit']:>9.3f} "
              f"{row['key_frame_distance']:>7.3f} {row['other_frames_distance']:>7.3f}")
    print(f"(agreement: share of same-group pairs, both showing a digit, that agree; d: mean "
          f"abs pixel difference of same-group pairs; {args.groups} groups x {args.per_group} "
          "videos per set)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
