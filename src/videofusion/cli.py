"""The ``videofusion`` command: ``train``, ``sample``, ``info``.

Each subcommand is an ``add_<name>_parser(subparsers)`` that registers its flags and sets
``handler``; ``main`` dispatches. Bad input (``ValueError``, ``FileNotFoundError``) becomes one
line ``videofusion: error: ...`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

PROG = "videofusion"
SCHEDULERS = ("ddim", "ddpm", "dpm", "euler")


def _widths(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected integers like 16,32,64, got {text!r}") from err


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """``videofusion train``: flags override ``--config``; unset flags leave the YAML value."""
    p = subparsers.add_parser(
        "train", help="train a VideoFusion (or VDM baseline) model",
        description="Train on moving digits or a folder of videos (docs/training.md). "
                    "Flags override --config; the resolved config is saved to OUTPUT/config.yaml.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="YAML file of settings (TrainConfig field names)")
    g = p.add_argument_group("data")
    g.add_argument("--data", help="'moving-digits' or a folder of videos")
    g.add_argument("--frames", type=int, help="frames per clip (>= 2)")
    g.add_argument("--resolution", type=int, help="clip side in pixels")
    g.add_argument("--channels", type=int, help="1 (grey) or 3 (colour)")
    g.add_argument("--num-workers", type=int, help="DataLoader worker processes")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=("videofusion", "vdm"))
    g.add_argument("--lambda", dest="lambda_", type=float,
                   help="share of each frame's noise common to the clip (spec §1), in [0, 1]")
    g.add_argument("--condition", choices=("none", "class", "text"))
    g.add_argument("--residual-input", choices=("paper", "with_key_frame",
                                                 "key_frame_difference"))
    g.add_argument("--base-channels", type=_widths, help="e.g. 32,64,64")
    g.add_argument("--residual-channels", type=_widths, help="e.g. 16,32,64")
    g.add_argument("--layers-per-block", type=int)
    g.add_argument("--gradient-checkpointing", action="store_true")
    g = p.add_argument_group("stages (spec §3)")
    g.add_argument("--base-pretrain-steps", type=int,
                   help="stage 1: image-diffusion steps of the base generator on single frames")
    g.add_argument("--base-from", help="stage 1 instead: a pretrained diffusers image UNet folder")
    g.add_argument("--base-from-scratch", action="store_true",
                   help="ablation: no stage 1, the base generator starts random")
    g.add_argument("--freeze-base", action="store_true",
                   help="ablation: the base generator gets no gradient in stage 2")
    g.add_argument("--no-stop-gradient", dest="stop_gradient", action="store_false",
                   help="ablation: non-key frames also train the base generator")
    g.add_argument("--max-steps", type=int, help="stage 2 (joint training) optimizer steps")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, help="clips per process per micro-step")
    g.add_argument("--gradient-accumulation-steps", type=int)
    g.add_argument("--learning-rate", "--lr", dest="learning_rate", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--lr-scheduler", choices=("constant", "constant_with_warmup", "linear",
                                              "cosine"))
    g.add_argument("--lr-warmup-steps", type=int)
    g.add_argument("--max-grad-norm", type=float)
    g.add_argument("--ema-decay", type=float, help="0 turns EMA off")
    g.add_argument("--cond-drop", type=float,
                   help="odds of the null condition, for classifier-free guidance")
    g.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"),
                   help="GPU only; CPU runs stay fp32")
    g.add_argument("--seed", type=int)
    g = p.add_argument_group("outputs")
    g.add_argument("--output-dir")
    g.add_argument("--checkpoint-every", type=int)
    g.add_argument("--checkpoints-total-limit", type=int)
    g.add_argument("--sample-every", type=int)
    g.add_argument("--sample-num", type=int)
    g.add_argument("--sample-steps", type=int)
    g.add_argument("--sample-guidance", type=float)
    g.add_argument("--log-every", type=int)
    g.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in OUTPUT/checkpoints")
    g.add_argument("--stop-at-step", type=int,
                   help="checkpoint and exit at this global step (continue with --resume)")
    p.set_defaults(handler=run_train)
    return p


def run_train(args: argparse.Namespace) -> int:
    from .config import TrainConfig
    from .train import train

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "handler", "config")}
    config = TrainConfig.resolve(getattr(args, "config", None), flags)
    from accelerate import PartialState

    result = train(config)
    if PartialState().is_main_process:
        print(f"{PROG}: wrote {result}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="VideoFusion: decomposed diffusion video generation")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (add_train_parser,):
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
    except KeyboardInterrupt:
        parser.exit(130, f"{PROG}: interrupted\n")


def _one_line(err: Exception) -> str:
    text = str(err) if not isinstance(err, FileNotFoundError) or not err.filename else (
        f"{err.strerror}: {err.filename}" if err.strerror else str(err))
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
