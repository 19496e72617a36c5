"""``videofusion train``: flags over ``TrainConfig``, which ``--config`` and the flags set."""

from __future__ import annotations

import argparse

from videofusion.choices import (
    BETA_SCHEDULES,
    CONDITIONS,
    LOSS_WEIGHTINGS,
    LR_SCHEDULERS,
    MIXED_PRECISION,
    MODEL_KINDS,
    RESIDUAL_INPUTS,
)
from videofusion.safety import finite_float

from .arguments import PROG, widths


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
    g.add_argument("--vae", help="train in latent space: an AutoencoderKL folder or a folder "
                                 "with vae/ (Stable Diffusion, 'videofusion train-vae' output)")
    g.add_argument("--vae-slice", type=int, help="frames per VAE encode call (memory bound)")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=MODEL_KINDS)
    g.add_argument("--lambda", dest="lambda_", type=finite_float, metavar="LAMBDA",
                   help="share of each frame's noise common to the clip (spec §1), in [0, 1]")
    g.add_argument("--condition", choices=CONDITIONS,
                   help="class+text: both, each dropped independently (either alone at sampling)")
    g.add_argument("--residual-input", choices=RESIDUAL_INPUTS)
    g.add_argument("--base-channels", type=widths, help="e.g. 32,64,64")
    g.add_argument("--residual-channels", type=widths, help="e.g. 16,32,64")
    g.add_argument("--layers-per-block", type=int)
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument("--text-encoder",
                   help="a CLIP text encoder folder (or one with text_encoder/ + tokenizer/) "
                        "for text conditioning; default: the offline MiniLM encoder")
    g = p.add_argument_group("stages (spec §3)")
    g.add_argument("--base-pretrain-steps", type=int,
                   help="stage 1: image-diffusion steps of the base generator on single frames")
    g.add_argument("--image-frames-per-clip", type=int,
                   help="stage 1: frames per clip in the image batch (default 1)")
    g.add_argument("--loss-weighting", choices=LOSS_WEIGHTINGS,
                   help="weighting over timesteps, both stages (default epsilon: spec §3)")
    g.add_argument("--snr-gamma", type=finite_float,
                   help="the cap of min-snr and v weighting (default 5)")
    g.add_argument("--base-from", help="stage 1 instead: a pretrained diffusers image UNet folder")
    g.add_argument("--init-from",
                   help="fine-tune: a VideoFusionPipeline folder (e.g. a run's pipeline/) whose "
                        "networks start the run; the config must build the same networks")
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
    g.add_argument("--learning-rate", "--lr", dest="learning_rate", type=finite_float)
    g.add_argument("--weight-decay", type=finite_float)
    g.add_argument("--lr-scheduler", choices=LR_SCHEDULERS)
    g.add_argument("--lr-warmup-steps", type=int)
    g.add_argument("--max-grad-norm", type=finite_float)
    g.add_argument("--ema-decay", type=finite_float, help="0 turns EMA off")
    g.add_argument("--cond-drop", type=finite_float,
                   help="odds of the null condition, for classifier-free guidance")
    g.add_argument("--class-drop", type=finite_float,
                   help="class+text: odds of the null class label (default: --cond-drop)")
    g.add_argument("--mixed-precision", choices=MIXED_PRECISION,
                   help="GPU only; CPU runs stay fp32")
    g.add_argument("--beta-schedule", choices=BETA_SCHEDULES,
                   help="DDPM noise schedule (Stable Diffusion: scaled_linear 0.00085 .. 0.012)")
    g.add_argument("--beta-start", type=finite_float)
    g.add_argument("--beta-end", type=finite_float)
    g.add_argument("--seed", type=int)
    g = p.add_argument_group("outputs")
    g.add_argument("--output-dir")
    g.add_argument("--checkpoint-every", type=int)
    g.add_argument("--checkpoints-total-limit", type=int)
    g.add_argument("--sample-every", type=int)
    g.add_argument("--sample-num", type=int)
    g.add_argument("--sample-steps", type=int)
    g.add_argument("--sample-guidance", type=finite_float)
    g.add_argument("--log-every", type=int)
    g.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in OUTPUT/checkpoints (settings "
                        "that change the model, data or objective may not change)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run in OUTPUT; it is deleted once this run has written "
                        "its first checkpoint")
    g.add_argument("--max-nonfinite-steps", type=int,
                   help="stop after this many steps in a row with a non-finite loss or "
                        "gradient norm, each skipped (default 5)")
    g.add_argument("--stop-at-step", type=int,
                   help="checkpoint and exit at this global step (continue with --resume)")
    g.add_argument("--raw-weights", action="store_true",
                   help="the pipeline written now holds the raw weights, not the EMA; unlike "
                        "--ema-decay 0 the run keeps its EMA")
    p.set_defaults(handler=run_train)
    return p


def run_train(args: argparse.Namespace) -> int:
    from videofusion.config import TrainConfig
    from videofusion.train import train

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "handler", "config")}
    config = TrainConfig.resolve(getattr(args, "config", None), flags)
    from accelerate import PartialState

    result = train(config)
    if PartialState().is_main_process:
        print(f"{PROG}: wrote {result}")
    return 0
