"""``videofusion data``: build training data; ``render-dmc`` renders Control Suite clips."""

from __future__ import annotations

import argparse
import sys

from videofusion.choices import DMC_POLICIES
from videofusion.safety import check_output_dir, float_range

from .arguments import PROG, one_line


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
    r.add_argument("--policy", default="auto", choices=DMC_POLICIES,
                   help="scripted actions; auto = gait for legged bodies, else smoothed random")
    r.add_argument("--frame-interval", type=float_range(0, low_open=True), default=0.04,
                   help="simulated seconds between frames (default: %(default)s)")
    r.add_argument("--fps", type=int, default=8, help="mp4 frame rate (default: %(default)s)")
    r.set_defaults(handler=run_render_dmc)
    return p


def run_render_dmc(args: argparse.Namespace) -> int:
    from videofusion.data.dmc import DmcUnavailable, render_dmc

    check_output_dir(args.out, "--out")
    try:
        summary = render_dmc(
            [d for d in args.domains.split(",") if d.strip()], clips=args.clips,
            frames=args.frames, size=args.size, out=args.out, workers=args.workers,
            seed=args.seed, camera=args.camera, policy=args.policy,
            frame_interval=args.frame_interval, fps=args.fps)
    except DmcUnavailable as err:
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return 2
    print(f"{PROG}: rendered {summary.rendered} clips ({summary.skipped} already there), "
          f"{summary.frames} frames in {summary.seconds:.1f} s "
          f"({summary.frames_per_second:.0f} frames/s, MUJOCO_GL={summary.renderer}) "
          f"into {summary.out}")
    return 0


