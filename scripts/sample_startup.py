"""Where the seconds of `videofusion sample` of one video go: start-up, loading, sampling, files.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/sample_startup.py [--model-dir DIR] [--repeats 5]
        [--steps N] [--scheduler NAME] [--guidance W] [--guidance-interval LOW HIGH] [--out FILE]

Each repeat runs, in fresh processes and alternately, (1) the whole command
``videofusion sample --class-label 3 --num-videos 1`` (wall clock from the parent, start-up
and files included; the shipped model unless ``--model-dir``), and (2) the same work stage by
stage in one process, each stage timed from inside: importing torch, then diffusers'
``UNet2DModel`` (what the base generator is), then the rest of ``videofusion.pipeline``;
loading the model; the plan (which loads the text encoder for the empty prompt of a class-only
request); sampling; writing the mp4, GIF and contact sheet. Prints medians (and ranges) over
the repeats. Stages run in the order the CLI runs them, so each import's time excludes what an
earlier one already loaded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "src/videofusion/assets/default_model"


def stages(model: str, options: argparse.Namespace) -> dict[str, float]:
    """One run, stage by stage, in this (fresh) process."""
    times, last = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        times[name] = round(now - last, 3)
        last = now

    import torch
    lap("import torch")
    from diffusers import UNet2DModel  # noqa: F401
    lap("import diffusers' UNet2DModel")
    from videofusion.pipeline import load_pipeline
    from videofusion.video_io import contact_sheet, write_gif, write_mp4
    lap("import the rest of videofusion")
    pipe = load_pipeline(model).use_scheduler(options.scheduler)
    lap("load the model")
    guidance = pipe.default_guidance if options.guidance is None else options.guidance
    plan = pipe.plan(class_labels=[3], num_inference_steps=options.steps or pipe.default_steps,
                     guidance_scale=guidance, guidance_interval=options.guidance_interval)
    lap("plan (text encoder for the empty prompt)")
    videos = pipe.generate(plan, torch.Generator().manual_seed(0), progress=False)
    lap("sample")
    with tempfile.TemporaryDirectory() as out:
        write_mp4(videos[0], Path(out) / "video_000.mp4", pipe.config.fps, 4)
        write_gif(videos[0], Path(out) / "video_000.gif", pipe.config.fps, 4)
        contact_sheet(videos, Path(out) / "contact_sheet.png", scale=2)
    lap("write mp4, GIF, contact sheet")
    return times


def sampling_options(options: argparse.Namespace) -> list[str]:
    """The sampling settings as command-line options (the same names for both commands)."""
    argv = ["--steps", str(options.steps)] if options.steps else []
    argv += ["--scheduler", options.scheduler] if options.scheduler else []
    argv += ["--guidance", str(options.guidance)] if options.guidance is not None else []
    if options.guidance_interval is not None:
        argv += ["--guidance-interval", *map(str, options.guidance_interval)]
    return argv


def whole_command(model: str, options: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "videofusion.cli", "sample", "--model-dir", model,
                   "--class-label", "3", "--num-videos", "1", "--out", str(Path(out) / "s")]
        command += sampling_options(options)
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=MODEL)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, help="default: the model's own")
    parser.add_argument("--scheduler", help="default: the model's own")
    parser.add_argument("--guidance", type=float, help="default: the model's own")
    parser.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="default: every step guided")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(stages(args.model_dir, args)))
        return
    child = [sys.executable, __file__, "--child", "--model-dir", args.model_dir]
    child += sampling_options(args)
    wholes, runs = [], []
    for _ in range(args.repeats):
        wholes.append(whole_command(args.model_dir, args))
        start = time.perf_counter()
        found = subprocess.run(child, check=True, capture_output=True, text=True).stdout
        process = time.perf_counter() - start
        runs.append({**json.loads(found.strip().splitlines()[-1]), "process": process})

    def summary(values: list[float]) -> dict[str, float]:
        return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
                "max": round(max(values), 2)}

    report = {"command": " ".join(sys.argv), "repeats": args.repeats,
              "whole `videofusion sample` command": summary(wholes),
              **{name: summary([r[name] for r in runs]) for name in runs[0]}}
    for name, value in report.items():
        if isinstance(value, dict):
            print(f"{name:45s} {value['median']:6.2f} s  ({value['min']:.2f}-{value['max']:.2f})")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
