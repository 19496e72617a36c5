"""What a training run shows and leaves besides its checkpoints: ``metrics.jsonl`` and
TensorBoard, the loss curve, preview samples, the exported pipeline and ``train_summary.json``.

Only the main process writes; the loop calls in here and stays free of output code.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from . import checkpoint
from .config import TrainConfig
from .models.factory import count_parameters

LOG_FILE = "metrics.jsonl"
LOSSES = ("loss", "key_frame_loss", "non_key_frame_loss")


class MetricsLog:
    """One ``metrics.jsonl`` record per optimizer step, read off the device in batches.

    ``record`` keeps a step's losses on the device; ``flush`` averages the pending ones over the
    processes and brings them to the host in one transfer, writes their lines and logs the
    ``log_every`` steps to TensorBoard. So the host waits for the device only when the loop
    flushes (at ``log_every`` steps and before checkpoints, previews and the end)."""

    def __init__(self, output: Path, accelerator: Accelerator, config: TrainConfig):
        self.path, self.accelerator, self.config = output / LOG_FILE, accelerator, config
        self.pending: list[tuple[int, str, torch.Tensor, dict]] = []

    def print(self, message: str) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(f"videofusion: {message}")

    def trim(self, start_step: int) -> None:
        """Drop log lines past the resumed step (written after the last checkpoint)."""
        if not self.accelerator.is_main_process or not self.path.is_file():
            return
        records = [r for r in read_log(self.path) if r["step"] <= start_step]
        checkpoint.atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))

    def record(self, step: int, stage: str, losses: torch.Tensor, **values) -> None:
        """``losses``: this process's ``[loss, key-frame loss, non-key-frame loss]``, on the
        device; ``values``: host numbers (learning rate, seconds, ...)."""
        self.pending.append((step, stage, losses.detach(), values))

    def flush(self) -> float:
        """Write the pending records (every process must call it); the last loss, or NaN."""
        if not self.pending:
            return math.nan
        losses = self.accelerator.reduce(torch.stack([p[2] for p in self.pending]), "mean")
        losses = losses.tolist()  # (records, 3): the one wait for the device
        records = [{"step": step, "stage": stage, **dict(zip(LOSSES, row, strict=True)), **values}
                   for (step, stage, _, values), row in zip(self.pending, losses, strict=True)]
        self.pending = []
        if self.accelerator.is_main_process:
            with open(self.path, "a") as handle:
                handle.writelines(json.dumps(r) + "\n" for r in records)
            for r in records:
                if r["step"] % self.config.log_every == 0 or \
                        r["step"] == self.config.total_steps:
                    prefix = "image" if r["stage"] == "image" else "train"
                    self.accelerator.log({f"{prefix}/{k}": v for k, v in r.items()
                                          if k not in ("step", "stage")}, step=r["step"])
        return records[-1]["loss"]


def read_log(path: Path) -> list[dict]:
    """The records of ``metrics.jsonl``; a line cut short by a kill mid-write is left out."""
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def smooth(values, window: int = 25) -> np.ndarray:
    """Trailing mean over up to ``window`` points (fewer at the start)."""
    sums = np.cumsum(np.asarray(values, dtype=np.float64))
    counts = np.minimum(np.arange(1, len(sums) + 1), window)
    shifted = np.concatenate([np.zeros(window), sums])[: len(sums)]
    return (sums - shifted) / counts


def plot_loss(output: Path) -> None:
    """``loss_curve.png``: both stages' losses from ``metrics.jsonl``, raw and smoothed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = output / LOG_FILE
    if not path.is_file():
        return
    records = read_log(path)
    fig, ax = plt.subplots(figsize=(7, 4))
    for stage, label in (("image", "stage 1: image loss"), ("joint", "stage 2: video loss"),
                         ("distill", "progressive distillation: student loss")):
        points = [(r["step"], r["loss"]) for r in records if r["stage"] == stage]
        if points:
            steps, losses = zip(*points, strict=True)
            line, = ax.plot(steps, smooth(losses), lw=1.5, label=label)
            ax.plot(steps, losses, lw=0.6, alpha=0.35, color=line.get_color())
    ax.set(xlabel="optimizer step", ylabel="MSE of the noise prediction", yscale="log",
           title="VideoFusion training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(output / "loss_curve.png", dpi=100)
    plt.close(fig)


@contextlib.contextmanager
def ema_weights(model: torch.nn.Module, ema):
    """The EMA weights swapped into ``model`` for the duration (no EMA: the raw ones)."""
    if ema is None:
        yield
        return
    params = list(model.parameters())
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def write_previews(pipe, folder: Path, config: TrainConfig, num_classes: int, captions: list[str],
                   device: torch.device) -> None:
    """``config.sample_num`` GIFs and a contact sheet: one video per label / prompt, or
    unconditional videos, from the run's seed."""
    from .video_io import contact_sheet, write_gif

    kwargs = {}
    if "class" in config.condition:
        kwargs["class_labels"] = [i % num_classes for i in range(config.sample_num)]
    if "text" in config.condition:
        kwargs["prompt"] = captions
    if config.condition == "none":
        kwargs["num_videos"] = config.sample_num
    else:
        kwargs["guidance_scale"] = config.sample_guidance
    frames = pipe(num_frames=config.frames, num_inference_steps=config.sample_steps,
                  generator=torch.Generator(device).manual_seed(config.seed),
                  progress=False, **kwargs).frames
    scale = max(1, 128 // config.resolution)
    for i, video in enumerate(frames):
        write_gif(video, folder / f"video_{i}.gif", scale=scale)
    contact_sheet(frames, folder / "contact_sheet.png", scale=max(1, 64 // config.resolution))


def write_summary(output: Path, config: TrainConfig, model, *, start_step: int, step: int,
                  elapsed_before: float, elapsed: float, num_processes: int, device,
                  latent: dict | None, nonfinite_steps: int, skipped_files: int,
                  pipeline_dir: Path) -> None:
    """``train_summary.json``: how long, how big, how it ended, where the pipeline is."""
    this_run = elapsed - elapsed_before
    # the log may be missing: a checkpoint copied into a new folder and exported there
    log = output / LOG_FILE
    records = read_log(log) if log.is_file() else []
    summary = {
        "steps": step,
        "base_pretrain_steps": config.base_pretrain_steps,
        "joint_steps": 0 if config.distill_from else config.max_steps,
        "distillation": None if config.distill_from is None else {
            "teacher": config.distill_from, "kind": config.distill_kind,
            "rounds": None if config.distill_kind == "guidance" else config.distill_rounds,
            "steps_per_round": config.distill_steps_per_round},
        "wall_clock_seconds": round(elapsed, 2),
        "this_run_steps": step - start_step,
        "this_run_seconds": round(this_run, 2),
        # None when this invocation trained no step (an export with --stop-at-step)
        "seconds_per_step": round(this_run / (step - start_step), 4)
        if step > start_step else None,
        "batch_size_per_process": config.batch_size,
        "global_batch_size": config.batch_size * num_processes
        * config.gradient_accumulation_steps,
        "num_processes": num_processes,
        "device": str(device),
        "frames": config.frames,
        "resolution": config.resolution,
        "latent": latent,
        "parameters": {"base": count_parameters(model.base),
                       "residual": count_parameters(model.residual),
                       "total": count_parameters(model)},
        "final_loss": records[-1]["loss"] if records else math.nan,
        # optimizer steps of the whole run skipped for a non-finite loss or gradient norm
        "nonfinite_steps_skipped": nonfinite_steps,
        # training videos that could not be read (video folders; see their warnings)
        "skipped_files": skipped_files,
        "pipeline": str(pipeline_dir),
    }
    checkpoint.atomic_write_text(output / "train_summary.json",
                                 json.dumps(summary, indent=2) + "\n")


def training_pipeline(config: TrainConfig, model, noise_scheduler, vae, captions,
                      signal_leak_mean: list[float], scheduler=None, **settings):
    """The run's networks as a ``VideoFusionPipeline`` (sharing the weights, not copying them),
    sampled with DDIM on the training schedule, or with ``scheduler``; ``settings`` are more
    of the pipeline's recorded settings (the data's ``class_names``, a distilled student's)."""
    from diffusers import DDIMScheduler

    from .pipeline import VideoFusionPipeline

    # Latents are not confined to [-1, 1]: no clipping of the predicted x_0 there.
    clip_sample = {} if vae is None else {"clip_sample": False}
    if scheduler is None:
        scheduler = DDIMScheduler.from_config(noise_scheduler.config, **clip_sample)
    text = {}
    if captions is not None:
        text["text_encoder_kind"] = captions.kind
        if captions.kind == "clip":  # shipped, so that sampling uses the same encoder
            text.update(text_encoder=captions.encoder.model, tokenizer=captions.encoder.tokenizer)
    return VideoFusionPipeline.from_components(
        residual=model.residual, base=None if model.is_baseline else model.base.unet,
        scheduler=scheduler, vae=vae, **text, **settings,
        residual_input=model.residual_input, sample_size=config.resolution,
        key_frame_correction=model.key_frame_correction,
        default_lambda=0.0 if model.is_baseline else config.lambda_,
        signal_leak_mean=signal_leak_mean,
    )
