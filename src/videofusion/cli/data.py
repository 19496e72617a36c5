"""``videofusion data``: build training data; ``render-dmc`` renders Control Suite clips."""

from __future__ import annotations

import argparse
import sys

from videofusion.choices import DMC_POLICIES
from videofusion.safety import check_output_dir, float_range

from .arguments import PROG, one_line


def _domains(text: str) -> list[str]:
    return [d.strip() for d in text.split(",") if d.strip()]


def add_data_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("data", help="build datasets (rendered physics videos)",
                              description="Build training data folders (docs/data.md).")
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
