"""The VAE of latent training: load a user's ``AutoencoderKL``, encode clips, train a small one.

Latent VideoFusion (spec notation: the frames x^i may be VAE latents) diffuses
``vae.encode(frame).latent_dist.mean * scaling_factor`` instead of pixels. The mean, not a
posterior sample: the posterior noise is drawn independently per frame, so the residual generator
would see it as frame-to-frame flicker to be modelled, and it would be one more random stream that
exact resume has to replay. The decoder was trained on posterior samples around that mean, so it
decodes means well (``train_vae`` reports the mean posterior std next to the latents' std).

``train_vae`` trains a small diffusers ``AutoencoderKL`` on a dataset's frames with an L1 + L2
reconstruction loss plus a small KL term (``kl_weight``, 1e-6 as in Stable Diffusion's
autoencoder). L2 because L1 alone pulls every error equally, so on mostly-black frames the few
badly wrong pixels of a small coloured object learn slowly: on 32 px moving digits, L1 alone
reconstructed grey digits (red ones vanished) at 20.8 dB after 2000 steps, L1 + L2 coloured ones
at 25.6 dB after 600 (docs/training.md). There is no GAN or LPIPS loss: those sharpen textures
of natural images at high resolution; the small datasets this is meant for reconstruct well
without them, and both would add a discriminator and pretrained perceptual weights (not available
offline). After training, ``scaling_factor`` is set to 1 / (std of the latents of a few
batches), as Stable Diffusion's 0.18215 was, so the diffusion model sees latents of unit variance
like its pixel-space noise.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL

from . import checkpoint

VAE_SUBFOLDER = "vae"


def load_vae(path: str | Path) -> AutoencoderKL:
    """An ``AutoencoderKL`` from a local folder: the VAE folder itself or a folder with ``vae/``
    (a diffusers pipeline such as Stable Diffusion, or a ``videofusion train-vae`` output)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"vae: no such folder: {path}")
    if (path / VAE_SUBFOLDER / "config.json").is_file():
        path = path / VAE_SUBFOLDER
    config = path / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"vae: no AutoencoderKL config.json in {path} or {path}/vae")
    name = json.loads(config.read_text()).get("_class_name")
    if name != "AutoencoderKL":
        raise ValueError(f"vae: {config} holds a {name}, not an AutoencoderKL")
    return AutoencoderKL.from_pretrained(path)


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent along each side (as ``VideoFusionPipeline.vae_scale_factor``)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def encode_frames(vae: AutoencoderKL, images: torch.Tensor, slice_size: int = 8) -> torch.Tensor:
    """Images ``(N, C, H, W)`` in [-1, 1] -> scaled posterior means, ``slice_size`` at a time."""
    dtype = next(vae.parameters()).dtype
    latents = [vae.encode(chunk.to(dtype)).latent_dist.mean
               for chunk in images.split(slice_size)]
    return torch.cat(latents).float() * vae.config.scaling_factor


def encode_video(vae: AutoencoderKL, video: torch.Tensor, slice_size: int = 8) -> torch.Tensor:
    """Clips ``(B, C, F, H, W)`` in [-1, 1] -> latents ``(B, c, F, h, w)``, frames in slices."""
    b, c, f = video.shape[:3]
    flat = video.transpose(1, 2).reshape(b * f, c, *video.shape[3:])
    latents = encode_frames(vae, flat, slice_size)
    return latents.view(b, f, *latents.shape[1:]).transpose(1, 2)


def build_vae(image_channels: int = 3, latent_channels: int = 4,
              block_out_channels: tuple[int, ...] | list[int] = (32, 64),
              layers_per_block: int = 1, sample_size: int = 32) -> AutoencoderKL:
    """A small ``AutoencoderKL``: one down-sampling by 2 per block after the first."""
    widths = tuple(block_out_channels)
    return AutoencoderKL(
        in_channels=image_channels, out_channels=image_channels, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths),
        block_out_channels=widths, layers_per_block=layers_per_block,
        norm_num_groups=min(32, widths[0]), sample_size=sample_size,
    )


@dataclass
class VAETrainConfig:
    """One ``train_vae`` run. ``out`` gets ``vae/`` (the model), ``checkpoints/`` and
    ``vae_summary.json``; ``--vae OUT`` then finds the model."""

    data: str
    out: str
    resolution: int = 32
    image_channels: int = 3
    latent_channels: int = 4
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64])
    layers_per_block: int = 1
    steps: int = 2000
    batch_size: int = 16
    learning_rate: float = 5e-4
    kl_weight: float = 1e-6
    held_out: int = 16
    scale_batches: int = 4
    checkpoint_every: int = 500
    seed: int = 0
    data_options: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    stop_at_step: int | None = None

    def validate(self) -> VAETrainConfig:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        for name in ("steps", "batch_size", "latent_channels", "layers_per_block", "held_out",
                     "scale_batches", "checkpoint_every"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        need(self.image_channels in (1, 3),
             f"image channels must be 1 or 3, got {self.image_channels}")
        need(self.learning_rate > 0, f"learning rate must be > 0, got {self.learning_rate}")
        need(self.kl_weight >= 0, f"kl_weight must be >= 0, got {self.kl_weight}")
        widths = self.block_out_channels
        need(len(widths) >= 1 and all(w >= 8 and w % 8 == 0 for w in widths),
             f"block channels must be multiples of 8, got {widths}")
        factor = 2 ** (len(widths) - 1)
        need(self.resolution % factor == 0,
             f"resolution {self.resolution} is not divisible by the VAE's factor {factor}")
        if self.stop_at_step is not None:
            need(self.stop_at_step >= 1, f"stop_at_step must be >= 1, got {self.stop_at_step}")
        return self


def psnr(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1], measured on the [0, 1] scale over the whole set."""
    mse = (((estimate.clamp(-1, 1) - reference) / 2) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


class _Frames:
    """Single frames of a dataset: train on items ``[0, n - held_out)``, evaluate on the rest.

    Each step's frames are a pure function of ``(seed, step)`` (as in the video trainer), so a
    resumed run sees the frames the uninterrupted run would have seen."""

    def __init__(self, config: VAETrainConfig):
        from .data import build_dataset

        self.dataset = build_dataset(config.data, "train", num_frames=1,
                                     resolution=config.resolution,
                                     channels=config.image_channels, **config.data_options)
        n = len(self.dataset)
        if n < 2:
            raise ValueError(f"data: {config.data!r} needs at least 2 videos (one held out), "
                             f"has {n}")
        self.held_out = min(config.held_out, max(1, n // 10))
        self.train_count = n - self.held_out
        self.seed = config.seed

    def _images(self, indices, epoch: int) -> torch.Tensor:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return torch.stack([self.dataset[int(i)]["video"][:, 0] for i in indices])

    def batch(self, step: int, size: int, stream: int = 0) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, stream, step])
        return self._images(rng.integers(self.train_count, size=size), epoch=step)

    def held_out_images(self) -> torch.Tensor:
        return self._images(range(self.train_count, self.train_count + self.held_out), epoch=0)


def train_vae(config: VAETrainConfig) -> Path:
    """Train as ``config`` says; return the model folder ``out/vae`` (or ``out`` when stopped
    early with ``stop_at_step``; ``resume`` continues)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    config.validate()
    out = Path(config.out)
    checkpoints = out / "checkpoints"
    frames = _Frames(config)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if accelerator.num_processes > 1:
        raise ValueError("train-vae runs as one process (a small model): launch it without "
                         "accelerate launch / torchrun")
    torch.manual_seed(config.seed)
    vae = build_vae(config.image_channels, config.latent_channels, config.block_out_channels,
                    config.layers_per_block, config.resolution)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.learning_rate)
    module, optimizer = accelerator.prepare(vae, optimizer)
    start, elapsed_before = 0, 0.0
    # the newest checkpoint that loads (a corrupt one falls back, an unsafe one stops)
    resumed = checkpoint.resume_checkpoint(
        checkpoints, lambda folder: checkpoint.load_checkpoint(accelerator, folder)) \
        if config.resume else None
    if resumed is not None:
        latest, state = resumed
        start, elapsed_before = state["step"], state["elapsed_seconds"]
        tqdm.write(f"videofusion: resumed from {latest} at step {start}")
    elif config.resume:
        tqdm.write(f"videofusion: no checkpoint in {checkpoints}: starting fresh")
    checkpoint.remove_stale(checkpoints)
    end = config.steps if config.stop_at_step is None else min(config.steps, config.stop_at_step)
    pixels = config.image_channels * config.resolution ** 2
    progress = tqdm(total=config.steps, initial=start, desc="training the VAE",
                    dynamic_ncols=True)
    started = time.perf_counter()
    for step in range(start, end):
        images = frames.batch(step, config.batch_size).to(accelerator.device)
        posterior = module.encode(images).latent_dist
        noise = torch.Generator(accelerator.device).manual_seed(
            int(np.random.SeedSequence([config.seed, 2, step]).generate_state(1)[0]))
        reconstruction = module.decode(posterior.sample(generator=noise)).sample
        error = reconstruction - images
        rec = error.abs().mean() + error.pow(2).mean()
        kl = posterior.kl().mean() / pixels  # per pixel, as SD's sum-over-pixels ratio
        accelerator.backward(rec + config.kl_weight * kl)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        progress.update(1)
        progress.set_postfix(rec=f"{rec.item():.4f}", kl=f"{kl.item():.3g}")
        done = step + 1
        if done % config.checkpoint_every == 0 or done == end:
            checkpoint.save_checkpoint(
                accelerator, checkpoints, done,
                {"elapsed_seconds": elapsed_before + time.perf_counter() - started}, keep=2)
    progress.close()
    if end < config.steps:
        tqdm.write(f"videofusion: stopped at step {end} of {config.steps}; "
                   "continue with --resume")
        return out
    return _finish(accelerator.unwrap_model(module).eval(), frames, config, out,
                   elapsed_before + time.perf_counter() - started)


@torch.no_grad()
def _finish(vae: AutoencoderKL, frames: _Frames, config: VAETrainConfig, out: Path,
            elapsed: float) -> Path:
    """Set ``scaling_factor`` from the latents' std, measure PSNR, save the model atomically."""
    device = next(vae.parameters()).device
    latents, stds = [], []
    for i in range(config.scale_batches):
        images = frames.batch(i, config.batch_size, stream=1).to(device)
        posterior = vae.encode(images).latent_dist
        latents.append(posterior.mean)
        stds.append(posterior.std.mean())
    std = torch.cat(latents).float().std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    held = frames.held_out_images().to(device)
    decoded = torch.cat([vae.decode(z / vae.config.scaling_factor).sample
                         for z in encode_frames(vae, held).split(8)])
    summary = {
        "steps": config.steps,
        "wall_clock_seconds": round(elapsed, 2),
        "scaling_factor": vae.config.scaling_factor,
        "latent_std": std,
        "posterior_std": torch.stack(stds).mean().item(),
        "held_out_frames": len(held),
        "held_out_psnr_db": psnr(held, decoded),
        "scale_factor": vae_scale_factor(vae),
        "settings": {k: v for k, v in asdict(config).items()
                     if k not in ("resume", "stop_at_step")},
    }
    target = out / VAE_SUBFOLDER
    with checkpoint.atomic_directory(target) as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)
    checkpoint.atomic_write_text(out / "vae_summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"videofusion: held-out reconstruction PSNR {summary['held_out_psnr_db']:.2f} dB on "
          f"{len(held)} frames; scaling_factor {summary['scaling_factor']:.4f} "
          f"(latent std {std:.4f}, posterior std {summary['posterior_std']:.2e})")
    return target
