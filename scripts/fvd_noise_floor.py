"""What FVD, KVD and FVD-digits a perfect generator would score: real clips against real clips.

An ablation row is evaluated on N generated videos against the first N clips of the
moving-digits test split. Here the "generated" side is another N real test clips (clips
k*N .. (k+1)*N - 1 for k = 1..SETS, disjoint from the first N and from each other), so every
number is the floor the metric has at this N, and its spread across the sets is how much a
metric moves from sampling alone. Two ablation rows closer than that spread are not told apart
by that metric at that N. Prints a table and writes JSON.

    .venv/bin/python scripts/fvd_noise_floor.py --num-videos 64 --sets 4 \\
        --out docs/results/ablations/noise_floor_64.json

Folders of videos instead (``--real FOLDER --other FOLDER [FOLDER ...]``): N videos of the
real folder, the set the rows are evaluated against (read as ``videofusion.evaluation`` reads a
real folder: round-robin over its class folders), against N of each other folder read the same
way, disjoint real sets of the same data. FVD, its bootstrap spread and KVD; no digit metrics.
The physics model's two real sets (scripts/train_physics.py: held_out and floor, 258 renders
each from other seeds), at the N of its ablation rows:

    .venv/bin/python scripts/fvd_noise_floor.py --real runs/physics/data/held_out \\
        --other runs/physics/data/floor --num-videos 256 \\
        --out docs/results/ablations/physics_64/noise_floor_256.json

Frames are read at the folder's own size (the physics renders: 64x64, the size the rows'
samples are decoded to) unless ``--resolution`` is given; ``--frames`` as the rows' (16).
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
FOLDER_METRICS = ("fvd", "kvd")  # the digit metrics need moving digits
FOLDER_KEYS = ("fvd", "fvd_bootstrap_std", "kvd_x1000")


def _summary(rows: list[dict], keys: tuple[str, ...]) -> dict:
    return {key: {"median": float(np.median([r[key] for r in rows])),
                  "min": float(min(r[key] for r in rows)),
                  "max": float(max(r[key] for r in rows))} for key in keys}


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
    return {"protocol": {"real": real.description, "num_videos": num_videos,
                         "num_frames": num_frames, "resolution": list(size),
                         "channels": channels, "sets": sets},
            "sets": rows, "summary": _summary(rows, KEYS),
            "warnings": sorted({str(w.message) for w in caught})}


def folder_noise_floor(real: str | Path, others: list[str | Path], num_videos: int,
                       num_frames: int = 16, resolution: int | None = None, extractor=None,
                       progress: bool = True) -> dict:
    """FVD and KVD of each folder in ``others`` against ``num_videos`` of ``real``, read by
    ``videofusion.evaluation.load_video_folder`` (the loader of ``evaluate(real=...)``, in its
    default class-balanced order): at ``resolution`` or the real folder's own size, every other
    folder at the real set's."""
    from videofusion.choices import DEFAULT_FOLDER_ORDER
    from videofusion.evaluation import compute_metrics, load_video_folder

    size = None if resolution is None else (resolution, resolution)
    real_set = load_video_folder(real, num_videos, num_frames, size, "real", progress)
    size = real_set.videos.shape[2:4]
    rows, notes = [], []
    with warnings.catch_warnings(record=True) as caught:  # rank-deficient covariances, as rows'
        warnings.simplefilter("always", UserWarning)
        for folder in others:
            other = load_video_folder(folder, num_videos, num_frames, size, "other", progress)
            values = compute_metrics(real_set, other, FOLDER_METRICS, extractor=extractor,
                                     progress=progress)
            rows.append({"set": other.description, "num_videos": len(other.videos),
                         **{key: values[key] for key in FOLDER_KEYS}})
            notes += [f"{s.description}: {len(s.videos)} readable videos of num_videos="
                      f"{num_videos}" for s in (real_set, other) if len(s.videos) < num_videos]
            notes += [f"{path}: skipped ({reason})" for path, reason in other.skipped]
    notes += [f"{path}: skipped ({reason})" for path, reason in real_set.skipped]
    return {"protocol": {"real": real_set.description, "num_videos": num_videos,
                         "folder_order": DEFAULT_FOLDER_ORDER,
                         "num_real": len(real_set.videos), "num_frames": num_frames,
                         "resolution": [int(v) for v in size], "sets": len(rows)},
            "sets": rows, "summary": _summary(rows, FOLDER_KEYS),
            "warnings": sorted({str(w.message) for w in caught} | set(notes))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-videos", type=int, default=64, help="videos per set (as the rows)")
    parser.add_argument("--sets", type=int, default=4,
                        help="disjoint real sets to compare (moving digits)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--resolution", type=int,
                        help="frame side (default: 32 for moving digits, a folder's own size)")
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3),
                        help="moving digits only")
    parser.add_argument("--real", help="a folder of videos: the evaluation's real set "
                                       "(default: the moving-digits test split)")
    parser.add_argument("--other", nargs="+", help="with --real: folders of other real videos "
                                                   "of the same data, each a set compared")
    parser.add_argument("--out", type=Path, help="JSON report")
    args = parser.parse_args()
    if args.num_videos < 2 or args.sets < 1:
        parser.error("--num-videos must be >= 2 (a covariance) and --sets >= 1")
    if (args.real is None) != (args.other is None):
        parser.error("--real and --other go together: a real folder and the folders compared "
                     "with it")
    if args.real is not None:
        missing = [f for f in [args.real, *args.other] if not Path(f).is_dir()]
        if missing:
            parser.error(f"not a folder: {', '.join(missing)}")
        report = folder_noise_floor(args.real, args.other, args.num_videos, args.frames,
                                    args.resolution)
        print(f"{args.num_videos} real videos of {args.real} vs the first {args.num_videos} "
              f"of {', '.join(args.other)}")
    else:
        report = noise_floor(args.num_videos, args.sets, args.frames, args.resolution or 32,
                             args.channels)
        print(f"{args.num_videos} real clips vs {args.sets} disjoint sets of {args.num_videos} "
              "real clips (moving-digits test split)")
    print(f"{'metric':<28}{'median':>12}{'min':>12}{'max':>12}")
    for key, stats in report["summary"].items():
        print(f"{key:<28}" + "".join(f"{stats[s]:>12.3f}" for s in ("median", "min", "max")))
    for note in report["warnings"]:
        print(f"note: {note}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
