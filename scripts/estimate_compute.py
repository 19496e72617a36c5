"""Estimate the compute of each config in configs/ at full size (docs/training.md, "Configs").

Nothing is trained and no weights are allocated: the networks are built on PyTorch's ``meta``
device, and ``FlopCounterMode`` counts the FLOPs of one forward + backward pass of each stage's
loss (plus the frozen VAE's encoder for latent configs). Seconds then come from two rates:

- CPU: the rate measured here, the FLOPs of one stage-2 step of configs/moving_digits_small.yaml
  divided by its measured seconds per step (``--cpu-seconds-per-step``, docs/training.md);
- GPU: an assumed sustained rate (``--gpu-tflops``, default 100 TFLOP/s: about a third of an
  A100's bf16 peak), which is an assumption, not a measurement.

Usage: python scripts/estimate_compute.py [--json OUT]
Configs with ``base_from`` and/or ``vae`` pointing at Stable Diffusion use SD 1.x's published
UNet and VAE shapes (the weights are not needed to count).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from videofusion.config import TrainConfig
from videofusion.models.factory import build_model, build_residual, count_parameters
from videofusion.models.videofusion import VideoFusionModel
from videofusion.objective import diffusion_loss, image_diffusion_loss

ROOT = Path(__file__).resolve().parents[1]
SD_UNET = dict(  # Stable Diffusion 1.x unet/config.json
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
SD_VAE = dict(  # Stable Diffusion 1.x vae/config.json
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
)
CLIP_L_TEXT_PARAMETERS = 123_060_480  # CLIP ViT-L/14 text tower (frozen; encoded once/caption)
NUM_CLASSES = {"ucf101": 101}


def networks(config: TrainConfig):
    """The model (and VAE) of ``config`` on the meta device; the model's channels and side."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        vae = AutoencoderKL(**SD_VAE) if config.vae else None
        factor = 2 ** (len(SD_VAE["block_out_channels"]) - 1) if vae else 1
        channels = SD_VAE["latent_channels"] if vae else config.channels
        side = config.resolution // factor
        layout = config.data_options.get("layout", "")
        text_dim = SD_UNET["cross_attention_dim"] if config.text_encoder else 384
        if config.base_from:
            cond = {"cross_attention_dim": text_dim if "text" in config.condition else None,
                    "num_classes": None}
            residual = build_residual(channels, config.residual_channels,
                                      config.layers_per_block, **cond)
            model = VideoFusionModel(residual, UNet2DConditionModel(**SD_UNET),
                                     config.residual_input)
        else:
            model = build_model(
                config.model, sample_size=side, channels=channels, condition=config.condition,
                num_classes=NUM_CLASSES.get(layout, 10), text_dim=text_dim,
                base_channels=config.base_channels, residual_channels=config.residual_channels,
                layers_per_block=config.layers_per_block, residual_input=config.residual_input)
    return model, vae, channels, side, text_dim


def step_flops(config: TrainConfig) -> dict:
    """FLOPs of one optimizer step of each stage (forward + backward, VAE encoder forward)."""
    model, vae, channels, side, text_dim = networks(config)
    batch = config.batch_size * config.gradient_accumulation_steps
    alphas = torch.linspace(0.999, 0.01, config.num_train_timesteps)  # real: indexed by value
    cond = {}
    if "class" in config.condition:
        cond["class_labels"] = torch.zeros(batch, dtype=torch.long, device="meta")
    if "text" in config.condition:
        tokens = 77 if config.text_encoder else 32
        cond["encoder_hidden_states"] = torch.zeros(batch, tokens, text_dim, device="meta")
    lambdas = model.lambdas(config.frames, config.lambda_)  # real: validated by value
    video = torch.zeros(batch, channels, config.frames, side, side, device="meta")

    def count(work) -> int:
        with FlopCounterMode(display=False) as counter:
            work()
        return counter.get_total_flops()

    joint = count(lambda: diffusion_loss(model, video, alphas, lambdas, **cond).loss.backward())
    image = 0
    if config.base_pretrain_steps:
        image = count(lambda: image_diffusion_loss(model.base, video[:, :, 0], alphas, **cond)
                      .backward())
    encode = 0  # per frame; stage 2 encodes every frame of a clip, stage 1 one frame
    if vae is not None:
        pixels = torch.zeros(batch, 3, config.resolution, config.resolution, device="meta")
        encode = count(lambda: vae.encode(pixels))
    return {"joint": joint + encode * config.frames, "image": image + encode, "parameters": {
        "base": count_parameters(model.base), "residual": count_parameters(model.residual),
        "vae": count_parameters(vae), "text_encoder": CLIP_L_TEXT_PARAMETERS
        if config.text_encoder else 0}}


def estimate(path: Path, cpu_gflops: float, gpu_tflops: float) -> dict:
    config = TrainConfig.from_yaml(path)
    flops = step_flops(config)
    total = flops["image"] * config.base_pretrain_steps + flops["joint"] * config.max_steps
    trained = flops["parameters"]["base"] + flops["parameters"]["residual"]
    return {
        "config": path.name, "parameters": flops["parameters"], "trained_parameters": trained,
        "global_batch": config.batch_size * config.gradient_accumulation_steps,
        "steps": {"image": config.base_pretrain_steps, "joint": config.max_steps},
        "tflop_per_step": {"image": flops["image"] / 1e12, "joint": flops["joint"] / 1e12},
        "total_pflop": total / 1e15,
        "cpu_years": total / (cpu_gflops * 1e9) / (365 * 86400),
        "gpu_hours": total / (gpu_tflops * 1e12) / 3600,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-seconds-per-step", type=float, default=6.3,
                        help="measured stage-2 seconds per step of moving_digits_small.yaml")
    parser.add_argument("--gpu-tflops", type=float, default=100.0)
    parser.add_argument("--json", help="write the estimates here")
    args = parser.parse_args()
    reference = step_flops(TrainConfig.from_yaml(ROOT / "configs" / "moving_digits_small.yaml"))
    cpu_gflops = reference["joint"] / args.cpu_seconds_per_step / 1e9
    print(f"CPU rate: {reference['joint'] / 1e9:.1f} GFLOP per moving_digits_small step / "
          f"{args.cpu_seconds_per_step} s = {cpu_gflops:.1f} GFLOP/s; GPU rate assumed "
          f"{args.gpu_tflops} TFLOP/s")
    rows = []
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        row = estimate(path, cpu_gflops, args.gpu_tflops)
        rows.append(row)
        print(f"{row['config']:<28} trained params {row['trained_parameters'] / 1e6:7.1f} M  "
              f"step {row['tflop_per_step']['joint']:8.3f} TFLOP  total "
              f"{row['total_pflop']:10.1f} PFLOP  CPU {row['cpu_years']:9.2f} years  "
              f"GPU {row['gpu_hours']:8.1f} h")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu_gflops": cpu_gflops,
                                               "gpu_tflops": args.gpu_tflops,
                                               "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
