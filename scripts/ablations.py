"""The paper's ablations at CPU scale (issue: evaluation, RQ1-RQ4), resumable.

Every row trains on moving digits with the same stage-2 budget (steps x batch), then is evaluated
with ``videofusion.evaluate`` against the moving-digits test split. Rows whose base generator is
image-pretrained share ONE stage-1 run: its checkpoint at the end of stage 1 is copied into the
row's folder and the row resumes from it with its own flags, so they all start stage 2 from the
same weights and see the same data.

    python scripts/ablations.py --steps 2000 --batch-size 4          # train + evaluate all rows
    python scripts/ablations.py --rows vdm,vf_lambda_0.5 --jobs 2     # a subset, two at a time
    python scripts/ablations.py --report                              # rebuild docs/results.md

Other data: ``--data FOLDER --real TEST_FOLDER --results docs/results/NAME`` runs the same rows on
a video folder (e.g. rendered DeepMind Control clips) and evaluates FVD / KVD / IS against the
held-out folder (the digit metrics need moving digits).

Re-running continues where it stopped: finished rows are skipped, unfinished ones resume from
their latest checkpoint; a larger ``--steps`` extends every row (stage 2 runs to the new total).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"

# name -> (question, description, flags of `videofusion train`; "pretrained" rows share stage 1)
ROWS = {
    "vdm": ("RQ1", "VDM baseline (independent noise), matched parameters",
            {"model": "vdm", "lambda": 0.0}),
    "vf_lambda_0.5": ("RQ1/RQ3", "VideoFusion, lambda 0.5, pretrained base, stop-gradient",
                      {"lambda": 0.5, "pretrained": True}),
    "vf_lambda_0.25": ("RQ3", "VideoFusion, lambda 0.25", {"lambda": 0.25, "pretrained": True}),
    "vf_lambda_0.75": ("RQ3", "VideoFusion, lambda 0.75", {"lambda": 0.75, "pretrained": True}),
    "vf_base_scratch": ("RQ2", "VideoFusion, base trained from scratch (no stage 1)",
                        {"lambda": 0.5, "base-from-scratch": True}),
    "vf_frozen_base": ("RQ4", "VideoFusion, pretrained base frozen in stage 2",
                       {"lambda": 0.5, "pretrained": True, "freeze-base": True}),
    "vf_no_stop_gradient": ("RQ4", "VideoFusion, joint training without stop-gradient",
                            {"lambda": 0.5, "pretrained": True, "no-stop-gradient": True}),
}
DIGIT_METRICS = "fvd,kvd,is,content,motion,fvd_digits"
VIDEO_METRICS = "fvd,kvd,is"


def common_flags(args) -> list[str]:
    return [
        "--data", args.data, "--frames", str(args.frames),
        "--resolution", str(args.resolution), "--condition", args.condition,
        "--batch-size", str(args.batch_size), "--seed", str(args.seed),
        "--learning-rate", "5e-4", "--lr-warmup-steps", "100", "--ema-decay", "0.999",
        "--checkpoint-every", str(args.checkpoint_every), "--sample-every", str(args.steps),
    ]


def train(args, out: Path, flags: list[str], log) -> None:
    cmd = [sys.executable, "-m", "videofusion.cli", "train", "--output-dir", str(out),
           "--resume", *common_flags(args), *flags]
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)


def stage_one(args) -> Path:
    """The shared image pretraining: a run stopped at the end of stage 1."""
    out = args.runs / "stage1"
    with open(args.runs / "stage1.log", "a") as log:
        train(args, out, ["--lambda", "0.5", "--base-pretrain-steps", str(args.pretrain_steps),
                          "--max-steps", str(args.steps),
                          "--stop-at-step", str(args.pretrain_steps)], log)
    return out


def row_flags(args, spec: dict) -> list[str]:
    flags = ["--max-steps", str(args.steps)]
    for key, value in spec.items():
        if key == "pretrained":
            flags += ["--base-pretrain-steps", str(args.pretrain_steps)]
        elif value is True:
            flags.append(f"--{key}")
        else:
            flags += [f"--{key}", str(value)]
    return flags


def run_row(args, name: str) -> dict:
    question, description, spec = ROWS[name]
    out = args.runs / name
    report_path = args.results / f"{name}.json"
    if report_path.is_file() and json.loads(report_path.read_text())["steps"] >= args.steps:
        return json.loads(report_path.read_text())
    if spec.get("pretrained") and not (out / "checkpoints").is_dir():
        shutil.copytree(args.runs / "stage1", out)
    with open(args.runs / f"{name}.log", "a") as log:
        train(args, out, row_flags(args, spec), log)
    from videofusion.evaluate import evaluate

    started = time.perf_counter()
    metrics = DIGIT_METRICS if args.data == "moving-digits" else VIDEO_METRICS
    report = evaluate(real=args.real, fake=out / "pipeline", metrics=metrics,
                      num_videos=args.num_videos, num_frames=args.frames, seed=args.seed,
                      num_inference_steps=args.sample_steps, guidance_scale=args.guidance,
                      progress=False)
    summary = json.loads((out / "train_summary.json").read_text())
    row = {"name": name, "question": question, "description": description,
           "steps": args.steps, "batch_size": args.batch_size,
           "pretrain_steps": args.pretrain_steps if spec.get("pretrained") else 0,
           "train_summary": summary, "eval_seconds": time.perf_counter() - started,
           "data": args.data,
           "eval_command": (f"evaluate(real='{args.real}', fake='{out}/pipeline', "
                            f"metrics='{metrics}', num_videos={args.num_videos}, "
                            f"num_inference_steps={args.sample_steps}, "
                            f"guidance_scale={args.guidance}, seed={args.seed})"),
           "report": report}
    args.results.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(row, indent=2, default=str))
    return row


def write_markdown(results: Path) -> Path:
    rows = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    rows.sort(key=lambda r: list(ROWS).index(r["name"]) if r["name"] in ROWS else 99)
    keys = [("fvd", "FVD"), ("kvd_x1000", "KVD x1000"), ("is_i3d_k400", "IS (I3D-K400)"),
            ("fvd_digits", "FVD-digits"), ("content_consistency", "content"),
            ("prompt_adherence", "prompt adherence"), ("motion_error", "motion error")]
    lines = ["| row | question | stage-2 steps x batch | stage-1 steps | "
             + " | ".join(label for _, label in keys) + " |",
             "|---" * (4 + len(keys)) + "|"]
    for row in rows:
        metrics = _flatten(row["report"])
        cells = [f"{metrics[k]:.3f}" if isinstance(metrics.get(k), (int, float)) else "n/a"
                 for k, _ in keys]
        lines.append(f"| {row['name']} | {row['question']} | {row['steps']} x "
                     f"{row['batch_size']} | {row['pretrain_steps']} | " + " | ".join(cells) + " |")
    table = results / "table.md"
    table.write_text("\n".join(lines) + "\n")
    return table


def _flatten(report: dict) -> dict:
    flat = {}
    for key, value in report.items():
        if isinstance(value, dict):
            flat.update({k: v for k, v in _flatten(value).items() if k not in flat})
        else:
            flat[key] = value
    return flat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--steps", type=int, default=2000, help="stage-2 optimizer steps")
    parser.add_argument("--pretrain-steps", type=int, default=1000, help="stage-1 steps")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--num-videos", type=int, default=100)
    parser.add_argument("--sample-steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "ablations")
    parser.add_argument("--data", default="moving-digits",
                        help="'moving-digits' or a training folder of videos")
    parser.add_argument("--real", help="held-out videos for evaluation (default: the "
                        "moving-digits test split; required with a folder --data)")
    parser.add_argument("--condition", default="class", choices=("none", "class"))
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="where the row JSONs and table.md go")
    parser.add_argument("--report", action="store_true", help="only rebuild the table")
    args = parser.parse_args()
    if args.real is None:
        if args.data != "moving-digits":
            parser.error("--real TEST_FOLDER is required with a folder --data")
        args.real = "moving-digits"
    if not args.report:
        names = [n for n in args.rows.split(",") if n]
        unknown = sorted(set(names) - set(ROWS))
        if unknown:
            parser.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
        args.runs.mkdir(parents=True, exist_ok=True)
        if any(ROWS[n][2].get("pretrained") for n in names):
            stage_one(args)
        with ThreadPoolExecutor(args.jobs) as pool:
            for row in pool.map(lambda n: run_row(args, n), names):
                print(f"{row['name']}: done", flush=True)
    print(f"wrote {write_markdown(args.results)}")


if __name__ == "__main__":
    main()
