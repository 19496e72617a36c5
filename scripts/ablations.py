"""The paper's ablations at CPU scale (RQ1-RQ4, ``videofusion.experiments``), resumable.

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
TEST_FOLDER`` runs the same rows on a video folder and evaluates FVD / KVD / IS and the
coherence numbers against the held-out folder (the digit metrics need moving digits).

The physics model (RQ1 in latent space): ``--recipe-dir runs/physics`` takes the folders that
``scripts/train_physics.py`` made there (its render, held-out, vae and cache stages): ``--data
DIR/data/train``, ``--real DIR/data/held_out``, ``--vae DIR/vae``, ``--latent-cache
DIR/latents`` (each flag still wins). Every row trains on the latent cache at the same budget,
and its pipeline folder holds the VAE, so the evaluation samples latents and decodes them before
FVD / KVD meet the held-out renders; a text-conditioned model is prompted with the held-out
clips' captions (their .txt sidecars). Three training seeds:

    python scripts/ablations.py --config configs/physics_64.yaml --recipe-dir runs/physics \
        --rows vdm,vf_lambda_0.5 --num-videos 256 --seed 0     # then --seed 1, --seed 2

The VDM row over that config is its parameter-matched baseline: ``--model vdm`` takes the
config's key-frame settings as those of the VideoFusion model it is sized against, not as its
own (it has no key frame; ``TrainConfig.key_frame_settings``, docs/training.md).

Re-running continues where it stopped: finished rows are skipped, unfinished ones resume from
their latest checkpoint; a larger ``--steps`` extends every row (stage 2 runs to the new total).
The rows, the comparisons and the tables are ``videofusion.experiments``'; this script runs them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from videofusion.choices import CONDITIONS, SCHEDULERS
from videofusion.experiments import (
    ABLATIONS,
    DIGIT_METRICS,
    VIDEO_METRICS,
    Row,
    write_seed_summary,
    write_table,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "moving_digits_ablations.yaml"
EVALUATING = threading.Lock()

# script flag -> `videofusion train` setting, passed on only when given
OVERRIDES = {"data": "data", "frames": "frames", "resolution": "resolution",
             "condition": "condition", "vae": "vae", "latent_cache": "latent-cache",
             "batch_size": "batch-size", "checkpoint_every": "checkpoint-every",
             "steps": "max-steps"}
# --recipe-dir: this script's flag -> the folder of scripts/train_physics.py's layout
RECIPE_FOLDERS = {"data": "train", "real": "held_out", "vae": "vae", "latent_cache": "latents"}


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


def recipe_folders(args) -> list[str]:
    """``--recipe-dir DIR``: the data, real set, VAE and latent cache flags not given, from the
    folders ``scripts/train_physics.py`` makes under DIR; the ones that must already exist and
    do not (the cache need not: the first run builds it)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_physics import folders

    where = folders(args.recipe_dir)
    for name, folder in RECIPE_FOLDERS.items():
        if getattr(args, name) is None:
            setattr(args, name, str(where[folder]))
    return [f"--{name.replace('_', '-')} {getattr(args, name)}" for name in ("data", "real", "vae")
            if not Path(getattr(args, name)).is_dir()]


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


def run_row(args, row: Row) -> dict:
    """Train the row (from the shared stage 1 if it is ``pretrained``), evaluate it and write its
    report; a row already trained and evaluated to ``--steps`` is read back."""
    out = args.runs / row.name
    steps = args.recipe.max_steps
    report_path = args.results / f"{row.name}.json"
    if report_path.is_file() and json.loads(report_path.read_text())["steps"] >= steps:
        return json.loads(report_path.read_text())
    if row.pretrained and not (out / "checkpoints").is_dir():
        shutil.copytree(args.runs / "stage1", out)
        # a deliberate branch: the row resumes stage 1 with its own settings, which --resume
        # refuses against a saved config.yaml (docs/training.md, "Safety")
        (out / "config.yaml").unlink()
    flags = row.train_flags(args.recipe.base_pretrain_steps)
    with open(args.runs / f"{row.name}.log", "a") as log:
        train(args, out, flags, log, jobs=min(args.jobs, len(args.names)))
    from videofusion.evaluation import evaluate

    started = time.perf_counter()
    options = eval_options(args)
    # rows train side by side in subprocesses but are evaluated here one at a time: loading a
    # pipeline is not thread-safe (diffusers builds models on the meta device, a process-wide
    # setting), and two at once raced into "Unsupported device type 'meta'"
    with EVALUATING:
        report = evaluate(real=args.real, fake=out / "pipeline", progress=False, **options)
    summary = json.loads((out / "train_summary.json").read_text())
    record = {"name": row.name, "question": row.question, "description": row.description,
              "steps": steps, "batch_size": args.recipe.batch_size,
              "pretrain_steps": args.recipe.base_pretrain_steps if row.pretrained else 0,
              "config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT)
                            else args.config),
              "train_flags": flags, "train_summary": summary,
              "stage1": stage_one_record(args) if row.pretrained else None,
              "eval_seconds": time.perf_counter() - started, "data": args.recipe.data,
              "vae": args.recipe.vae, "latent_cache": args.recipe.latent_cache,
              "eval_command": f"evaluate(real={str(args.real)!r}, fake='{out.name}/pipeline', "
                              + ", ".join(f"{k}={v!r}" for k, v in options.items()) + ")",
              "report": report}
    args.results.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(record, indent=2, default=str))
    return record


def eval_options(args) -> dict:
    """`videofusion.evaluation` settings shared by every row."""
    metrics = args.metrics or (DIGIT_METRICS if args.recipe.data == "moving-digits"
                               else VIDEO_METRICS)
    return {"metrics": metrics, "num_videos": args.num_videos,
            "num_frames": args.recipe.frames, "seed": args.seed,
            "num_inference_steps": args.sample_steps, "guidance_scale": args.guidance,
            "scheduler": args.scheduler, "signal_leak": args.signal_leak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ABLATIONS))
    parser.add_argument("--config", type=Path, default=CONFIG,
                        help="the recipe every row starts from (a `videofusion train` config)")
    parser.add_argument("--steps", type=int, help="stage-2 optimizer steps (default: config)")
    parser.add_argument("--pretrain-steps", type=int, help="stage-1 steps (default: config)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--frames", type=int)
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--condition", choices=CONDITIONS,
                        help="text, class+text: captions from the clips' .txt sidecars")
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
    parser.add_argument("--vae", help="train in latent space: a VAE folder (default: config)")
    parser.add_argument("--latent-cache", help="with a VAE: the training clips' latents, "
                                               "shared by every row (built once if missing)")
    parser.add_argument("--recipe-dir", type=Path,
                        help="scripts/train_physics.py's folder (runs/physics): --data, --real, "
                             "--vae and --latent-cache from its layout, unless given")
    parser.add_argument("--results", type=Path,
                        help="row JSONs and table.md (default docs/results/ablations/<config>/"
                             "seed<N>)")
    parser.add_argument("--report", action="store_true", help="only rebuild the table")
    args = parser.parse_args()
    if args.recipe_dir is not None:
        missing = recipe_folders(args)
        if missing and not args.report:
            parser.error(f"--recipe-dir {args.recipe_dir}: no folder for {', '.join(missing)} "
                         "(run scripts/train_physics.py --out DIR first: its render, held-out "
                         "and vae stages)")
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
        unknown = sorted(set(names) - set(ABLATIONS))
        if unknown:
            parser.error(f"unknown rows {unknown}; choose from {list(ABLATIONS)}")
        args.runs.mkdir(parents=True, exist_ok=True)
        if any(ABLATIONS[n].pretrained for n in names):
            stage_one(args)
        with ThreadPoolExecutor(args.jobs) as pool:
            for row in pool.map(lambda n: run_row(args, ABLATIONS[n]), names):
                print(f"{row['name']}: done", flush=True)
    print(f"wrote {write_table(args.results)}")
    summary = write_seed_summary(args.results)
    if summary is not None:
        print(f"wrote {summary}")


if __name__ == "__main__":
    main()
