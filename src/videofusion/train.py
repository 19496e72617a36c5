"""The training loop of spec §3, on Hugging Face accelerate.

Two stages share one loop, one optimizer and one global step counter:

1. ``base_pretrain_steps`` steps of image diffusion for the base generator on random single frames
   of the clips (``image_diffusion_loss``), or a pretrained image UNet loaded with ``base_from``;
2. ``max_steps`` steps of joint training with the decomposed loss (``diffusion_loss``): the
   residual generator learns everything temporal, the base generator is fine-tuned through the key
   frame only (stop-gradient), or frozen.

Determinism, which resume and the distributed test rely on: the clips of every batch and every
random number a batch needs (timesteps, noise, condition dropout, stage-1 frame choice) are pure
functions of ``(seed, global step, shard)``, where the ``processes * gradient_accumulation_steps``
shards of a global batch are numbered ``micro_step * processes + rank``. So a resumed run sees the
batches the uninterrupted run would have seen, and 2 processes x batch B take the same gradient
step as 1 process x batch B x 2 accumulation steps.
"""

from __future__ import annotations

import json
import logging
import math
import time
from functools import cached_property, partial
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from . import checkpoint, safety
from .config import RESUMABLE, TrainConfig
from .data import build_dataset
from .models.base import BaseGenerator
from .models.factory import build_model, count_parameters
from .models.videofusion import KEY_FRAME_CHANNEL_INPUTS, VideoFusionModel
from .noise import key_frame_index
from .objective import diffusion_loss, image_diffusion_loss

logger = logging.getLogger(__name__)

EMA_FILE = "ema.safetensors"
TRAINING_STATE_FILE = "training_state.json"


class TrainingDiverged(safety.RunStopped):
    """Too many optimizer steps in a row had a non-finite loss or gradient norm."""


def shard_seed(seed: int, step: int, shard: int, stream: int) -> int:
    """A seed for one shard of one global step; ``stream`` separates independent uses."""
    return int(np.random.SeedSequence([seed, step, shard, stream]).generate_state(1)[0])


def random_frames(video: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` distinct random frames of each clip: ``(B, C, F, H, W)`` -> ``(B, C, k, H, W)``."""
    frames = torch.rand(video.shape[0], video.shape[2], generator=generator)
    frames = frames.argsort(dim=1)[:, :k].to(video.device)  # (B, k)
    clips = torch.arange(video.shape[0], device=video.device)[:, None]
    return video[clips, :, frames].permute(0, 2, 1, 3, 4)  # (B, k, C, H, W) -> (B, C, k, H, W)


class GlobalBatchSampler(Sampler):
    """Yields this process's ``(epoch, index)`` lists, shard after shard, from ``start_step`` on.

    Global sample position ``p`` is clip ``perm_e[p % n]`` of epoch ``e = p // n``, with one
    seeded permutation per epoch; shard ``s`` of step ``t`` holds positions
    ``(t * shards + s) * batch_size ...`` onwards.
    """

    def __init__(self, num_items: int, batch_size: int, num_processes: int, rank: int,
                 accumulation: int, seed: int, start_step: int, end_step: int):
        self.n, self.batch_size = num_items, batch_size
        self.num_processes, self.rank, self.accumulation = num_processes, rank, accumulation
        self.seed, self.start_step, self.end_step = seed, start_step, end_step
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return (self.end_step - self.start_step) * self.accumulation

    def _item(self, position: int) -> tuple[int, int]:
        epoch = position // self.n
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return epoch, int(self._perms[epoch][position % self.n])

    def __iter__(self):
        shards = self.num_processes * self.accumulation
        for step in range(self.start_step, self.end_step):
            for micro in range(self.accumulation):
                first = (step * shards + micro * self.num_processes + self.rank) * self.batch_size
                yield [self._item(first + j) for j in range(self.batch_size)]


class EpochItems(Dataset):
    """``dataset[(epoch, index)]``: tells datasets with random clip starts which epoch it is."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


class TrainingModule(nn.Module):
    """The one module accelerate wraps (DDP), so that both stages' gradients are all-reduced:
    ``image=True`` runs the base generator alone (stage 1), otherwise the full model."""

    def __init__(self, model: VideoFusionModel):
        super().__init__()
        self.model = model

    def forward(self, *args, image: bool = False, **kwargs):
        return self.model.base(*args, **kwargs) if image else self.model(*args, **kwargs)


class CaptionEncoder:
    """Captions -> token states, each unique caption encoded once and cached.

    The offline MiniLM encoder, or a CLIP text encoder from ``clip_path`` (``--text-encoder``),
    padded to the tokenizer's ``model_max_length`` as ``VideoFusionPipeline.encode_prompt`` does,
    so that sampling sees the states training saw."""

    def __init__(self, device: torch.device, clip_path: str | None = None):
        from .text import CLIPTextEncoder, MiniLMTextEncoder, TextEncoder

        self.kind = "minilm" if clip_path is None else "clip"
        if clip_path is None:
            self.encoder = MiniLMTextEncoder()
        else:
            clip = CLIPTextEncoder.from_pretrained(clip_path)
            length = clip.tokenizer.model_max_length
            if length > clip.model.config.max_position_embeddings:
                raise ValueError(f"text_encoder: the tokenizer pads to {length} tokens, the "
                                 f"model takes {clip.model.config.max_position_embeddings}")
            self.encoder = TextEncoder(clip.model, clip.tokenizer, length)
        self.encoder.to(device)
        self.cache: dict[str, torch.Tensor] = {}

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = sorted({c for c in captions if c not in self.cache})
        if missing:
            for caption, states in zip(missing, self.encoder(missing), strict=True):
                self.cache[caption] = states
        return torch.stack([self.cache[c] for c in captions])


class TrainingState:
    """What a resumed run needs besides model, optimizer and RNG: the EMA weights
    (``ema.safetensors``), the EMA counters, the LR schedule of the current stage and the count
    of skipped non-finite steps (``training_state.json``). Written and read here, never pickled,
    so that a checkpoint holds no code (see ``videofusion.checkpoint``)."""

    def __init__(self, ema: EMAModel | None, lr_scheduler):
        self.ema, self.lr_scheduler = ema, lr_scheduler
        self.ema_missing = False  # EMA on now, but the checkpoint was saved without one
        self.nonfinite_steps = 0  # optimizer steps skipped for a non-finite loss or gradient

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        meta = {"lr_scheduler": self.lr_scheduler.state_dict(),
                "nonfinite_steps": self.nonfinite_steps, "ema": None}
        if self.ema is not None:
            ema = dict(self.ema.state_dict())
            shadow = ema.pop("shadow_params")
            save_file({str(i): p.detach().cpu().contiguous() for i, p in enumerate(shadow)},
                      str(folder / EMA_FILE))
            meta["ema"] = ema
        (folder / TRAINING_STATE_FILE).write_text(json.dumps(meta, indent=2))

    def load(self, folder: Path, device: torch.device) -> None:
        from safetensors.torch import load_file

        path = folder / TRAINING_STATE_FILE
        try:
            meta = json.loads(path.read_text())
            self.ema_missing = self.ema is not None and meta["ema"] is None
            if self.ema is not None and not self.ema_missing:
                tensors = load_file(str(folder / EMA_FILE), device=str(device))
                shadow = [tensors[str(i)] for i in range(len(tensors))]
                if [s.shape for s in shadow] != [s.shape for s in self.ema.shadow_params]:
                    raise ValueError(f"{folder / EMA_FILE} does not match the model")
                self.ema.load_state_dict({**meta["ema"], "shadow_params": shadow})
            self.lr_scheduler.load_state_dict(meta["lr_scheduler"])
            self.nonfinite_steps = int(meta["nonfinite_steps"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise checkpoint.CorruptCheckpoint(
                f"checkpoint {folder}: bad trainer state ({type(err).__name__}: {err})") from err


def train(config: TrainConfig) -> Path:
    """Train as ``config`` says; return the final pipeline folder (``output_dir/pipeline``).

    With ``config.stop_at_step`` the run checkpoints, writes the pipeline of that step's (EMA,
    or with ``raw_weights`` raw) weights, and returns the output folder instead; ``--resume``
    continues it. Stopping at the step of the last checkpoint exports a killed run's weights
    without training further.
    """
    safety.check_output_dir(config.validate().output_dir, "output_dir")
    trainer = Trainer(config)
    try:
        return trainer.run()
    finally:
        trainer.lock.release()


class Trainer:
    """Builds everything from a ``TrainConfig`` and runs both stages."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.output = Path(config.output_dir)
        self.checkpoints = self.output / "checkpoints"
        cpu = not torch.cuda.is_available()  # also makes torchrun on CPU use DDP over gloo
        mixed_precision = config.mixed_precision
        if cpu and mixed_precision != "no":
            logger.warning("mixed precision %s is not used on CPU: training in fp32",
                           mixed_precision)
            mixed_precision = "no"
        self.accelerator = Accelerator(
            cpu=cpu, gradient_accumulation_steps=config.gradient_accumulation_steps,
            mixed_precision=mixed_precision, log_with="tensorboard", project_dir=str(self.output),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        self.lock = self._guard_output()
        try:
            self._setup()
        except BaseException:
            self.lock.release()
            raise

    def _guard_output(self) -> safety.RunLock:
        """The checks before any work (docs/training.md, "Safety"): a changed config on
        ``resume`` and a run in the way are refused; then the folder's lock is taken (main
        process). ``overwrite`` sets the old run aside later, in ``run``, once all is built."""
        config, accelerator = self.config, self.accelerator
        saved = self.output / "config.yaml"
        if config.resume and saved.is_file():
            changes = config.resume_changes(TrainConfig.from_yaml(saved))
            if changes:
                raise ValueError(f"resume: {saved} was trained with other settings ("
                                 f"{'; '.join(changes)}); only {', '.join(RESUMABLE)} may "
                                 "change on resume: train into a new --output-dir instead")
        found = safety.holds_run(self.output)
        if found and not config.resume and not config.overwrite:
            raise ValueError(f"output_dir: {self.output} holds a run ({', '.join(found)}): "
                             "continue it with --resume, or replace it with --overwrite")
        lock, error = safety.RunLock(self.output), ""
        if accelerator.is_main_process:
            try:
                lock.acquire()
            except ValueError as err:
                error = str(err)
        failed = accelerator.gather(torch.tensor([float(bool(error))],
                                                 device=accelerator.device))
        if failed.any():
            raise ValueError(error or f"output_dir: {self.output} is in use by another run")
        return lock

    def _setup(self) -> None:
        config = self.config
        set_seed(config.seed)
        self.device = self.accelerator.device
        self.vae = self._load_vae()
        self.dataset = build_dataset(config.data, "train", config.frames, config.resolution,
                                     channels=config.channels, **config.data_options)
        if len(self.dataset) == 0:
            raise ValueError(f"data: {config.data!r} holds no clips")
        self.num_classes = getattr(self.dataset, "num_classes", 0)
        if "class" in config.condition and not self.num_classes:
            raise ValueError(f"condition 'class' needs labelled data; {config.data!r} has none")
        self.captions = (CaptionEncoder(self.device, config.text_encoder)
                         if "text" in config.condition else None)
        self.model = self._build_model()
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps,
                                             beta_schedule=config.beta_schedule,
                                             beta_start=config.beta_start,
                                             beta_end=config.beta_end)
        self.alphas_cumprod = self.noise_scheduler.alphas_cumprod.to(self.device)
        self.lambdas = self.model.lambdas(config.frames, config.lambda_).to(self.device)

    def _load_vae(self):
        """The frozen VAE of a latent-space run, and the size of what the model sees: the
        latent channels and ``resolution / scale factor`` (pixels without a VAE)."""
        config = self.config
        self.model_channels, self.model_resolution = config.channels, config.resolution
        if not config.vae:
            return None
        from .vae import load_vae, vae_scale_factor

        vae = load_vae(config.vae).to(self.device).eval().requires_grad_(False)
        factor = vae_scale_factor(vae)
        if vae.config.in_channels != config.channels:
            raise ValueError(f"vae: takes {vae.config.in_channels}-channel images, the data has "
                             f"{config.channels} channels")
        if config.resolution % factor:
            raise ValueError(f"resolution {config.resolution} is not divisible by the VAE's "
                             f"factor {factor}")
        self.model_channels = vae.config.latent_channels
        self.model_resolution = config.resolution // factor
        return vae

    def _build_model(self) -> VideoFusionModel:
        config = self.config
        model = build_model(
            config.model, sample_size=self.model_resolution, channels=self.model_channels,
            condition=config.condition, num_classes=self.num_classes or 10,
            text_dim=self.captions.dim if self.captions else 384,
            base_channels=config.base_channels, residual_channels=config.residual_channels,
            layers_per_block=config.layers_per_block, residual_input=config.residual_input,
        )
        if config.base_from:
            model.base = BaseGenerator.from_pretrained(config.base_from)
            self._check_base(model.base)
        elif config.init_from:
            self._init_from(model, Path(config.init_from))
        elif not model.is_baseline and config.base_pretrain_steps == 0 and \
                not config.base_from_scratch:
            logger.warning("stage 1 skipped: the base generator starts from random weights "
                           "(pass --base-pretrain-steps N or --base-from PATH; "
                           "--base-from-scratch says this is intended)")
        model.check_resolution(self.model_resolution, self.model_resolution)
        if config.gradient_checkpointing:
            model.residual.enable_gradient_checkpointing()
            if model.base is not None:
                model.base.unet.enable_gradient_checkpointing()
        return model

    def _init_from(self, model: VideoFusionModel, folder: Path) -> None:
        """Fine-tuning: copy a trained pipeline's weights into the networks the config builds,
        so the run's config stays the one description of its model (a mismatch is an error).

        Two changes of residual input are allowed: a ``paper`` model fine-tuned with a key-frame
        input (``with_key_frame``, ``key_frame_estimate``) gets zero weights on the residual
        generator's new input channels, so the run starts from exactly the parent's
        predictions; and one key-frame input may replace the other (same shapes, weights kept)."""
        from safetensors.torch import load_file

        if not (folder / "residual" / "config.json").is_file():
            raise FileNotFoundError(f"--init-from: no VideoFusionPipeline in {folder} "
                                    "(no residual/config.json)")
        if (folder / "base").is_dir() == model.is_baseline:
            raise ValueError(f"--init-from: {folder} is a "
                             f"{'VideoFusion' if model.is_baseline else 'VDM'} model, the config "
                             f"builds a {'VDM' if model.is_baseline else 'VideoFusion'} one")
        trained = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        config = self.config
        for key in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end"):
            if trained.get(key) != getattr(config, key):
                raise ValueError(f"--init-from: {folder} was trained with {key} "
                                 f"{trained.get(key)!r}, the config has {getattr(config, key)!r}")
        index = json.loads((folder / "model_index.json").read_text())
        parent_input = index.get("residual_input", "paper")
        key_inputs = KEY_FRAME_CHANNEL_INPUTS
        widen = parent_input == "paper" and config.residual_input in key_inputs
        swap = parent_input in key_inputs and config.residual_input in key_inputs
        if parent_input != config.residual_input and not (widen or swap):
            raise ValueError(f"--init-from: {folder} was trained with residual_input "
                             f"{parent_input!r}, the config has {config.residual_input!r}")
        networks = {"residual": model.residual}
        if model.base is not None:
            networks["base"] = model.base.unet
        for name, network in networks.items():
            state = load_file(folder / name / "diffusion_pytorch_model.safetensors")
            if name == "residual" and widen and "conv_in.weight" in state:
                weight = state["conv_in.weight"]  # (out, C, kh, kw) -> (out, 2C, kh, kw)
                state["conv_in.weight"] = torch.cat([weight, torch.zeros_like(weight)], dim=1)
            try:
                network.load_state_dict(state)  # fp16 storage is cast to the model's fp32
            except RuntimeError:
                raise ValueError(f"--init-from: {folder / name} does not match the {name} "
                                 "generator of the config (widths, layers or conditioning "
                                 "differ)") from None

    def _check_base(self, base: BaseGenerator) -> None:
        config, unet = self.config, base.unet.config
        if unet.in_channels != self.model_channels:
            space = "the VAE's latents" if self.vae is not None else "the data"
            raise ValueError(f"--base-from has {unet.in_channels} channels, {space} "
                             f"{self.model_channels}")
        if base.is_class_conditioned != ("class" in config.condition) or \
                base.is_text_conditioned != ("text" in config.condition):
            raise ValueError(f"--base-from is not conditioned like --condition {config.condition}")
        if self.captions is not None and unet.cross_attention_dim != self.captions.dim:
            raise ValueError(f"--base-from attends to {unet.cross_attention_dim}-d text states, "
                             f"the text encoder gives {self.captions.dim}")

    # ---- the loop -----------------------------------------------------------------------

    def run(self) -> Path:
        config, accelerator = self.config, self.accelerator
        start_step, elapsed_before = 0, 0.0
        module = TrainingModule(self.model)
        optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
            betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon,
        )
        self.module, self.optimizer = accelerator.prepare(module, optimizer)
        self.ema = (EMAModel(self.model.parameters(), decay=config.ema_decay, use_ema_warmup=True,
                             power=3 / 4) if config.ema_decay > 0 else None)
        self.state = TrainingState(self.ema, self._lr_scheduler(self._stage(0)))
        resumed = checkpoint.resume_checkpoint(self.checkpoints, self._load) \
            if config.resume else None
        if config.resume and resumed is None:
            self._print(f"no checkpoint in {self.checkpoints}: starting fresh")
        if resumed is not None:
            latest, saved = resumed
            start_step, elapsed_before = saved["step"], saved["elapsed_seconds"]
            self._print(f"resumed from {latest} at step {start_step}")
            if self.state.ema_missing:
                self.ema.shadow_params = [p.detach().clone() for p in self.model.parameters()]
                self._print("the checkpoint holds no EMA: the EMA starts from its weights")
        if accelerator.is_main_process:  # only now: every check has passed
            if config.overwrite and safety.holds_run(self.output):
                aside = safety.set_aside(self.output)
                self._print(f"--overwrite: the old run waits in {aside} until this run's first "
                            "checkpoint, then it is deleted")
            checkpoint.remove_stale(self.checkpoints)
            config.save(self.output / "config.yaml")
        accelerator.init_trackers("tensorboard")
        self._trim_log(start_step)

        end_step = config.total_steps
        if config.stop_at_step is not None:
            end_step = min(end_step, config.stop_at_step)
        loader = self._loader(start_step, end_step)
        progress = tqdm(total=config.total_steps, initial=start_step, desc="training",
                        disable=not accelerator.is_main_process, dynamic_ncols=True)
        started = time.perf_counter()
        step = start_step
        batches = iter(loader)
        streak = 0  # optimizer steps skipped in a row
        while step < end_step:
            stage = self._stage(step)
            metrics = self._optimizer_step(batches, step, stage)
            step += 1
            streak = streak + 1 if "skipped" in metrics else 0
            if streak:
                self.state.nonfinite_steps += 1
                self._print(f"step {step}: non-finite loss or gradient norm, update skipped "
                            f"({streak} in a row, at most {config.max_nonfinite_steps})")
            if streak >= config.max_nonfinite_steps:
                progress.close()  # the error starts a line of its own
                last = checkpoint.latest_checkpoint(self.checkpoints)
                raise TrainingDiverged(
                    f"training stopped at step {step}: the loss or gradient norm was not finite "
                    f"for {streak} steps in a row (max_nonfinite_steps); nothing was saved, "
                    f"the last good checkpoint is {last}")
            if step == config.base_pretrain_steps:
                # before any checkpoint of this step, so that resuming here finds stage 2's
                self.state.lr_scheduler = self._lr_scheduler("joint")
            progress.update(1)
            progress.set_postfix(stage=stage, loss=f"{metrics['loss']:.4f}")
            self._log(step, stage, {**metrics, "seconds": round(
                elapsed_before + time.perf_counter() - started, 3)})
            # a skipped step changed no weight: its checkpoint would only rotate out good ones
            if (step % config.checkpoint_every == 0 or step == end_step) and not streak:
                self._checkpoint(step, elapsed_before + time.perf_counter() - started)
            if stage == "joint" and (step % config.sample_every == 0 or
                                     step == config.total_steps):
                self._sample(step)
        progress.close()
        elapsed = elapsed_before + time.perf_counter() - started
        if accelerator.is_main_process:
            self._plot_loss()
        pipeline_dir = self._save_pipeline()
        if accelerator.is_main_process:
            self._write_summary(start_step, step, elapsed_before, elapsed, pipeline_dir)
        accelerator.end_training()
        if step < config.total_steps:
            self._print(f"stopped at step {step} of {config.total_steps} ({pipeline_dir} holds "
                        "this step's weights); continue with --resume")
            return self.output
        return pipeline_dir

    def _stage(self, step: int) -> str:
        return "image" if step < self.config.base_pretrain_steps else "joint"

    def _load(self, folder: Path) -> dict:
        """Restore everything from checkpoint ``folder`` (see ``checkpoint.resume_checkpoint``);
        its ``trainer_state.json``."""
        saved = checkpoint.verify_checkpoint(folder)
        # the schedule first: building it sets the optimizer's LR, which the checkpoint restores
        state = TrainingState(self.ema, self._lr_scheduler(self._stage(saved["step"])))
        checkpoint.load_checkpoint(self.accelerator, folder, verified=True)
        state.load(folder, self.device)
        self.state = state
        return saved

    def _lr_scheduler(self, stage: str):
        """A fresh warm-up for each stage: the residual generator starts untrained in stage 2."""
        config = self.config
        steps = config.base_pretrain_steps if stage == "image" else config.max_steps
        return get_scheduler(config.lr_scheduler, self.optimizer,
                             num_warmup_steps=min(config.lr_warmup_steps, steps),
                             num_training_steps=steps)

    def _loader(self, start_step: int, end_step: int) -> DataLoader:
        config, accelerator = self.config, self.accelerator
        sampler = GlobalBatchSampler(
            len(self.dataset), config.batch_size, accelerator.num_processes,
            accelerator.process_index, config.gradient_accumulation_steps, config.seed,
            start_step, end_step,
        )
        return DataLoader(EpochItems(self.dataset), batch_sampler=sampler,
                          num_workers=config.num_workers,
                          persistent_workers=config.num_workers > 0)

    def _optimizer_step(self, batches, step: int, stage: str) -> dict[str, float]:
        config, accelerator = self.config, self.accelerator
        totals = torch.zeros(3, device=self.device)  # loss, key-frame loss, non-key loss
        finite = True
        for micro in range(config.gradient_accumulation_steps):
            batch = next(batches)
            shard = micro * accelerator.num_processes + accelerator.process_index
            with accelerator.accumulate(self.module):
                losses = self._loss(batch, step, shard, stage)
                accelerator.backward(losses[0])
                totals += losses.detach() / config.gradient_accumulation_steps
                if accelerator.sync_gradients:
                    norm = accelerator.clip_grad_norm_(self.module.parameters(),
                                                       config.max_grad_norm)
                    # NaN guard, summed over processes so that all of them skip alike. With
                    # fp16 the gradient norm is the GradScaler's business: it skips overflowing
                    # steps itself (and must see each step to lower its scale).
                    check = totals.sum()[None]
                    if norm is not None and accelerator.scaler is None:
                        check = torch.cat([check, torch.as_tensor(norm).to(totals)[None]])
                    finite = bool(torch.isfinite(accelerator.reduce(check, "sum")).all())
                if finite or accelerator.scaler is not None:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        if finite and not accelerator.optimizer_step_was_skipped:
            self.state.lr_scheduler.step()
        if finite and self.ema is not None:
            self.ema.step(self.model.parameters())
        totals = accelerator.reduce(totals, reduction="mean")
        return {"loss": totals[0].item(), "key_frame_loss": totals[1].item(),
                "non_key_frame_loss": totals[2].item(),
                "lr": self.state.lr_scheduler.get_last_lr()[0],
                **({} if finite else {"skipped": True})}

    def _loss(self, batch: dict, step: int, shard: int, stage: str) -> torch.Tensor:
        """``[loss, key-frame loss, non-key-frame loss]`` of one shard (the last two are the
        per-frame split of the video loss; the image loss fills both in stage 1)."""
        config = self.config
        noise_gen = torch.Generator(self.device).manual_seed(shard_seed(config.seed, step,
                                                                        shard, 0))
        data_gen = torch.Generator().manual_seed(shard_seed(config.seed, step, shard, 1))
        video = batch["video"].to(self.device)
        cond = self._condition(batch, data_gen)
        if stage == "image":
            k = config.image_frames_per_clip
            # only the drawn frames are encoded (latent space)
            images = self._encode(random_frames(video, k, data_gen))  # (B, C, k, H, W)
            images = images.transpose(1, 2).flatten(0, 1)  # (B * k, C, H, W)
            cond = {name: None if value is None else value.repeat_interleave(k, dim=0)
                    for name, value in cond.items()}
            loss = image_diffusion_loss(partial(self.module, image=True), images,
                                        self.alphas_cumprod, generator=noise_gen,
                                        weighting=config.loss_weighting,
                                        snr_gamma=config.snr_gamma, **cond)
            return torch.stack([loss, loss.detach(), loss.detach()])
        out = diffusion_loss(self.module, self._encode(video), self.alphas_cumprod, self.lambdas,
                             generator=noise_gen, stop_gradient=config.stop_gradient,
                             freeze_base=config.freeze_base, weighting=config.loss_weighting,
                             snr_gamma=config.snr_gamma, **cond)
        k = key_frame_index(config.frames)
        per_frame = out.per_frame.detach()
        others = torch.cat([per_frame[:, :k], per_frame[:, k + 1:]], dim=1)
        return torch.stack([out.loss, per_frame[:, k].mean(), others.mean()])

    def _encode(self, video: torch.Tensor) -> torch.Tensor:
        """Pixels -> the frozen VAE's scaled latents (posterior mean, see ``videofusion.vae``),
        ``vae_slice`` frames per call; unchanged in pixel space."""
        if self.vae is None:
            return video
        from .vae import encode_video

        return encode_video(self.vae, video, self.config.vae_slice)

    def _condition(self, batch: dict, generator: torch.Generator) -> dict:
        """Labels and/or caption states, each dropped to its null value with ``cond_drop`` odds
        (labels: ``class_drop`` if set; independently for ``class+text``, so the model also
        learns each one alone)."""
        condition, cond = self.config.condition, {}
        if "class" in condition:
            drop = torch.rand(len(batch["caption"]), generator=generator) < self.config.label_drop
            labels = torch.where(drop, self.num_classes, batch["class_label"].long())
            cond["class_labels"] = labels.to(self.device)
        if "text" in condition:
            drop = torch.rand(len(batch["caption"]), generator=generator) < self.config.cond_drop
            prompts = ["" if d else c for d, c in zip(drop.tolist(), batch["caption"], strict=True)]
            cond["encoder_hidden_states"] = self.captions(prompts)
        return cond

    # ---- outputs ------------------------------------------------------------------------

    def _print(self, message: str) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(f"videofusion: {message}")

    def _trim_log(self, start_step: int) -> None:
        """Drop log lines past the resumed step (written after the last checkpoint)."""
        path = self.output / "metrics.jsonl"
        if not self.accelerator.is_main_process or not path.is_file():
            return
        records = [r for r in _read_log(path) if r["step"] <= start_step]
        checkpoint.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))

    def _log(self, step: int, stage: str, metrics: dict[str, float]) -> None:
        if not self.accelerator.is_main_process:
            return
        with open(self.output / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps({"step": step, "stage": stage, **metrics}) + "\n")
        if step % self.config.log_every == 0 or step == self.config.total_steps:
            prefix = "image" if stage == "image" else "train"
            self.accelerator.log({f"{prefix}/{k}": v for k, v in metrics.items()}, step=step)

    def _plot_loss(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = self.output / "metrics.jsonl"
        if not path.is_file():
            return
        records = _read_log(path)
        fig, ax = plt.subplots(figsize=(7, 4))
        for stage, label in (("image", "stage 1: image loss"), ("joint", "stage 2: video loss")):
            points = [(r["step"], r["loss"]) for r in records if r["stage"] == stage]
            if points:
                steps, losses = zip(*points, strict=True)
                line, = ax.plot(steps, _smooth(losses), lw=1.5, label=label)
                ax.plot(steps, losses, lw=0.6, alpha=0.35, color=line.get_color())
        ax.set(xlabel="optimizer step", ylabel="MSE of the noise prediction", yscale="log",
               title="VideoFusion training loss")
        ax.legend()
        fig.tight_layout()
        fig.savefig(self.output / "loss_curve.png", dpi=100)
        plt.close(fig)

    def _parameter_checksums(self) -> list[list[float]]:
        """(sum, sum of squares) of all weights on every process: equal unless ranks diverged."""
        params = [p.detach().double() for p in self.model.parameters()]
        local = torch.stack([sum(p.sum() for p in params), sum(p.pow(2).sum() for p in params)])
        return self.accelerator.gather(local.to(self.device)[None]).tolist()

    def _checkpoint(self, step: int, elapsed: float) -> None:
        checksums = self._parameter_checksums()
        if any(c != checksums[0] for c in checksums):
            logger.warning("the processes' weights differ at step %d: %s", step, checksums)
        checkpoint.save_checkpoint(
            self.accelerator, self.checkpoints, step,
            {"elapsed_seconds": elapsed, "total_steps": self.config.total_steps,
             "parameter_checksums": checksums,
             "samples_seen": step * self.config.batch_size * self.accelerator.num_processes
             * self.config.gradient_accumulation_steps},
            keep=self.config.checkpoints_total_limit, write=self.state.save,
        )
        if self.config.overwrite and self.accelerator.is_main_process:
            safety.drop_set_aside(self.output)  # the new run now has a checkpoint of its own

    def _pipeline(self):
        from .pipeline import VideoFusionPipeline

        config, model = self.config, self.model
        # Latents are not confined to [-1, 1]: no clipping of the predicted x_0 there.
        clip_sample = {} if self.vae is None else {"clip_sample": False}
        text = {}
        if self.captions is not None:
            text["text_encoder_kind"] = self.captions.kind
            if self.captions.kind == "clip":  # shipped, so that sampling uses the same encoder
                text.update(text_encoder=self.captions.encoder.model,
                            tokenizer=self.captions.encoder.tokenizer)
        return VideoFusionPipeline.from_components(
            residual=model.residual, base=None if model.is_baseline else model.base.unet,
            scheduler=DDIMScheduler.from_config(self.noise_scheduler.config, **clip_sample),
            vae=self.vae, **text,
            residual_input=config.residual_input, sample_size=config.resolution,
            default_lambda=0.0 if model.is_baseline else config.lambda_,
            signal_leak_mean=self.signal_leak_mean,
        )

    @cached_property
    def signal_leak_mean(self) -> list[float]:
        """Per-channel mean of the first clips of the training data in model space: what
        z_T holds of the data besides noise (``sample_decomposed``'s ``signal_leak``)."""
        clips = [self.dataset[i]["video"] for i in range(min(len(self.dataset), 32))]
        with torch.no_grad():
            video = self._encode(torch.stack(clips).to(self.device))  # (B, C, F, h, w)
        return [round(float(m), 6) for m in video.double().mean(dim=(0, 2, 3, 4))]

    def _with_ema(self, work):
        """Run ``work()`` with the EMA weights swapped into the model."""
        if self.ema is None:
            return work()
        params = list(self.model.parameters())
        self.ema.store(params)
        self.ema.copy_to(params)
        try:
            return work()
        finally:
            self.ema.restore(params)

    def _sample(self, step: int) -> None:
        """Sample GIFs and a contact sheet with the EMA weights (main process only)."""
        from .video_io import contact_sheet, write_gif

        if self.accelerator.is_main_process:
            config = self.config
            folder = self.output / "samples" / f"step-{step:06d}"
            kwargs = {}
            if "class" in config.condition:
                kwargs["class_labels"] = [i % self.num_classes for i in range(config.sample_num)]
            if "text" in config.condition:
                kwargs["prompt"] = [self.dataset[i]["caption"] for i in range(config.sample_num)]
            if config.condition == "none":  # else one video per label / prompt
                kwargs["num_videos"] = config.sample_num
            if config.condition != "none":
                kwargs["guidance_scale"] = config.sample_guidance
            pipe = self._pipeline()
            frames = self._with_ema(lambda: pipe(
                num_frames=config.frames, num_inference_steps=config.sample_steps,
                generator=torch.Generator(self.device).manual_seed(config.seed),
                progress=False, **kwargs).frames)
            scale = max(1, 128 // config.resolution)
            for i, video in enumerate(frames):
                write_gif(video, folder / f"video_{i}.gif", scale=scale)
            contact_sheet(frames, folder / "contact_sheet.png",
                          scale=max(1, 64 // config.resolution))
            self._plot_loss()
        self.accelerator.wait_for_everyone()

    def _save_pipeline(self) -> Path:
        """The final ``VideoFusionPipeline`` folder with the EMA weights (the raw ones with
        ``raw_weights``), written atomically."""
        target = self.output / "pipeline"
        if self.accelerator.is_main_process:
            pipe = self._pipeline()
            with checkpoint.atomic_directory(target) as tmp:
                if self.config.raw_weights:
                    pipe.save_pretrained(tmp, safe_serialization=True)
                else:
                    self._with_ema(lambda: pipe.save_pretrained(tmp, safe_serialization=True))
            self._print(f"saved the pipeline to {target}")
        self.accelerator.wait_for_everyone()
        return target

    def _write_summary(self, start_step, step, elapsed_before, elapsed, pipeline_dir) -> None:
        config = self.config
        this_run = elapsed - elapsed_before
        # the log may be missing: a checkpoint copied into a new folder and exported there
        log = self.output / "metrics.jsonl"
        records = _read_log(log) if log.is_file() else []
        summary = {
            "steps": step,
            "base_pretrain_steps": config.base_pretrain_steps,
            "joint_steps": config.max_steps,
            "wall_clock_seconds": round(elapsed, 2),
            "this_run_steps": step - start_step,
            "this_run_seconds": round(this_run, 2),
            # None when this invocation trained no step (an export with --stop-at-step)
            "seconds_per_step": round(this_run / (step - start_step), 4)
            if step > start_step else None,
            "batch_size_per_process": config.batch_size,
            "global_batch_size": config.batch_size * self.accelerator.num_processes
            * config.gradient_accumulation_steps,
            "num_processes": self.accelerator.num_processes,
            "device": str(self.device),
            "frames": config.frames,
            "resolution": config.resolution,
            "latent": None if self.vae is None else {
                "vae": config.vae, "channels": self.model_channels,
                "resolution": self.model_resolution},
            "parameters": {"base": count_parameters(self.model.base),
                           "residual": count_parameters(self.model.residual),
                           "total": count_parameters(self.model)},
            "final_loss": records[-1]["loss"] if records else math.nan,
            # optimizer steps of the whole run skipped for a non-finite loss or gradient norm
            "nonfinite_steps_skipped": self.state.nonfinite_steps,
            # training videos that could not be read (video folders; see their warnings)
            "skipped_files": int(getattr(self.dataset, "num_skipped", 0)),
            "pipeline": str(pipeline_dir),
        }
        checkpoint.atomic_write_text(self.output / "train_summary.json",
                                     json.dumps(summary, indent=2) + "\n")


def _read_log(path: Path) -> list[dict]:
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


def _smooth(values, window: int = 25) -> np.ndarray:
    """Trailing mean over up to ``window`` points (fewer at the start)."""
    sums = np.cumsum(np.asarray(values, dtype=np.float64))
    counts = np.minimum(np.arange(1, len(sums) + 1), window)
    shifted = np.concatenate([np.zeros(window), sums])[: len(sums)]
    return (sums - shifted) / counts
