"""``videofusion sample``: videos from a shipped model or a trained pipeline folder, as mp4 +
GIF + PNG sheet."""

from __future__ import annotations

import argparse
from pathlib import Path

from videofusion.assets import DEFAULT_MODEL, SHIPPED_MODELS, shipped_model
from videofusion.choices import DEFAULT_INFERENCE_STEPS, DEFAULT_NUM_FRAMES, SCHEDULERS
from videofusion.class_names import class_indices
from videofusion.safety import (
    check_output_dir,
    check_size,
    float_range,
    format_bytes,
    int_range,
)

from .arguments import SEED, add_device_options, grid_shape


def add_sample_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sample", help="generate videos with a trained model",
        description="Sample videos (spec §4). --base-seed / --residual-seed give every video the "
                    "same base noise (same content) or the same residual noise (same motion).")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", choices=tuple(SHIPPED_MODELS),
                       help=f"a model shipped with the package (default: {DEFAULT_MODEL})")
    which.add_argument("--model-dir", help="a VideoFusionPipeline folder (e.g. OUTPUT/pipeline)")
    p.add_argument("--prompt", help="text prompt (text-conditioned models)")
    p.add_argument("--class-label", nargs="+", metavar="CLASS",
                   help="class(es) of a class model, by name or index (e.g. cheetah or 1; "
                        "`videofusion info` lists them)")
    p.add_argument("--num-videos", type=int_range(1), default=4, help="videos per prompt or label")
    p.add_argument("--frames", type=int_range(2), default=DEFAULT_NUM_FRAMES)
    p.add_argument("--resolution", type=int_range(8), help="default: the model's sample size")
    p.add_argument("--steps", type=int_range(1, 10_000),
                   help="denoising steps; default: the model's own (default_inference_steps in "
                        f"model_index.json), else {DEFAULT_INFERENCE_STEPS}")
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
    p.add_argument("--residual-guidance", type=float_range(0),
                   help="guidance of the residual generator alone (docs/method.md, §7); "
                        "default: the same as --guidance. 1 skips its unconditional pass")
    p.add_argument("--guidance-interval", type=float_range(0), nargs=2, metavar=("LOW", "HIGH"),
                   help="guide only the steps whose noise level sigma_t = sqrt((1 - abar_t) / "
                        "abar_t) lies in [LOW, HIGH] (docs/method.md, §7); default: every step")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--base-seed", type=SEED, help="one base noise for all videos (same content)")
    p.add_argument("--residual-seed", type=SEED,
                   help="one residual noise for all videos (same motion)")
    p.add_argument("--image", metavar="PATH",
                   help="image-to-video: this image is the key frame (frame FRAMES // 2) of "
                        "every video, resized to the sample size")
    p.add_argument("--reconstruction-guidance", type=float_range(0), metavar="W",
                   help="with --image: pull the other frames towards the image (docs/method.md, "
                        "§7); default: the model's own, 0 (off) if it records none")
    p.add_argument("--colour-anchoring", type=float_range(0), metavar="S",
                   help="move every frame's foreground colour towards the key frame's "
                        "(docs/method.md, §7; pixel-space models); default: the model's own "
                        "(default_colour_anchoring), 0 (off) if it records none")
    p.add_argument("--control-grid", type=grid_shape, metavar="R,C",
                   help="an R x C grid instead: rows share the base noise (content), columns "
                        "the residual noise (motion); writes control_grid.png and .gif")
    p.add_argument("--fps", type=int_range(1, 240), help="default: the model's fps")
    p.add_argument("--scale", type=int_range(1, 64),
                   help="pixel enlargement of the files; default to 128 px")
    add_device_options(p)
    p.add_argument("--out", default="samples", help="output folder")
    p.set_defaults(handler=run_sample)
    return p


def model_folder(args: argparse.Namespace) -> Path:
    """The folder ``--model-dir`` or ``--model`` names; the default shipped model if neither."""
    if args.model_dir is not None:
        return Path(args.model_dir)
    return shipped_model(args.model or DEFAULT_MODEL).folder


def run_sample(args: argparse.Namespace) -> int:
    if args.reconstruction_guidance and args.image is None:
        raise ValueError("--reconstruction-guidance pulls the frames towards a given key frame: "
                         "it needs --image")
    if args.control_grid and (args.image or args.base_seed is not None
                              or args.residual_seed is not None):
        raise ValueError("--control-grid draws its own base and residual noise: it takes no "
                         "--image, --base-seed or --residual-seed")
    folder = model_folder(args)
    videos = (args.control_grid[0] * args.control_grid[1] if args.control_grid else
              len(args.class_label or [0]) * args.num_videos)
    check_video_size(videos, args.frames, args.resolution or 0)
    image = None
    if args.image is not None:
        from videofusion.pipeline import read_image

        image = read_image(args.image)
    files = (("control_grid.png", "control_grid.gif") if args.control_grid else
             ("contact_sheet.png", *(f"video_{i:03d}.{ext}" for i in range(videos)
                                     for ext in ("mp4", "gif"))))
    check_output_dir(args.out, "--out", files)
    from videofusion.devices import resolve_device

    device = resolve_device(args.device)
    from videofusion.pipeline import load_pipeline

    pipe = load_pipeline(folder).to(device)
    labels = (None if args.class_label is None  # names or indices -> the model's indices
              else class_indices(args.class_label, pipe.class_names, "--class-label"))
    import torch

    from videofusion.noise import seeded_draw
    from videofusion.video_io import contact_sheet, write_gif, write_mp4

    pipe.use_scheduler(args.scheduler)
    guidance = args.guidance if args.guidance is not None else pipe.default_guidance
    settings = dict(num_frames=args.frames, height=args.resolution, width=args.resolution,
                    num_inference_steps=args.steps or pipe.default_steps, guidance_scale=guidance,
                    residual_guidance_scale=args.residual_guidance,
                    guidance_interval=args.guidance_interval,
                    lambda_=args.lambda_, eta=args.eta, signal_leak=args.signal_leak,
                    dtype=args.dtype, colour_anchoring=args.colour_anchoring)
    out = Path(args.out)
    if args.control_grid:
        from videofusion.control import content_motion_grid

        resolution = args.resolution or pipe.config.sample_size
        check_video_size(videos, args.frames, resolution)
        grid = content_motion_grid(pipe, *args.control_grid, prompt=args.prompt,
                                   class_labels=labels, seed=args.seed, **settings)
        for path in grid.save(out, args.fps or pipe.config.fps, args.scale
                              or max(1, 128 // resolution)):
            print(path)
        return 0
    plan = pipe.plan(args.prompt, labels, num_videos=args.num_videos, image=image,
                     reconstruction_guidance_scale=args.reconstruction_guidance, **settings)
    resolution = plan.height
    check_video_size(plan.batch, args.frames, resolution)
    _, channels, frames, side, _ = plan.latent_shape  # (batch, C, frames, h, w)
    noise = {}
    if args.base_seed is not None:
        noise["base_noise"] = seeded_draw((channels, side, side), args.base_seed, plan.batch)
    if args.residual_seed is not None:
        noise["residual_noise"] = seeded_draw((channels, frames, side, side),
                                              args.residual_seed, plan.batch)
    # a CPU generator whatever the device: one seed, one video on CPU and GPU
    videos = pipe.generate(plan, torch.Generator().manual_seed(args.seed), **noise)
    fps = args.fps or pipe.config.fps
    scale = args.scale or max(1, 128 // resolution)
    for i, video in enumerate(videos):
        for path in (write_mp4(video, out / f"video_{i:03d}.mp4", fps, scale),
                     write_gif(video, out / f"video_{i:03d}.gif", fps, scale)):
            print(path)
    print(contact_sheet(videos, out / "contact_sheet.png", scale=max(1, 64 // resolution)))
    return 0


def check_video_size(videos: int, frames: int, resolution: int) -> None:
    """Refuse, before any work, videos above the CLI's bounds or this machine's memory, saying
    what their frames alone would need (fp32 RGB; the model needs several times more)."""
    from videofusion.config import MAX_BATCH, MAX_FRAMES, MAX_RESOLUTION

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
