"""``videofusion train``: flags over ``TrainConfig``, which ``--config`` and the flags set."""

from __future__ import annotations

import argparse

from videofusion.config import TrainConfig, add_config_arguments

from .arguments import PROG


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
    from videofusion.train import train

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "handler", "config")}
    config = TrainConfig.resolve(getattr(args, "config", None), flags)
    from accelerate import PartialState

    result = train(config)
    if PartialState().is_main_process:
        print(f"{PROG}: wrote {result}")
    return 0
