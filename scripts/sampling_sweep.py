"""Which sampling settings to ship: the digit metrics of one model over guidance scales, step
counts and samplers (content consistency, prompt adherence, motion error; no I3D, so a few
minutes per setting on one CPU core). Same seeds for every setting.

    python scripts/sampling_sweep.py [MODEL_DIR] --guidance 1,2,3 --steps 25,50 \\
        --scheduler ddpm --num-videos 32 --out sweep.json
"""

from __future__ import annotations

import argparse
import json
import time
from itertools import product
from pathlib import Path

from videofusion.choices import SCHEDULERS


def main(argv=None) -> int:
    from videofusion import DEFAULT_MODEL_DIR
    from videofusion.evaluation import evaluate

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", nargs="?", default=DEFAULT_MODEL_DIR)
    p.add_argument("--guidance", default="2", help="comma-separated guidance scales")
    p.add_argument("--steps", default="25", help="comma-separated numbers of sampling steps")
    p.add_argument("--scheduler", default="ddpm", help=f"comma-separated, of {tuple(SCHEDULERS)}")
    p.add_argument("--condition", default="class", choices=("class", "text"),
                   help="prompting of a model conditioned on both")
    p.add_argument("--num-videos", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("sampling_sweep.json"))
    args = p.parse_args(argv)
    try:
        guidance = [float(g) for g in args.guidance.split(",")]
        steps = [int(s) for s in args.steps.split(",")]
    except ValueError as err:
        p.error(f"--guidance and --steps take comma-separated numbers: {err}")
    schedulers = args.scheduler.split(",")
    if set(schedulers) - set(SCHEDULERS):
        p.error(f"--scheduler: choose from {tuple(SCHEDULERS)}")

    rows = []
    print("| scheduler | steps | guidance | content | adherence | motion error | seconds |")
    print("|---|---|---|---|---|---|---|")
    for scheduler, n, g in product(schedulers, steps, guidance):
        started = time.perf_counter()
        report = evaluate("moving-digits", args.model_dir, metrics="content,motion",
                          num_videos=args.num_videos, seed=args.seed, num_inference_steps=n,
                          guidance_scale=g, scheduler=scheduler, condition=args.condition,
                          progress=False)
        m = report["metrics"]
        rows.append({"scheduler": scheduler, "steps": n, "guidance": g,
                     "seconds": round(time.perf_counter() - started, 1), **m})
        print(f"| {scheduler} | {n} | {g} | {m['content_consistency']:.3f} | "
              f"{m['prompt_adherence']:.3f} | {m['motion_error']:.4f} | {rows[-1]['seconds']} |",
              flush=True)
        # Rewritten after every setting: a sweep stopped half-way keeps the rows it measured.
        partial = args.out.with_name(args.out.name + ".tmp")
        partial.write_text(json.dumps({"model_dir": str(args.model_dir),
                                       "condition": args.condition,
                                       "num_videos": args.num_videos, "seed": args.seed,
                                       "rows": rows}, indent=2) + "\n")
        partial.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
