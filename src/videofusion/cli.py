"""The ``videofusion`` command: ``train``, ``sample``, ``info``, ``bench``, ``eval``, ``data``.

Each subcommand is an ``add_<name>_parser(subparsers)`` that registers its flags and sets
``handler``; ``main`` dispatches. Bad input (``ValueError``, ``FileNotFoundError``) becomes one
line ``videofusion: error: ...`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .assets import DEFAULT_MODEL_DIR
from .config import TrainConfig, add_config_arguments
from .safety import (
    RunStopped,
    check_output_dir,
    check_safetensors,
    check_size,
    float_range,
    format_bytes,
    int_range,
)

PROG = "videofusion"
# pipeline.SCHEDULERS, spelled here so that --help does not import torch
SCHEDULERS = ("ddim", "ddpm", "dpm", "euler")
SEED = int_range(0, 2 ** 63 - 1)  # what torch.Generator.manual_seed takes


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the project's rule for bad input)."""

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def _widths(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected integers like 16,32,64, got {text!r}") from err


def _grid(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected ROWS,COLS like 3,4, got {text!r}") from err
    if rows < 1 or cols < 1:
        raise argparse.ArgumentTypeError(f"rows and columns must be >= 1, got {text!r}")
    return rows, cols


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """``videofusion train``: flags override ``--config``; unset flags leave the YAML value."""
    p = subparsers.add_parser(
        "train", help="train a VideoFusion (or VDM baseline) model",
        description="Train on moving digits or a folder of videos (docs/training.md). "
                    "Flags override --config; the resolved config is saved to OUTPUT/config.yaml.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="YAML file of settings (TrainConfig field names)")
    add_config_arguments(p, TrainConfig)
    p.set_defaults(handler=run_train)
    return p


def run_train(args: argparse.Namespace) -> int:
    from .train import train

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "handler", "config")}
    config = TrainConfig.resolve(getattr(args, "config", None), flags)
    from accelerate import PartialState

    result = train(config)
    if PartialState().is_main_process:
        print(f"{PROG}: wrote {result}")
    return 0


def add_train_vae_parser(subparsers) -> argparse.ArgumentParser:
    """``videofusion train-vae``: a small AutoencoderKL on a dataset's frames, for ``--vae``."""
    p = subparsers.add_parser(
        "train-vae", help="train a small VAE for latent-space training",
        description="Train a diffusers AutoencoderKL on single frames (L1 + small KL; no GAN or "
                    "LPIPS), set its scaling_factor to 1/std of the latents and print the "
                    "held-out reconstruction PSNR. Writes OUT/vae (pass --vae OUT to train), "
                    "OUT/checkpoints and OUT/vae_summary.json (docs/training.md).")
    p.add_argument("--data", required=True, help="'moving-digits' or a folder of videos")
    p.add_argument("--resolution", type=int, required=True, help="frame side in pixels")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=16, help="frames per step")
    p.add_argument("--lr", type=float_range(0, low_open=True), default=5e-4)
    p.add_argument("--latent-channels", type=int, default=4)
    p.add_argument("--block-channels", type=_widths, default=[32, 64],
                   help="encoder/decoder widths; the VAE halves the side once per extra width "
                        "(default 32,64: factor 2)")
    p.add_argument("--channels", type=int, default=3, help="image channels, 1 or 3")
    p.add_argument("--kl-weight", type=float_range(0), default=1e-6)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    p.add_argument("--stop-at-step", type=int, help="checkpoint and exit at this step")
    p.set_defaults(handler=run_train_vae)
    return p


def run_train_vae(args: argparse.Namespace) -> int:
    from .vae import VAETrainConfig, train_vae

    check_output_dir(args.out, "--out")
    config = VAETrainConfig(
        data=args.data, out=args.out, resolution=args.resolution, image_channels=args.channels,
        latent_channels=args.latent_channels, block_out_channels=args.block_channels,
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
        kl_weight=args.kl_weight, checkpoint_every=args.checkpoint_every, seed=args.seed,
        resume=args.resume, stop_at_step=args.stop_at_step)
    print(f"{PROG}: wrote {train_vae(config)}")
    return 0


def add_sample_parser(subparsers) -> argparse.ArgumentParser:
    """``videofusion sample``: videos from a trained pipeline folder, as mp4 + GIF + PNG sheet."""
    p = subparsers.add_parser(
        "sample", help="generate videos with a trained model",
        description="Sample videos (spec §4). --base-seed / --residual-seed give every video the "
                    "same base noise (same content) or the same residual noise (same motion).")
    p.add_argument("--model-dir", help="a VideoFusionPipeline folder (e.g. OUTPUT/pipeline)")
    p.add_argument("--prompt", help="text prompt (text-conditioned models)")
    p.add_argument("--class-label", type=int_range(0), nargs="+",
                   help="class label(s) (class models)")
    p.add_argument("--num-videos", type=int_range(1), default=4, help="videos per prompt or label")
    p.add_argument("--frames", type=int_range(2), default=16)
    p.add_argument("--resolution", type=int_range(8), help="default: the model's sample size")
    p.add_argument("--steps", type=int_range(1, 10_000), default=50, help="denoising steps")
    p.add_argument("--scheduler", choices=SCHEDULERS,
                   help="default: the model folder's own scheduler")
    p.add_argument("--eta", type=float_range(0, 1), default=0.0,
                   help="DDIM stochasticity, in [0, 1]")
    p.add_argument("--no-signal-leak", dest="signal_leak", action="store_false",
                   help="start from pure noise, not from the noised mean of the training "
                        "data that the folder may hold (docs/training.md, 'Signal leak')")
    p.add_argument("--lambda", dest="lambda_", type=float_range(0, 1), metavar="LAMBDA",
                   help="share of the noise common to the clip; default: the trained value")
    p.add_argument("--guidance", type=float_range(0),
                   help="classifier-free guidance scale; default: the model's own "
                        "(default_guidance_scale in model_index.json), else 2 for conditional "
                        "models, else 1")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--base-seed", type=SEED, help="one base noise for all videos (same content)")
    p.add_argument("--residual-seed", type=SEED,
                   help="one residual noise for all videos (same motion)")
    p.add_argument("--image", metavar="PATH",
                   help="image-to-video: this image is the key frame (frame FRAMES // 2) of "
                        "every video, resized to the sample size")
    p.add_argument("--control-grid", type=_grid, metavar="R,C",
                   help="an R x C grid instead: rows share the base noise (content), columns "
                        "the residual noise (motion); writes control_grid.png and .gif")
    p.add_argument("--fps", type=int_range(1, 240), help="default: the model's fps")
    p.add_argument("--scale", type=int_range(1, 64),
                   help="pixel enlargement of the files; default to 128 px")
    p.add_argument("--out", default="samples", help="output folder")
    p.set_defaults(handler=run_sample)
    return p


def load_pipeline(model_dir: str | None):
    """The pipeline in ``model_dir`` (or the bundled default), with clear errors."""
    if model_dir is None:
        if not DEFAULT_MODEL_DIR.is_dir():
            raise ValueError("no default model is bundled yet: pass --model-dir "
                             "(a folder written by 'videofusion train', e.g. OUTPUT/pipeline)")
        model_dir = DEFAULT_MODEL_DIR
    folder = Path(model_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"{folder} is not a VideoFusionPipeline folder (no model_index.json)")
    from diffusers.utils import logging as diffusers_logging

    from .pipeline import VideoFusionPipeline

    diffusers_logging.disable_progress_bar()  # keep stderr for the sampling bar and errors
    check_safetensors(folder)
    return VideoFusionPipeline.from_pretrained(folder)


def run_sample(args: argparse.Namespace) -> int:
    if args.control_grid and (args.image or args.base_seed is not None
                              or args.residual_seed is not None):
        raise ValueError("--control-grid draws its own base and residual noise: it takes no "
                         "--image, --base-seed or --residual-seed")
    videos = (args.control_grid[0] * args.control_grid[1] if args.control_grid else
              len(args.class_label or [0]) * args.num_videos)
    check_video_size(videos, args.frames, args.resolution or 0)
    image = None
    if args.image is not None:
        from .pipeline import read_image

        image = read_image(args.image)
    files = (("control_grid.png", "control_grid.gif") if args.control_grid else
             ("contact_sheet.png", *(f"video_{i:03d}.{ext}" for i in range(videos)
                                     for ext in ("mp4", "gif"))))
    check_output_dir(args.out, "--out", files)
    pipe = load_pipeline(args.model_dir)
    import torch

    from .video_io import contact_sheet, write_gif, write_mp4

    pipe.use_scheduler(args.scheduler)
    resolution = args.resolution or pipe.config.sample_size
    check_video_size(videos, args.frames, resolution)
    pipe.model.check_resolution(resolution // pipe.vae_scale_factor,
                                resolution // pipe.vae_scale_factor)
    guidance = args.guidance if args.guidance is not None else pipe.default_guidance
    out = Path(args.out)
    fps = args.fps or pipe.config.fps
    scale = args.scale or max(1, 128 // resolution)
    if args.control_grid:
        from .control import content_motion_grid

        grid = content_motion_grid(
            pipe, *args.control_grid, prompt=args.prompt, class_labels=args.class_label,
            num_frames=args.frames, height=resolution, width=resolution,
            num_inference_steps=args.steps, guidance_scale=guidance, lambda_=args.lambda_,
            eta=args.eta, seed=args.seed, signal_leak=args.signal_leak)
        for path in grid.save(out, fps, scale):
            print(path)
        return 0
    groups = len(args.class_label) if args.class_label else 1
    batch = groups * args.num_videos
    side = resolution // pipe.vae_scale_factor
    channels = pipe.residual.config.out_channels
    noise = {}
    if args.base_seed is not None:
        noise["base_noise"] = shared_noise((channels, side, side), batch, args.base_seed)
    if args.residual_seed is not None:
        noise["residual_noise"] = shared_noise((channels, args.frames, side, side), batch,
                                               args.residual_seed)
    videos = pipe(
        prompt=args.prompt, class_labels=args.class_label, num_frames=args.frames,
        height=resolution, width=resolution, num_inference_steps=args.steps,
        guidance_scale=guidance, lambda_=args.lambda_,
        generator=torch.Generator().manual_seed(args.seed), num_videos=args.num_videos,
        eta=args.eta, image=image, signal_leak=args.signal_leak, **noise,
    ).frames
    for i, video in enumerate(videos):
        for path in (write_mp4(video, out / f"video_{i:03d}.mp4", fps, scale),
                     write_gif(video, out / f"video_{i:03d}.gif", fps, scale)):
            print(path)
    print(contact_sheet(videos, out / "contact_sheet.png", scale=max(1, 64 // resolution)))
    return 0


def check_video_size(videos: int, frames: int, resolution: int) -> None:
    """Refuse, before any work, videos above the CLI's bounds or this machine's memory, saying
    what their frames alone would need (fp32 RGB; the model needs several times more)."""
    from .config import MAX_BATCH, MAX_FRAMES, MAX_RESOLUTION

    what = f"{videos} videos of {frames} frames" + (f" at {resolution} px" if resolution else "")
    need = 4 * 3 * videos * frames * max(resolution, 8) ** 2
    for option, value, limit in (("--frames", frames, MAX_FRAMES),
                                 ("--resolution", resolution, MAX_RESOLUTION),
                                 ("--num-videos x labels", videos, MAX_BATCH)):
        if value > limit:
            raise ValueError(f"{option} must be <= {limit}, got {value} ({what} would need "
                             f"{'' if resolution else 'at least '}{format_bytes(need)} for the "
                             "frames alone)")
    check_size(what, need // 4)


def shared_noise(shape: tuple[int, ...], batch: int, seed: int):
    """One draw of ``shape`` from ``seed``, the same for every video of the batch."""
    import torch

    draw = torch.randn((1, *shape), generator=torch.Generator().manual_seed(seed))
    return draw.expand(batch, *shape).clone()


def add_info_parser(subparsers) -> argparse.ArgumentParser:
    """``videofusion info``: what a model folder holds, read from its files (nothing built)."""
    p = subparsers.add_parser("info", help="describe a model folder",
                              description="Components, parameter counts, conditioning, lambda "
                                          "and sample size of a VideoFusionPipeline folder.")
    p.add_argument("model_dir", nargs="?", help="a VideoFusionPipeline folder")
    p.add_argument("--model-dir", dest="model_dir_flag", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run_info)
    return p


def model_info(folder: Path) -> dict:
    """A pipeline folder's description from model_index.json, configs and safetensors headers."""
    from safetensors import safe_open

    index_file = folder / "model_index.json"
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    if not index_file.is_file():
        raise ValueError(f"{folder} is not a VideoFusionPipeline folder (no model_index.json)")
    index = json.loads(index_file.read_text())
    check_safetensors(folder)
    components, parameters = {}, {}
    for name, spec in index.items():
        # components are [library, class] pairs; other lists are settings (signal_leak_mean)
        if name.startswith("_") or not (isinstance(spec, list) and len(spec) == 2
                                        and isinstance(spec[1], str)):
            continue
        components[name] = spec[1]
        files = sorted((folder / name).glob("*.safetensors"))
        if files:
            count = 0
            for file in files:
                with safe_open(str(file), framework="pt") as handle:
                    for key in handle.keys():
                        shape = handle.get_slice(key).get_shape()
                        count += int(_prod(shape))
            parameters[name] = count
    residual = json.loads((folder / "residual" / "config.json").read_text())
    conditions = []
    if residual.get("num_classes") is not None:
        conditions.append(f"class ({residual['num_classes']} classes)")
    if residual.get("cross_attention_dim"):
        conditions.append(f"text ({index.get('text_encoder_kind') or 'unknown'} encoder)")
    condition = " + ".join(conditions) or "none"
    summary_file = folder.parent / "train_summary.json"
    return {
        "model_dir": str(folder),
        "kind": "videofusion" if "base" in components else "vdm (no base generator)",
        "components": components,
        "parameters": {**parameters, "total": sum(parameters.values())},
        "condition": condition,
        "default_lambda": index.get("default_lambda"),
        "default_guidance_scale": index.get("default_guidance_scale"),
        "sample_size": index.get("sample_size"),
        "residual_input": index.get("residual_input"),
        "fps": index.get("fps"),
        "training": json.loads(summary_file.read_text()) if summary_file.is_file() else None,
    }


def _prod(shape) -> int:
    out = 1
    for side in shape:
        out *= side
    return out


def run_info(args: argparse.Namespace) -> int:
    folder = args.model_dir or args.model_dir_flag
    if folder is None:
        raise ValueError("pass a model folder: videofusion info PATH")
    info = model_info(Path(folder))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model folder:   {info['model_dir']}")
    print(f"kind:           {info['kind']}")
    for name, cls in info["components"].items():
        count = info["parameters"].get(name)
        print(f"  {name:<12}  {cls}" + (f"  {count:,} parameters" if count else ""))
    print(f"parameters:     {info['parameters']['total']:,}")
    print(f"conditioning:   {info['condition']}")
    print(f"lambda:         {info['default_lambda']}")
    if info["default_guidance_scale"] is not None:
        print(f"guidance:       {info['default_guidance_scale']} (the model's default)")
    print(f"sample size:    {info['sample_size']}x{info['sample_size']}")
    print(f"residual input: {info['residual_input']}")
    training = info["training"]
    if training:
        print(f"trained:        {training['steps']} steps "
              f"({training['base_pretrain_steps']} image + {training['joint_steps']} joint), "
              f"{training['wall_clock_seconds']:.0f} s, {training['frames']} frames at "
              f"{training['resolution']} px")
    return 0


def add_data_parser(subparsers) -> argparse.ArgumentParser:
    """``videofusion data``: build training data; ``render-dmc`` renders Control Suite clips."""
    p = subparsers.add_parser("data", help="build datasets (rendered physics videos)",
                              description="Build training data folders (docs/data.md).")
    commands = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    r = commands.add_parser(
        "render-dmc", help="render DeepMind Control Suite clips into OUT/<domain>/",
        description="Headless-rendered dm-control scenes driven by scripted policies, one mp4 "
                    "+ caption .txt per clip in OUT/<domain>/ (a class folder per domain, read "
                    "by --data OUT). Needs pip install 'videofusion[dmc]' and EGL or OSMesa. "
                    "Re-running skips clips that exist.")
    r.add_argument("--domains", default="cheetah,walker,hopper,cartpole,reacher,finger",
                   help="comma-separated domain or domain-task names (default: %(default)s)")
    r.add_argument("--clips", type=int, default=64, help="clips per domain (default: %(default)s)")
    r.add_argument("--frames", type=int, default=16, help="frames per clip (default: %(default)s)")
    r.add_argument("--size", type=int, default=64, help="frame side in px (default: %(default)s)")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--workers", type=int, default=1, help="render processes (default: 1)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--camera", default="0", help="camera id or name (default: 0, side/fixed)")
    r.add_argument("--policy", default="auto", choices=("auto", "random", "gait"),
                   help="scripted actions; auto = gait for legged bodies, else smoothed random")
    r.add_argument("--frame-interval", type=float_range(0, low_open=True), default=0.04,
                   help="simulated seconds between frames (default: %(default)s)")
    r.add_argument("--fps", type=int, default=8, help="mp4 frame rate (default: %(default)s)")
    r.set_defaults(handler=run_render_dmc)
    return p


def run_render_dmc(args: argparse.Namespace) -> int:
    from .data.dmc import DmcUnavailable, render_dmc

    check_output_dir(args.out, "--out")
    try:
        summary = render_dmc(
            [d for d in args.domains.split(",") if d.strip()], clips=args.clips,
            frames=args.frames, size=args.size, out=args.out, workers=args.workers,
            seed=args.seed, camera=args.camera, policy=args.policy,
            frame_interval=args.frame_interval, fps=args.fps)
    except DmcUnavailable as err:
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    print(f"{PROG}: rendered {summary.rendered} clips ({summary.skipped} already there), "
          f"{summary.frames} frames in {summary.seconds:.1f} s "
          f"({summary.frames_per_second:.0f} frames/s, MUJOCO_GL={summary.renderer}) "
          f"into {summary.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG, description="VideoFusion: decomposed diffusion video generation")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from .bench import add_bench_parser
    from .evaluate import add_eval_parser

    for add in (add_train_parser, add_train_vae_parser,
                add_sample_parser, add_info_parser, add_bench_parser,
                add_eval_parser, add_data_parser):
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (also raised as ``SystemExit`` by argparse)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"{PROG}: error: {_one_line(err)}\n")
    except RunStopped as err:
        parser.exit(1, f"{PROG}: error: {_one_line(err)}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"{PROG}: interrupted\n")


def _one_line(err: Exception) -> str:
    text = str(err) if not isinstance(err, FileNotFoundError) or not err.filename else (
        f"{err.strerror}: {err.filename}" if err.strerror else str(err))
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
