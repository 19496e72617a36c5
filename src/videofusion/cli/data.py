"""``videofusion data``: build training data; ``render-dmc`` renders Control Suite clips,
``cache-latents`` encodes a training set into a latent cache for ``train --latent-cache``."""

from __future__ import annotations

import argparse
import sys

from videofusion.choices import DMC_POLICIES
from videofusion.safety import check_output_dir, float_range

from .arguments import PROG, one_line


def _domains(text: str) -> list[str]:
    return [d.strip() for d in text.split(",") if d.strip()]


def add_data_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("data", help="build datasets (rendered physics videos, latent "
                                           "caches)",
                              description="Build training data folders (docs/data.md) and "
                                          "latent caches (docs/training.md).")
    commands = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    r = commands.add_parser(
        "render-dmc", help="render DeepMind Control Suite clips into OUT/<domain>/",
        description="Headless-rendered dm-control scenes driven by scripted policies, one mp4 "
                    "+ caption .txt per clip in OUT/<domain>/ (a class folder per domain, read "
                    "by --data OUT). Needs pip install 'videofusion[dmc]' and EGL or OSMesa. "
                    "Re-running skips clips that exist. Unset flags keep the defaults of "
                    "videofusion.data.dmc.render_dmc (docs/data.md).",
        argument_default=argparse.SUPPRESS)
    r.add_argument("--domains", type=_domains,
                   help="comma-separated domain or domain-task names (default: "
                        "videofusion.data.dmc.DEFAULT_DOMAINS)")
    r.add_argument("--clips", type=int, help="clips per domain")
    r.add_argument("--frames", type=int, help="frames per clip")
    r.add_argument("--size", type=int, help="frame side in px")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--workers", type=int, help="render processes")
    r.add_argument("--seed", type=int)
    r.add_argument("--camera", help="camera id or name (0: the suite's side or fixed view)")
    r.add_argument("--policy", choices=DMC_POLICIES,
                   help="scripted actions; auto = gait for legged bodies, else smoothed random")
    r.add_argument("--frame-interval", type=float_range(0, low_open=True),
                   help="simulated seconds between frames")
    r.add_argument("--fps", type=int, help="mp4 frame rate")
    r.set_defaults(handler=run_render_dmc)
    c = commands.add_parser(
        "cache-latents", help="encode a training set once with its VAE, for train --latent-cache",
        description="Encode the clips of a training set with the frozen VAE into OUT (one "
                    "safetensors entry per clip or video, and manifest.json), re-encoding the "
                    "stale and corrupt entries; 'videofusion train --vae VAE --latent-cache OUT' "
                    "then reads its batches from there. The data settings are train's, from "
                    "--config and the flags below (docs/training.md, 'Latent cache').",
        argument_default=argparse.SUPPRESS)
    c.add_argument("--config", help="a train YAML file: its data, frames, resolution, channels, "
                                    "data_options, vae, vae_slice, num_workers, latent_cache")
    c.add_argument("--data", help="'moving-digits' or a folder of videos")
    c.add_argument("--frames", type=int)
    c.add_argument("--resolution", type=int)
    c.add_argument("--channels", type=int)
    c.add_argument("--vae", help="an AutoencoderKL folder or a folder with vae/")
    c.add_argument("--vae-slice", type=int, help="frames per VAE encode call")
    c.add_argument("--num-workers", type=int, help="processes that read the pixels")
    c.add_argument("--out", dest="latent_cache", help="the cache folder (default: the "
                                                      "--config's latent_cache)")
    c.add_argument("--check", action="store_true",
                   help="write nothing: count what needs encoding (exit code 1 if anything)")
    c.set_defaults(handler=run_cache_latents)
    return p


def run_render_dmc(args: argparse.Namespace) -> int:
    from videofusion.data.dmc import DmcUnavailable, render_dmc

    check_output_dir(args.out, "--out")
    try:
        summary = render_dmc(**{k: v for k, v in vars(args).items()
                                if k not in ("command", "data_command", "handler")})
    except DmcUnavailable as err:
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return 2
    print(f"{PROG}: rendered {summary.rendered} clips ({summary.skipped} already there), "
          f"{summary.frames} frames in {summary.seconds:.1f} s "
          f"({summary.frames_per_second:.0f} frames/s, MUJOCO_GL={summary.renderer}) "
          f"into {summary.out}")
    return 0


def run_cache_latents(args: argparse.Namespace) -> int:
    from videofusion.config import TrainConfig

    settings = {k: v for k, v in vars(args).items()
                if k not in ("command", "data_command", "handler", "config", "check")}
    config = TrainConfig.resolve(getattr(args, "config", None), settings)
    if config.latent_cache is None:
        raise ValueError("--out: no cache folder (pass --out, or latent_cache in --config)")
    check_output_dir(config.latent_cache, "--out")
    import torch

    from videofusion.latent_cache import prepare
    from videofusion.training_setup import load_vae, training_set

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    vae, _, _ = load_vae(config, device)
    check = getattr(args, "check", False)
    _, found = prepare(config.latent_cache, training_set(config), vae,
                       slice_size=config.vae_slice, num_workers=config.num_workers,
                       write=not check)
    print(f"{PROG}: {found.line()}")
    return 1 if check and found.to_encode else 0
