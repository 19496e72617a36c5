"""The shipped physics model in one resumable command: render, VAE, latent cache, train, bundle.

    python scripts/train_physics.py            # hours on a CPU; the same command continues it
    python scripts/train_physics.py --smoke    # the whole chain with tiny numbers, in a temp folder

Stages, run in order, each skipped once its output is complete, so re-running the same command
after an interruption (Ctrl-C, a reboot) continues where it stopped; the stages that train
resume from their last checkpoint:

1. ``render``: training clips, ``videofusion data render-dmc`` into OUT/data/train;
2. ``held-out``: the same domains with another render seed into OUT/data/held_out, at least
   ``--held-out-videos`` clips spread evenly over the domains, never trained on: the real set
   of FVD / KVD and of the coherence metrics;
3. ``floor``: as many again with a third seed into OUT/data/floor: the second real set of the
   real-vs-real floor at that size (a folder of its own, so that both sets hold every domain);
4. ``vae``: ``videofusion train-vae`` on the training clips' frames into OUT/vae;
5. ``cache``: ``videofusion data cache-latents``: the training clips' latents into OUT/latents
   (complete when its ``--check`` finds nothing to encode);
6. ``train``: ``videofusion train --config configs/physics_64.yaml ... --resume`` into OUT/run
   (class = domain, caption = the clip's sidecar);
7. ``bundle``: ``scripts/bundle_model.py``: fp16, VAE included, into the package's folder of the
   ``physics`` model (``videofusion.assets``; ``--target`` elsewhere), refused over 50 MB;
8. ``samples``: ``videofusion sample`` from the bundle, one video per domain, into OUT/samples.

The settings of the data and the VAE are ``Recipe``'s fields, those of the model and its
training are the config's (``--frames``, ``--resolution``, ``--steps``, ``--pretrain-steps``,
``--batch-size``, ``--seed`` override it); every one is a flag. The commands, exactly as run,
are written to OUT/commands.txt before the first stage; the model card quotes them.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

from videofusion.assets import SHIPPED_MODELS
from videofusion.config import TrainConfig
from videofusion.data.dmc import DEFAULT_DOMAINS, DEFAULT_TASKS, DomainTask

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "physics_64.yaml"  # under configs/
MODEL = "physics"  # its name in videofusion.assets.SHIPPED_MODELS
# this script's flag -> the `videofusion train` flag it sets over the config
CONFIG_FLAGS = {"--frames": "--frames", "--resolution": "--resolution", "--steps": "--max-steps",
                "--pretrain-steps": "--base-pretrain-steps", "--batch-size": "--batch-size",
                "--seed": "--seed"}


@dataclass(frozen=True)
class Recipe:
    """Every setting of the recipe that the training config does not hold."""

    out: Path = Path("runs/physics")
    domains: tuple[str, ...] = DEFAULT_DOMAINS
    train_clips: int = 500  # per domain
    held_out_videos: int = 256  # per real set (held-out, floor), spread evenly over the domains
    render_seed: int = 0
    held_out_seed: int = 1  # other seeds: other initial states and actions, no clip shared
    floor_seed: int = 2
    workers: int = 1  # render processes
    vae_steps: int = 3000
    vae_batch_size: int = 16  # frames per step
    vae_channels: str = "32,64,64"  # f = 4: 64x64 frames -> 16x16 latents
    vae_seed: int = 0
    train: tuple[str, ...] = ()  # `videofusion train` flags over the config's values
    target: Path | None = None  # the bundle's folder; None: the package's physics model folder
    sample_steps: int | None = None  # the check samples' steps; None: the model's own

    @property
    def held_out_clips(self) -> int:
        """Clips per domain so that a real set holds at least ``held_out_videos``."""
        return math.ceil(self.held_out_videos / len(self.domains))

    @property
    def bundle(self) -> Path:
        return self.target or SHIPPED_MODELS[MODEL].folder


def smoke(recipe: Recipe, out: Path) -> Recipe:
    """The whole chain at tiny sizes and steps (the real networks and frame size), in ``out``;
    the recipe's own train flags still win."""
    return replace(recipe, out=out, domains=("cheetah", "cartpole"), train_clips=2,
                   held_out_videos=2, vae_steps=2, vae_batch_size=4, target=out / "bundle",
                   sample_steps=2,
                   train=("--base-pretrain-steps", "2", "--max-steps", "2", "--batch-size",
                          "2", "--lr-warmup-steps", "1", "--sample-num", "1", "--sample-steps",
                          "2", *recipe.train))


@dataclass(frozen=True)
class Stage:
    """One command of the recipe and how to tell that its output is complete."""

    name: str
    command: list[str]  # as a user types it: `videofusion ...` or `python scripts/...`
    done: Callable[[], bool]

    def execute(self, **kwargs) -> int:
        """Run the command from the repository (its paths are relative to it); the exit code."""
        program, *rest = self.command
        argv = ([sys.executable, "-m", "videofusion.cli", *rest] if program == "videofusion"
                else [sys.executable, *rest])  # python scripts/...
        return subprocess.run(argv, cwd=ROOT, **kwargs).returncode

    def line(self) -> str:
        return shlex.join(self.command)


def rendered(folder: Path, domains: tuple[str, ...], clips: int) -> bool:
    """Every clip and caption of every domain is in ``folder``."""
    def subfolder(entry: str) -> str:
        domain, _, task = entry.partition("-")
        return DomainTask(domain, task or DEFAULT_TASKS.get(domain, "")).folder

    return all((folder / subfolder(d) / f"clip_{i:05d}{ext}").is_file()
               for d in domains for i in range(clips) for ext in (".mp4", ".txt"))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def cache_complete(command: list[str], folder: Path) -> bool:
    """``cache-latents --check`` finds nothing to encode (a fresh entry per training video)."""
    if not (folder / "manifest.json").is_file():
        return False
    check = Stage("check", [*command, "--check"], lambda: False)
    return check.execute(stdout=subprocess.DEVNULL) == 0


def bundled(run: Path, target: Path) -> bool:
    """``target`` holds the run's final step, bundled from the run's config."""
    config = run / "config.yaml"
    return ((target / "training_config.yaml").is_file() and config.is_file()
            and (target / "training_config.yaml").read_bytes() == config.read_bytes()
            and read_json(target / "training_record.json").get("steps")
            == read_json(run / "train_summary.json").get("steps"))


def sampled(samples: Path, target: Path) -> bool:
    """The samples are newer than the bundle they were drawn from."""
    sheet, index = samples / "contact_sheet.png", target / "model_index.json"
    return sheet.is_file() and index.is_file() and sheet.stat().st_mtime > index.stat().st_mtime


def folders(out: Path) -> dict[str, Path]:
    """The recipe's folders under ``out``: the three rendered sets, the VAE, the latent cache,
    the run and the check samples (``scripts/ablations.py --recipe-dir`` reads them too)."""
    data = out / "data"
    return {"train": data / "train", "held_out": data / "held_out", "floor": data / "floor",
            "vae": out / "vae", "latents": out / "latents", "run": out / "run",
            "samples": out / "samples"}


def stages(recipe: Recipe) -> list[Stage]:
    """The recipe's commands; paths relative to the repository, as the model card quotes
    them."""
    out = recipe.out
    where = folders(out)
    train_data, held_out, floor = where["train"], where["held_out"], where["floor"]
    vae, latents, run, samples = where["vae"], where["latents"], where["run"], where["samples"]
    config_path = Path("configs") / CONFIG
    config = TrainConfig.resolve(ROOT / config_path, flags(recipe.train))
    render = ["videofusion", "data", "render-dmc", "--domains", ",".join(recipe.domains),
              "--frames", str(config.frames), "--size", str(config.resolution), "--workers",
              str(recipe.workers)]
    data = ["--config", str(config_path), "--data", str(train_data), "--vae", str(vae)]
    cache = ["videofusion", "data", "cache-latents", *data, "--out", str(latents)]
    total = config.total_steps
    target = recipe.bundle
    model = (["--model", MODEL] if recipe.target is None else ["--model-dir", str(target)])
    sample_steps = [] if recipe.sample_steps is None else ["--steps", str(recipe.sample_steps)]
    return [
        Stage("render", [*render, "--clips", str(recipe.train_clips), "--seed",
                         str(recipe.render_seed), "--out", str(train_data)],
              lambda: rendered(ROOT / train_data, recipe.domains, recipe.train_clips)),
        Stage("held-out", [*render, "--clips", str(recipe.held_out_clips), "--seed",
                           str(recipe.held_out_seed), "--out", str(held_out)],
              lambda: rendered(ROOT / held_out, recipe.domains, recipe.held_out_clips)),
        Stage("floor", [*render, "--clips", str(recipe.held_out_clips), "--seed",
                        str(recipe.floor_seed), "--out", str(floor)],
              lambda: rendered(ROOT / floor, recipe.domains, recipe.held_out_clips)),
        Stage("vae", ["videofusion", "train-vae", "--data", str(train_data), "--resolution",
                      str(config.resolution), "--block-channels", recipe.vae_channels,
                      "--steps", str(recipe.vae_steps), "--batch-size",
                      str(recipe.vae_batch_size), "--seed", str(recipe.vae_seed), "--out",
                      str(vae), "--resume"],
              lambda: (ROOT / vae / "vae" / "config.json").is_file()
              and read_json(ROOT / vae / "vae_summary.json").get("steps") == recipe.vae_steps),
        Stage("cache", cache, lambda: cache_complete(cache, ROOT / latents)),
        Stage("train", ["videofusion", "train", *data, "--latent-cache", str(latents),
                        "--output-dir", str(run), *recipe.train, "--resume"],
              lambda: (ROOT / run / "pipeline" / "model_index.json").is_file()
              and read_json(ROOT / run / "train_summary.json").get("steps") == total),
        Stage("bundle", ["python", "scripts/bundle_model.py", str(run), "--model", MODEL,
                         "--config-name", CONFIG, "--recipe", str(out / "commands.txt"),
                         *([] if recipe.target is None else ["--target", str(target)])],
              lambda: bundled(ROOT / run, ROOT / target)),
        # the classes by name: VideoFolder labels the class folders in sorted order
        Stage("samples", ["videofusion", "sample", *model, "--class-label",
                          *sorted(recipe.domains), "--num-videos", "1",
                          *sample_steps, "--out", str(samples)],
              lambda: sampled(ROOT / samples, ROOT / target)),
    ]


def flags(argv: tuple[str, ...]) -> dict:
    """``videofusion train`` flags -> the ``TrainConfig`` fields they set."""
    from videofusion.cli import build_parser

    args = build_parser().parse_args(["train", *argv])
    return {k: v for k, v in vars(args).items() if k not in ("command", "handler", "config")}


def run(recipe: Recipe, invocation: str) -> float:
    """Run the stages that are not complete; return the seconds taken."""
    started = time.perf_counter()
    plan = stages(recipe)
    (ROOT / recipe.out).mkdir(parents=True, exist_ok=True)
    lines = [f"# {invocation}", *(stage.line() for stage in plan)]
    (ROOT / recipe.out / "commands.txt").write_text("\n".join(lines) + "\n")
    for number, stage in enumerate(plan, 1):
        if stage.done():
            print(f"[{number}/{len(plan)}] {stage.name}: complete, skipped", flush=True)
            continue
        print(f"[{number}/{len(plan)}] {stage.name}: {stage.line()}", flush=True)
        start = time.perf_counter()
        code = stage.execute()
        if code:
            sys.exit(f"train_physics: stage {stage.name} failed (exit code {code}); fix it and "
                     "run the same command again to continue")
        print(f"[{number}/{len(plan)}] {stage.name}: done in {time.perf_counter() - start:.0f} s",
              flush=True)
    return time.perf_counter() - started


def repository_path(path: Path) -> Path:
    """``path`` (relative to the working folder) relative to the repository when inside it."""
    path = path.resolve()
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def parse_args(argv: list[str] | None = None) -> tuple[Recipe, bool]:
    defaults = Recipe()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="the whole chain with tiny numbers, into a temporary folder (or --out)")
    p.add_argument("--out", type=Path, help=f"the recipe's folder (default {defaults.out})")
    p.add_argument("--domains", type=lambda text: tuple(d for d in text.split(",") if d),
                   default=defaults.domains, help="render-dmc domains: the classes")
    p.add_argument("--target", type=Path,
                   help="bundle here instead of the package's physics model folder")
    own = [f.name for f in fields(Recipe)
           if f.name not in ("out", "domains", "train", "target", "sample_steps")]
    for name in own:
        value = getattr(defaults, name)
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value,
                       help="default %(default)s")
    for flag, train_flag in CONFIG_FLAGS.items():
        p.add_argument(flag, type=int, help=f"train {train_flag} (default: configs/{CONFIG})")
    args = p.parse_args(argv)
    train = tuple(item for flag, train_flag in CONFIG_FLAGS.items()
                  if getattr(args, flag[2:].replace("-", "_")) is not None
                  for item in (train_flag, str(getattr(args, flag[2:].replace("-", "_")))))
    out = args.out or (Path(tempfile.mkdtemp(prefix="physics-smoke-")) if args.smoke
                       else defaults.out)
    recipe = Recipe(**{name: getattr(args, name) for name in own}, domains=args.domains,
                    train=train, out=repository_path(out),
                    target=args.target and repository_path(args.target))
    return (smoke(recipe, recipe.out) if args.smoke else recipe), args.smoke


def main(argv: list[str] | None = None) -> None:
    recipe, is_smoke = parse_args(argv)
    invocation = shlex.join(["python", "scripts/train_physics.py",
                             *(sys.argv[1:] if argv is None else argv)])
    seconds = run(recipe, invocation)
    print(f"train_physics: {'smoke run ' if is_smoke else ''}complete in {seconds:.0f} s; "
          f"the model is in {recipe.bundle}, the commands in {recipe.out / 'commands.txt'}")


if __name__ == "__main__":
    main()
