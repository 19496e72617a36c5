"""``videofusion train-vae``: a small AutoencoderKL on a dataset's frames, for ``train --vae``.

Flags are ``VAETrainConfig``'s fields; unset ones keep its defaults.
"""

from __future__ import annotations

import argparse

from videofusion.config import widths
from videofusion.safety import check_output_dir, float_range

from .arguments import PROG


def add_train_vae_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train-vae", help="train a small VAE for latent-space training",
        description="Train a diffusers AutoencoderKL on single frames (L1 + small KL; no GAN or "
                    "LPIPS), set its scaling_factor to 1/std of the latents and print the "
                    "held-out reconstruction PSNR. Writes OUT/vae (pass --vae OUT to train), "
                    "OUT/checkpoints and OUT/vae_summary.json (docs/training.md). Unset flags "
                    "keep videofusion.vae.VAETrainConfig's defaults.",
        argument_default=argparse.SUPPRESS)
    p.add_argument("--data", required=True, help="'moving-digits' or a folder of videos")
    p.add_argument("--resolution", type=int, required=True, help="frame side in pixels")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int, help="frames per step")
    p.add_argument("--lr", dest="learning_rate", type=float_range(0, low_open=True))
    p.add_argument("--latent-channels", type=int)
    p.add_argument("--block-channels", dest="block_out_channels", type=widths,
                   help="encoder/decoder widths; the VAE halves the side once per extra width "
                        "(default 32,64: factor 2)")
    p.add_argument("--channels", dest="image_channels", type=int,
                   help="image channels, 1 or 3")
    p.add_argument("--kl-weight", type=float_range(0))
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    p.add_argument("--stop-at-step", type=int, help="checkpoint and exit at this step")
    p.set_defaults(handler=run_train_vae)
    return p


def run_train_vae(args: argparse.Namespace) -> int:
    from videofusion.vae import VAETrainConfig, train_vae

    check_output_dir(args.out, "--out")
    config = VAETrainConfig(**{k: v for k, v in vars(args).items()
                               if k not in ("command", "handler")})
    print(f"{PROG}: wrote {train_vae(config)}")
    return 0
