"""The ``videofusion`` command: ``train``, ``train-vae``, ``sample``, ``info``, ``bench``,
``eval``, ``data``.

One module per command group, each an ``add_<name>_parser(subparsers)`` that registers its
flags and a handler that calls the library; ``main`` dispatches. No module here imports torch
at import time, so ``videofusion --help`` is quick. Bad input (``ValueError``,
``FileNotFoundError``) becomes one line ``videofusion: error: ...`` on stderr and exit code 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from videofusion.allocator import keep_freed_memory
from videofusion.safety import RunStopped
from videofusion.studio import add_studio_parser

from .arguments import PROG, ArgumentParser, one_line
from .bench import add_bench_parser
from .data import add_data_parser
from .eval import add_eval_parser
from .info import add_info_parser
from .sample import add_sample_parser
from .train import add_train_parser
from .train_vae import add_train_vae_parser

# commands whose process samples: glibc keeps freed tensor memory for the next step
# (allocator.keep_freed_memory); training keeps glibc's defaults, measured no faster kept
SAMPLING_COMMANDS = ("sample", "eval", "studio")

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG, description="VideoFusion: decomposed diffusion video generation")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (add_train_parser, add_train_vae_parser, add_sample_parser, add_info_parser,
                add_bench_parser, add_eval_parser, add_data_parser, add_studio_parser):
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (also raised as ``SystemExit`` by argparse)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in SAMPLING_COMMANDS:
        keep_freed_memory()  # this process samples: tensor memory is reused from step to step
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"{PROG}: error: {one_line(err)}\n")
    except RunStopped as err:
        parser.exit(1, f"{PROG}: error: {one_line(err)}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"{PROG}: interrupted\n")
