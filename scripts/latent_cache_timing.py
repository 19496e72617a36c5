"""Seconds per training step in pixel space, in latent space encoding every batch with the VAE,
and in latent space reading the latent cache (docs/training.md, "Latent cache").

    OMP_NUM_THREADS=1 python scripts/latent_cache_timing.py [--steps 6] [--out DIR]

``configs/moving_digits_small.yaml``'s model and batch (8 clips of 16 frames at 32x32, output
size the same all three ways) for ``--steps`` stage-1 and ``--steps`` stage-2 steps each way.
The VAE is ``train-vae``'s shape of docs/training.md (block channels 32,64,64: factor 4, 4
latent channels), randomly initialised: a step's time does not depend on its weights. Prints the
median seconds per step of each stage (the first step of each stage left out) and how long
building the cache took; each clip is seen once here, so the build costs what on-the-fly
encoding saves in this short run, and pays off from the second epoch on.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from videofusion.config import TrainConfig
from videofusion.latent_cache import prepare
from videofusion.train import train
from videofusion.training_report import read_log
from videofusion.training_setup import training_set
from videofusion.vae import build_vae

ROOT = Path(__file__).resolve().parents[1]


def step_seconds(run: Path, stage: str) -> float:
    """Median seconds per step of ``stage``, from the cumulative seconds of ``metrics.jsonl``."""
    records = read_log(run / "metrics.jsonl")
    seconds = [0.0] + [r["seconds"] for r in records]
    steps = [b - a for a, b, r in zip(seconds, seconds[1:], records, strict=False)
             if r["stage"] == stage]
    return statistics.median(steps[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="steps of each stage, each way")
    parser.add_argument("--out", help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="latent_cache_timing-"))
    torch.manual_seed(0)
    build_vae(3, 4, [32, 64, 64], sample_size=32).save_pretrained(out / "vae")
    base = TrainConfig.from_yaml(ROOT / "configs" / "moving_digits_small.yaml").replace({
        "base_pretrain_steps": args.steps, "max_steps": args.steps, "lr_warmup_steps": 1,
        "data_options": {"length": 8 * 2 * args.steps}, "checkpoint_every": 10 ** 6,
        "sample_every": 10 ** 6, "sample_num": 1, "sample_steps": 1, "log_every": 1})
    ways = {"pixels": {}, "VAE encoding every batch": {"vae": str(out / "vae")},
            "latent cache": {"vae": str(out / "vae"), "latent_cache": str(out / "cache")}}
    rows, build = [], None
    for name, settings in ways.items():
        config = base.replace({**settings, "output_dir": str(out / name.split()[0])}).validate()
        if config.latent_cache:
            from videofusion.vae import load_vae

            vae = load_vae(config.vae).eval()
            started = time.perf_counter()
            _, found = prepare(config.latent_cache, training_set(config), vae,
                               slice_size=config.vae_slice)
            build = (time.perf_counter() - started, found.encoded)
        train(config)
        run = Path(config.output_dir)
        rows.append((name, step_seconds(run, "image"), step_seconds(run, "joint")))
    print(f"{args.steps} + {args.steps} steps each, batch 8 x 16 frames x 32x32, "
          f"torch threads {torch.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.1f} at the end\n")
    print("| training | stage 1 (image), s/step | stage 2 (joint), s/step |")
    print("|---|---|---|")
    for name, image, joint in rows:
        print(f"| {name} | {image:.3f} | {joint:.3f} |")
    print(f"\nbuilding the cache: {build[0]:.1f} s for {build[1]} clips "
          f"({build[0] / build[1]:.3f} s per clip of 16 frames)")


if __name__ == "__main__":
    main()
