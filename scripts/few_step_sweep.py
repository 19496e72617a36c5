"""Few-step sampling of one model: steps vs quality vs seconds, against a reference setting.

    python scripts/few_step_sweep.py [MODEL_DIR] --settings ddpm:25,dpm:8,unipc:8 \\
        --num-videos 32 --out few_step.json

The first setting is the reference, or with ``--reference FILE`` the first row of an earlier
sweep of the same protocol (number of videos, seed, conditions): a guidance-distilled student
(``videofusion train --distill-from ... --distill-kind guidance``) is swept as MODEL_DIR with
``--guidance 1`` against its teacher's sweep. ``--student DIR`` (repeatable) adds a distilled
folder, sampled as it records: its own scheduler, its step count and guidance 1, its guidance
being folded in. Every setting samples the same seeds, class-prompted and
caption-prompted, and is scored with `videofusion eval`'s FVD (with its bootstrap spread), the
digit metrics (content consistency, prompt adherence) and the coherence metrics. A setting
holds quality when each metric is within 5 % of the reference's or within the reference's
bootstrap spread over its videos, the larger of the two (``videofusion.metrics.bootstrap``).
Seconds per video are the median of ``--repeats`` single-video calls of the loaded pipeline at
the current thread count, after one warm-up call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

# metric -> whether larger is better (None: closer to the real clips' value is better)
METRICS = {"fvd": False, "content_consistency": True, "prompt_adherence": True,
           "key_frame_seam": None, "flicker": None, "colour_deviation": False,
           "colour_spread": False, "jerk": False, "worst_jerk": False,
           "palette_coverage": True}


def parse_settings(text: str) -> list[tuple[str, int]]:
    settings = []
    for item in text.split(","):
        name, _, steps = item.partition(":")
        settings.append((name, int(steps)))
    return settings


def seconds_per_video(pipe, scheduler: str | None, steps: int, guidance: float,
                      repeats: int, residual_guidance: float | None = None,
                      colour_anchoring: float | None = None,
                      guidance_interval: tuple[float, float] | None = None) -> float:
    pipe.use_scheduler(scheduler)
    kwargs = {"class_labels": [3], "num_inference_steps": steps, "guidance_scale": guidance,
              "residual_guidance_scale": residual_guidance, "colour_anchoring": colour_anchoring,
              "guidance_interval": guidance_interval}
    pipe(**kwargs, generator=torch.Generator().manual_seed(0))  # warm-up
    times = []
    for seed in range(repeats):
        start = time.perf_counter()
        pipe(**kwargs, generator=torch.Generator().manual_seed(seed))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def holds(metric: str, value: float, reference: float, spread: float | None,
          real: float | None) -> bool:
    """Within 5 % of the reference (or its bootstrap spread), or better than it."""
    if value is None or reference is None:
        return False
    margin = max(0.05 * abs(reference), spread or 0.0)
    better = METRICS[metric]
    if better is None and real is not None:  # distance to the real clips' value
        return abs(value - real) <= abs(reference - real) + margin
    if better is True:
        return value >= reference - margin
    if better is False:
        return value <= reference + margin
    return abs(value - reference) <= margin


def main(argv=None) -> int:
    from videofusion import DEFAULT_MODEL_DIR
    from videofusion.evaluation import evaluate
    from videofusion.pipeline import load_pipeline

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", nargs="?", default=DEFAULT_MODEL_DIR)
    p.add_argument("--settings", default="ddpm:25,dpm:6,dpm:8,dpm:10,unipc:6,unipc:8,unipc:10",
                   help="comma-separated scheduler:steps; the first is the reference")
    p.add_argument("--student", action="append", default=[], metavar="DIR",
                   help="a distilled folder, sampled with its own scheduler, steps and guidance")
    p.add_argument("--guidance", type=float, help="default: the model's")
    p.add_argument("--residual-guidance", type=float,
                   help="the residual generator's own guidance (default: --guidance)")
    p.add_argument("--colour-anchoring", type=float,
                   help="of MODEL_DIR's settings (default: the folder's own)")
    p.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="of MODEL_DIR's settings: guide only the steps whose sigma_t lies in "
                        "[LOW, HIGH] (default: every step)")
    p.add_argument("--conditions", default="class,text")
    p.add_argument("--num-videos", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference", type=Path, metavar="FILE",
                   help="an earlier sweep's JSON whose first row is the reference")
    p.add_argument("--out", type=Path, default=Path("few_step.json"))
    args = p.parse_args(argv)
    earlier = None
    if args.reference is not None:
        earlier = json.loads(args.reference.read_text())
        for key in ("num_videos", "seed"):
            if earlier[key] != getattr(args, key):
                p.error(f"--reference: {args.reference} has {key} {earlier[key]}, this sweep "
                        f"{getattr(args, key)}")
        missing = set(args.conditions.split(",")) - set(earlier["rows"][0])
        if missing:
            p.error(f"--reference: {args.reference} has no {', '.join(sorted(missing))} rows")
    pipe = load_pipeline(args.model_dir)
    guidance = pipe.default_guidance if args.guidance is None else args.guidance
    # (model folder, its pipeline, scheduler or None for the folder's own, steps, guidance)
    settings = [(args.model_dir, pipe, scheduler, steps, guidance)
                for scheduler, steps in parse_settings(args.settings)]
    for folder in args.student:
        student = load_pipeline(folder)
        settings.append((folder, student, None, student.default_steps, 1.0))
    rows = []
    for folder, model, scheduler, steps, scale in settings:
        residual = None if model is not pipe else args.residual_guidance
        anchoring = None if model is not pipe else args.colour_anchoring
        interval = None if model is not pipe else args.guidance_interval
        row = {"model": str(folder), "scheduler": scheduler or "own", "steps": steps,
               "guidance": scale, "residual_guidance": residual, "colour_anchoring": anchoring,
               "guidance_interval": interval,
               "threads": torch.get_num_threads(),
               "seconds_per_video": round(seconds_per_video(model, scheduler, steps, scale,
                                                            args.repeats, residual, anchoring,
                                                            interval),
                                          3)}
        for condition in args.conditions.split(","):
            report = evaluate("moving-digits", folder, metrics="fvd,content,coherence",
                              num_videos=args.num_videos, num_inference_steps=steps,
                              scheduler=scheduler, guidance_scale=scale,
                              residual_guidance_scale=residual, condition=condition,
                              colour_anchoring=anchoring, guidance_interval=interval,
                              seed=args.seed, progress=False)
            row[condition] = report["metrics"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    reference = rows[0] if earlier is None else earlier["rows"][0]
    for row in rows:
        for condition in args.conditions.split(","):
            got, ref = row[condition], reference[condition]
            row[condition]["holds"] = {
                m: holds(m, got.get(m), ref.get(m), ref.get(f"{m}_bootstrap_std"),
                         ref.get(f"{m}_real"))
                for m in METRICS if m in got and m in ref}  # an older reference may lack one
        row["holds_all"] = all(all(row[c]["holds"].values())
                               for c in args.conditions.split(","))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": str(args.model_dir), "guidance": guidance,
                                    "num_videos": args.num_videos, "seed": args.seed,
                                    "reference": None if earlier is None else {
                                        "file": str(args.reference),
                                        **{k: reference[k] for k in ("model", "scheduler",
                                                                     "steps", "guidance")}},
                                    "rows": rows}, indent=2) + "\n")
    print(f"{'setting':<10} {'s/video':>8} holds  model")
    for row in rows:
        print(f"{row['scheduler']}:{row['steps']:<5} {row['seconds_per_video']:>8.3f} "
              f"{row['holds_all']!s:<6} {row['model']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
