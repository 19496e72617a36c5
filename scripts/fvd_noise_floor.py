"""What FVD, KVD and FVD-digits a perfect generator would score: real clips against real clips.

An ablation row is evaluated on N generated videos against the first N clips of the
moving-digits test split. Here the "generated" side is another N real test clips (clips
k*N .. (k+1)*N - 1 for k = 1..SETS, disjoint from the first N and from each other), so every
number is the floor the metric has at this N, and its spread across the sets is how much a
metric moves from sampling alone. Two ablation rows closer than that spread are not told apart
by that metric at that N. Prints a table and writes JSON.

    .venv/bin/python scripts/fvd_noise_floor.py --num-videos 64 --sets 4 \\
        --out docs/results/ablations/noise_floor_64.json
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

METRICS = ("fvd", "kvd", "fvd_digits")
KEYS = ("fvd", "fvd_bootstrap_std", "kvd_x1000", "fvd_digits", "fvd_digits_bootstrap_std")


def noise_floor(num_videos: int, sets: int, num_frames: int = 16, resolution: int = 32,
                channels: int = 3, extractor=None, progress: bool = True) -> dict:
    """Metrics of ``sets`` disjoint real sets against the evaluation's real set."""
    from videofusion.evaluation import compute_metrics, load_moving_digits

    size = (resolution, resolution)
    real = load_moving_digits(num_videos, num_frames, size, progress, channels=channels)
    rows = []
    with warnings.catch_warnings(record=True) as caught:  # rank-deficient covariances, as rows'
        warnings.simplefilter("always", UserWarning)
        for k in range(1, sets + 1):
            other = load_moving_digits(num_videos, num_frames, size, progress,
                                       start=k * num_videos, channels=channels)
            values = compute_metrics(real, other, METRICS, extractor=extractor,
                                     progress=progress)
            rows.append({"set": other.description, **{key: values[key] for key in KEYS}})
    summary = {key: {"median": float(np.median([r[key] for r in rows])),
                     "min": float(min(r[key] for r in rows)),
                     "max": float(max(r[key] for r in rows))} for key in KEYS}
    return {"protocol": {"real": real.description, "num_videos": num_videos,
                         "num_frames": num_frames, "resolution": list(size),
                         "channels": channels, "sets": sets},
            "sets": rows, "summary": summary,
            "warnings": sorted({str(w.message) for w in caught})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-videos", type=int, default=64, help="videos per set (as the rows)")
    parser.add_argument("--sets", type=int, default=4, help="disjoint real sets to compare")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--out", type=Path, help="JSON report")
    args = parser.parse_args()
    if args.num_videos < 2 or args.sets < 1:
        parser.error("--num-videos must be >= 2 (a covariance) and --sets >= 1")
    report = noise_floor(args.num_videos, args.sets, args.frames, args.resolution, args.channels)
    print(f"{args.num_videos} real clips vs {args.sets} disjoint sets of {args.num_videos} "
          "real clips (moving-digits test split)")
    print(f"{'metric':<28}{'median':>12}{'min':>12}{'max':>12}")
    for key, stats in report["summary"].items():
        print(f"{key:<28}" + "".join(f"{stats[s]:>12.3f}" for s in ("median", "min", "max")))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
