"""The paper's ablations at CPU scale (issue: evaluation, RQ1-RQ4), resumable.

Every row trains with ``videofusion train --config CONFIG`` (default
configs/moving_digits_ablations.yaml) plus the row's own flags, with the same stage-2 budget
(steps x batch), then is evaluated with ``videofusion.evaluation`` against the held-out clips.
Rows whose base generator is image-pretrained share ONE stage-1 run: its checkpoint at the end
of stage 1 is copied into the row's folder and the row resumes from it with its own flags, so
they all start stage 2 from the same weights and see the same data. Rows without stage 1 (VDM,
base from scratch) get the same stage-2 budget and nothing else.

    python scripts/ablations.py                                       # train + evaluate all rows
    python scripts/ablations.py --rows vdm,vf_lambda_0.5 --jobs 2     # a subset, two at a time
    python scripts/ablations.py --seed 1                              # another seed, own folders
    python scripts/ablations.py --report                              # rebuild the table only

Each training run gets OMP_NUM_THREADS threads if set, else the cores divided among the rows
that train side by side (stage 1, which runs first and alone, gets them all). Start no other
job beside a stage 1 on all cores: a second run on one core slowed it six-fold here (3.7 s
against 0.62 s per step on 2 cores), far more than sharing the cores would explain.

Runs go to ``runs/ablations/<config>/seed<N>/``, row reports and ``table.md`` to
``docs/results/ablations/<config>/seed<N>/``; once two seeds have rows, ``seeds.md`` beside
those folders holds each row's mean over seeds. ``--steps``, ``--pretrain-steps``,
``--batch-size`` ... override the config for every row. Other data: ``--data FOLDER --real
TEST_FOLDER`` runs the same rows on a video folder and evaluates FVD / KVD / IS against the
held-out folder (the digit metrics need moving digits).

Re-running continues where it stopped: finished rows are skipped, unfinished ones resume from
their latest checkpoint; a larger ``--steps`` extends every row (stage 2 runs to the new total).
Finished rows whose digit metrics predate the foreground input (docs/metrics.md), or whose FVDs
have no bootstrap spread, are re-scored: the same videos are sampled again and only those
metrics are replaced; a row whose pipeline is gone keeps its old numbers (digit metrics from the
old input are marked 'old' in the table).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from videofusion.choices import SCHEDULERS

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "moving_digits_ablations.yaml"

# name -> (question, description, flags of `videofusion train`; "pretrained" rows share stage 1)
ROWS = {
    "vdm": ("RQ1", "VDM baseline (independent noise), matched parameters",
            {"model": "vdm", "lambda": 0.0}),
    "vf_lambda_0.5": ("RQ1/RQ3", "VideoFusion, lambda 0.5, pretrained base, stop-gradient",
                      {"lambda": 0.5, "pretrained": True}),
    "vf_lambda_0.25": ("RQ3", "VideoFusion, lambda 0.25", {"lambda": 0.25, "pretrained": True}),
    "vf_lambda_0.75": ("RQ3", "VideoFusion, lambda 0.75", {"lambda": 0.75, "pretrained": True}),
    "vf_lambda_0.9": ("RQ3", "VideoFusion, lambda 0.9 (past the paper's sweep: where FVD turns)",
                      {"lambda": 0.9, "pretrained": True}),
    "vf_base_scratch": ("RQ2", "VideoFusion, base trained from scratch (no stage 1)",
                        {"lambda": 0.5, "base-from-scratch": True}),
    "vf_frozen_base": ("RQ4", "VideoFusion, pretrained base frozen in stage 2",
                       {"lambda": 0.5, "pretrained": True, "freeze-base": True}),
    "vf_no_stop_gradient": ("RQ4", "VideoFusion, joint training without stop-gradient",
                            {"lambda": 0.5, "pretrained": True, "no-stop-gradient": True}),
}
DIGIT_METRICS = "fvd,kvd,is,content,motion,fvd_digits"
VIDEO_METRICS = "fvd,kvd,is"
# script flag -> `videofusion train` setting, passed on only when given
OVERRIDES = {"data": "data", "frames": "frames", "resolution": "resolution",
             "condition": "condition", "batch_size": "batch-size",
             "checkpoint_every": "checkpoint-every", "steps": "max-steps"}


def overrides(args) -> dict:
    """The settings given on this script's command line, as `videofusion train` flags."""
    return {OVERRIDES[k]: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}


def recipe(args):
    """The resolved training config shared by every row (the config file plus overrides)."""
    from videofusion.config import TrainConfig

    flags = {**overrides(args), "seed": args.seed, "output-dir": str(args.runs)}
    if args.pretrain_steps is not None:
        flags["base-pretrain-steps"] = args.pretrain_steps
    return TrainConfig.resolve(args.config, flags)


def threads(jobs: int) -> str:
    """Threads per training run: OMP_NUM_THREADS where the caller set it, else the cores shared
    among the runs side by side (stage 1 runs alone, so it gets them all)."""
    return os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // jobs))


def train(args, out: Path, flags: list[str], log, jobs: int) -> None:
    common = [f"--{key}={value}" for key, value in overrides(args).items()]
    cmd = [sys.executable, "-m", "videofusion.cli", "train", "--config", str(args.config),
           "--output-dir", str(out), "--resume", "--seed", str(args.seed), *common, *flags]
    env = {**os.environ, "OMP_NUM_THREADS": threads(jobs)}
    log.write(f"$ OMP_NUM_THREADS={env['OMP_NUM_THREADS']} {' '.join(cmd)}\n")
    log.flush()
    subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)


def stage_one(args) -> Path:
    """The shared image pretraining: a run stopped at the end of stage 1."""
    out = args.runs / "stage1"
    steps = args.recipe.base_pretrain_steps
    summary = out / "train_summary.json"
    # finished: skip, so that drivers started side by side do not re-export it concurrently
    if summary.is_file() and json.loads(summary.read_text())["steps"] >= steps:
        return out
    with open(args.runs / "stage1.log", "a") as log:
        train(args, out, ["--lambda", "0.5", "--base-pretrain-steps", str(steps),
                          "--stop-at-step", str(steps)], log, jobs=1)
    return out


def stage_one_record(args) -> dict:
    """What identifies the shared stage 1 a row started from: its last logged loss and a hash of
    the exported base weights. Stage 1 is re-made when its folder is lost; equal hashes say two
    rows started stage 2 from the same weights, different ones that training noise lies between."""
    out = args.runs / "stage1"
    digest = hashlib.sha256()
    for weights in sorted((out / "pipeline" / "base").glob("*.safetensors")):
        digest.update(weights.read_bytes())
    summary = json.loads((out / "train_summary.json").read_text())
    return {"steps": summary["steps"], "final_loss": summary["final_loss"],
            "base_sha256": digest.hexdigest()}


def row_flags(args, spec: dict) -> list[str]:
    pretrain = args.recipe.base_pretrain_steps if spec.get("pretrained") else 0
    flags = ["--base-pretrain-steps", str(pretrain)]
    for key, value in spec.items():
        if key == "pretrained":
            continue
        if value is True:
            flags.append(f"--{key}")
        else:
            flags += [f"--{key}", str(value)]
    return flags


def run_row(args, name: str) -> dict:
    question, description, spec = ROWS[name]
    out = args.runs / name
    steps = args.recipe.max_steps
    report_path = args.results / f"{name}.json"
    if report_path.is_file() and json.loads(report_path.read_text())["steps"] >= steps:
        return rescore(args, report_path)
    if spec.get("pretrained") and not (out / "checkpoints").is_dir():
        shutil.copytree(args.runs / "stage1", out)
        # a deliberate branch: the row resumes stage 1 with its own settings, which --resume
        # refuses against a saved config.yaml (docs/training.md, "Safety")
        (out / "config.yaml").unlink()
    with open(args.runs / f"{name}.log", "a") as log:
        train(args, out, row_flags(args, spec), log, jobs=min(args.jobs, len(args.names)))
    from videofusion.evaluation import evaluate

    started = time.perf_counter()
    options = eval_options(args)
    report = evaluate(real=args.real, fake=out / "pipeline", progress=False, **options)
    summary = json.loads((out / "train_summary.json").read_text())
    row = {"name": name, "question": question, "description": description,
           "steps": steps, "batch_size": args.recipe.batch_size,
           "pretrain_steps": args.recipe.base_pretrain_steps if spec.get("pretrained") else 0,
           "config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT)
                         else args.config),
           "train_flags": row_flags(args, spec), "train_summary": summary,
           "stage1": stage_one_record(args) if spec.get("pretrained") else None,
           "eval_seconds": time.perf_counter() - started, "data": args.recipe.data,
           "eval_command": f"evaluate(real={str(args.real)!r}, fake='{out.name}/pipeline', "
                           + ", ".join(f"{k}={v!r}" for k, v in options.items()) + ")",
           "report": report}
    args.results.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(row, indent=2, default=str))
    return row


def eval_options(args, metrics: str | None = None) -> dict:
    """`videofusion.evaluation` settings shared by every row."""
    metrics = metrics or args.metrics or (DIGIT_METRICS if args.recipe.data == "moving-digits"
                                          else VIDEO_METRICS)
    return {"metrics": metrics, "num_videos": args.num_videos,
            "num_frames": args.recipe.frames, "seed": args.seed,
            "num_inference_steps": args.sample_steps, "guidance_scale": args.guidance,
            "scheduler": args.scheduler, "signal_leak": args.signal_leak}


def _stale(row: dict) -> dict[str, str]:
    """Metrics of a finished row to measure again, and why: digit metrics from the classifier's
    old input (before it saw the foreground, docs/metrics.md), distances without a spread."""
    measured = set(row["report"]["protocol"]["metrics"])
    stale = {}
    if not _foreground(row):
        stale.update(dict.fromkeys({"content", "motion"} & measured,
                                   "digit classifier and tracker now see the foreground"))
    for metric in ("fvd", "fvd_digits"):
        if metric in measured and f"{metric}_bootstrap_std" not in row["report"]["metrics"]:
            stale[metric] = "reports now carry the bootstrap spread of the Fréchet distances"
    return stale


def rescore(args, report_path: Path) -> dict:
    """Measure a finished row's stale metrics (:func:`_stale`) again on the same videos (same
    seeds) and replace those numbers only, keeping the old ones in ``rescores``."""
    from videofusion.evaluation import evaluate

    row = json.loads(report_path.read_text())
    protocol = row["report"]["protocol"]
    stale = _stale(row)
    if not stale:
        return row
    pipeline = args.runs / row["name"] / "pipeline"
    if not pipeline.is_dir():
        print(f"{row['name']}: {pipeline} is gone, so {', '.join(sorted(stale))} stay as they "
              "are (digit metrics from the old input are marked 'old' in the table)", flush=True)
        return row
    started = time.perf_counter()
    options = eval_options(args, metrics=",".join(sorted(stale)))
    if protocol["sampling"]["num_inference_steps"] != options["num_inference_steps"] or \
            protocol["seed"] != options["seed"]:
        raise SystemExit(f"{row['name']}: evaluated with other sampling settings; re-score it "
                         "with the same --sample-steps / --seed")
    report = evaluate(real=args.real, fake=pipeline, progress=False, **options)
    old = row["report"]["metrics"]
    row.setdefault("rescores", []).append({
        "reasons": sorted(set(stale.values())), "metrics": sorted(stale),
        "seconds": time.perf_counter() - started,
        "previous": {k: old[k] for k in report["metrics"] if k in old}})
    old.update(report["metrics"])
    if "digit_metrics" in report["protocol"]:
        protocol["digit_metrics"] = report["protocol"]["digit_metrics"]
    report_path.write_text(json.dumps(row, indent=2, default=str))
    return row


def _stage_one(row: dict) -> str:
    """Which stage 1 a row started from: rows with equal hash prefixes share their weights."""
    if not row["pretrain_steps"]:
        return "-"
    if row.get("stage1") is None:
        return "not recorded"
    return row["stage1"]["base_sha256"][:8]


def _foreground(row: dict) -> bool:
    """Whether the row's digit metrics saw each frame's foreground (docs/metrics.md)."""
    return "foreground" in row["report"]["protocol"].get("digit_metrics", "")


TABLE_KEYS = (("fvd", "FVD"), ("kvd_x1000", "KVD x1000"), ("is_i3d_k400", "IS (I3D-K400)"),
              ("fvd_digits", "FVD-digits"), ("content_consistency", "content"),
              ("prompt_adherence", "prompt adherence"), ("motion_error", "motion error"))


# the paper's claims as (question, row, reference row): seeds.md shows each row minus its reference
COMPARISONS = (("RQ1", "vf_lambda_0.5", "vdm"), ("RQ2", "vf_base_scratch", "vf_lambda_0.5"),
               ("RQ3", "vf_lambda_0.25", "vf_lambda_0.5"),
               ("RQ3", "vf_lambda_0.75", "vf_lambda_0.5"),
               ("RQ3", "vf_lambda_0.9", "vf_lambda_0.5"),
               ("RQ4", "vf_frozen_base", "vf_lambda_0.5"),
               ("RQ4", "vf_no_stop_gradient", "vf_lambda_0.5"))
DIFFERENCE_KEYS = (("fvd", "FVD"), ("fvd_digits", "FVD-digits"),
                   ("content_consistency", "content"), ("prompt_adherence", "prompt adherence"))
# the digit metrics that changed with the classifier's foreground input (docs/metrics.md)
OLD_INPUT_KEYS = ("content_consistency", "prompt_adherence", "motion_error")


def _order(name: str) -> int:
    """Rows in the order of :data:`ROWS`, unknown ones last."""
    return list(ROWS).index(name) if name in ROWS else len(ROWS)


def _rows(results: Path) -> list[dict]:
    rows = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    return sorted(rows, key=lambda r: _order(r["name"]))


def _cell(metrics: dict, key: str) -> str:
    """A metric to 3 decimals, with its bootstrap spread where the report has one."""
    value = metrics.get(key)
    if not isinstance(value, (int, float)):
        return "n/a"
    spread = metrics.get(f"{key}_bootstrap_std")
    return f"{value:.3f}" + (f" ± {spread:.1f}" if isinstance(spread, (int, float)) else "")


def write_markdown(results: Path) -> Path:
    lines = ["| row | question | stage-2 steps x batch | stage-1 steps | "
             + " | ".join(label for _, label in TABLE_KEYS)
             + " | digit metrics input | stage-1 weights |",
             "|---" * (6 + len(TABLE_KEYS)) + "|"]
    for row in _rows(results):
        metrics = _flatten(row["report"])
        cells = [_cell(metrics, k) for k, _ in TABLE_KEYS]
        lines.append(f"| {row['name']} | {row['question']} | {row['steps']} x "
                     f"{row['batch_size']} | {row['pretrain_steps']} | " + " | ".join(cells)
                     + f" | {'foreground' if _foreground(row) else 'old'} | {_stage_one(row)} |")
    results.mkdir(parents=True, exist_ok=True)
    table = results / "table.md"
    table.write_text("\n".join(lines) + "\n")
    return table


def write_seed_summary(results: Path) -> Path | None:
    """``seeds.md`` beside the ``seed<N>`` folders: each row's mean over the seeds that measured
    it, the per-seed values in brackets (None while fewer than two seeds exist), then each of
    :data:`COMPARISONS` seed by seed, so that a reader sees whether a conclusion holds on every
    seed. Digit metrics from the classifier's old input are left out, and a note names whose."""
    seeds = sorted((p for p in results.parent.glob("seed*") if p.is_dir() and list(p.glob(
        "*.json"))), key=lambda p: int(p.name[4:]) if p.name[4:].isdigit() else 1 << 30)
    if len(seeds) < 2:
        return None
    measured: dict[str, dict[str, dict]] = {}
    rows: dict[str, dict[str, dict]] = {}
    left_out = []
    for folder in seeds:
        for row in _rows(folder):
            metrics = _flatten(row["report"])
            if not _foreground(row) and any(k in metrics for k in OLD_INPUT_KEYS):
                metrics = {k: v for k, v in metrics.items() if k not in OLD_INPUT_KEYS}
                left_out.append(f"{row['name']} at {folder.name}")
            measured.setdefault(row["name"], {})[folder.name] = metrics
            rows.setdefault(row["name"], {})[folder.name] = row
    lines = ["| row | seeds | " + " | ".join(label for _, label in TABLE_KEYS) + " |",
             "|---" * (2 + len(TABLE_KEYS)) + "|"]
    for name in sorted(measured, key=_order):
        per_seed = measured[name]
        cells = []
        for key, _ in TABLE_KEYS:
            values = [m[key] for m in per_seed.values() if isinstance(m.get(key), (int, float))]
            cells.append("n/a" if not values else f"{sum(values) / len(values):.3f}" + (
                " (" + ", ".join(f"{v:.3f}" for v in values) + ")" if len(values) > 1 else ""))
        lines.append(f"| {name} | {', '.join(s[4:] for s in per_seed)} | "
                     + " | ".join(cells) + " |")
    differences = []
    for question, name, reference in COMPARISONS:
        for seed in [s.name for s in seeds if s.name in rows.get(name, {})
                     and s.name in rows.get(reference, {})]:
            a, b = measured[name][seed], measured[reference][seed]
            cells = [_difference(a, b, key) for key, _ in DIFFERENCE_KEYS]
            differences.append(f"| {question} | {name} - {reference} | {seed[4:]} | "
                               + " | ".join(cells) + " | "
                               + _same_stage_one(rows[name][seed], rows[reference][seed]) + " |")
    if differences:
        lines += ["", "Each comparison the paper makes, seed by seed: the row minus its "
                  "reference, in brackets in combined bootstrap spreads (sqrt(s1^2 + s2^2)) "
                  "where both rows have one. 'same stage 1' compares the hashes of the stage-1 "
                  "weights.", "",
                  "| question | row - reference | seed | " + " | ".join(
                      label for _, label in DIFFERENCE_KEYS) + " | same stage 1 |",
                  "|---" * (4 + len(DIFFERENCE_KEYS)) + "|", *differences]
    if left_out:
        lines += ["", "Content, adherence and motion measured on the digit classifier's old input "
                  "are not comparable with later ones (docs/metrics.md) and are left out: "
                  + ", ".join(left_out) + "."]
    summary = results.parent / "seeds.md"
    summary.write_text("\n".join(lines) + "\n")
    return summary


def _difference(metrics: dict, reference: dict, key: str) -> str:
    """``metrics[key] - reference[key]``, and how many combined bootstrap spreads that is."""
    a, b = metrics.get(key), reference.get(key)
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return "n/a"
    cell = f"{a - b:+.3f}"
    spreads = [m.get(f"{key}_bootstrap_std") for m in (metrics, reference)]
    if all(isinstance(s, (int, float)) for s in spreads):
        cell += f" ({(a - b) / (spreads[0] ** 2 + spreads[1] ** 2) ** 0.5:+.1f})"
    return cell


def _same_stage_one(row: dict, reference: dict) -> str:
    """'yes' / 'no' when both rows recorded their stage-1 weights, else what is known."""
    marks = [_stage_one(row), _stage_one(reference)]
    if "-" in marks:
        return "-"
    if "not recorded" in marks:
        return "not recorded"
    return "yes" if marks[0] == marks[1] else "no"


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
    parser.add_argument("--config", type=Path, default=CONFIG,
                        help="the recipe every row starts from (a `videofusion train` config)")
    parser.add_argument("--steps", type=int, help="stage-2 optimizer steps (default: config)")
    parser.add_argument("--pretrain-steps", type=int, help="stage-1 steps (default: config)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--frames", type=int)
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--condition", choices=("none", "class"))
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--seed", type=int, default=0, help="training and sampling seed")
    parser.add_argument("--num-videos", type=int, default=64, help="videos per row's evaluation")
    parser.add_argument("--metrics", help=f"default {DIGIT_METRICS} (moving digits), "
                                          f"else {VIDEO_METRICS}")
    parser.add_argument("--sample-steps", type=int, default=25)
    parser.add_argument("--scheduler", default="ddpm", choices=SCHEDULERS,
                        help="evaluation sampler (DDPM: DDIM eta 0 leaves grainy backgrounds on "
                             "these models, docs/results.md)")
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--signal-leak", action="store_true",
                        help="sample from the noised data mean the pipelines record (default: "
                             "pure noise, spec §4, as every row measured before it existed)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--runs", type=Path, help="default runs/ablations/<config>/seed<N>")
    parser.add_argument("--data", help="'moving-digits' or a training folder of videos "
                                       "(default: config)")
    parser.add_argument("--real", help="held-out videos for evaluation (default: the "
                        "moving-digits test split; required with a folder --data)")
    parser.add_argument("--results", type=Path,
                        help="row JSONs and table.md (default docs/results/ablations/<config>/"
                             "seed<N>)")
    parser.add_argument("--report", action="store_true", help="only rebuild the table")
    args = parser.parse_args()
    tag = Path(args.config.stem) / f"seed{args.seed}"
    args.runs = args.runs or ROOT / "runs" / "ablations" / tag
    args.results = args.results or ROOT / "docs" / "results" / "ablations" / tag
    try:
        args.recipe = recipe(args)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    if args.real is None:
        if args.recipe.data != "moving-digits":
            parser.error("--real TEST_FOLDER is required with a folder --data")
        args.real = "moving-digits"
    if not args.report:
        names = args.names = [n for n in args.rows.split(",") if n]
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
    summary = write_seed_summary(args.results)
    if summary is not None:
        print(f"wrote {summary}")


if __name__ == "__main__":
    main()
