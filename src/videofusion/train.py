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

What a run is built from (accelerator, VAE, model and its starting weights, optimizer) is
``videofusion.training_setup``; what it shows and writes (log, loss curve, previews, pipeline,
summary) is ``videofusion.training_report``; this module is the loop and its checkpoints. A run
with ``distill_from`` has one stage instead, the rounds of ``videofusion.distillation``.

Under FSDP2 the model's parameters, and so its EMA, are sharded over the processes
(``videofusion.sharding``): they are gathered whole only for what leaves the run (the EMA file of
a checkpoint, previews, the exported pipeline), with every process taking part.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from collections.abc import Iterable, Iterator
from functools import cached_property, partial
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import DistributedType, set_seed
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from . import checkpoint, safety
from . import training_report as report
from . import training_setup as setup
from .condition import Condition
from .config import TrainConfig
from .data import check_data_source
from .distillation import Distillation
from .models.videofusion import VideoFusionModel
from .noise import key_frame_index
from .objective import diffusion_loss, image_diffusion_loss
from .sharding import local, shard_like, whole_tensors

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


def parameter_checksum(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """(sum, sum of squares), in float64, of the weights this process holds: all of them, or
    under FSDP2 its slices."""
    held = [local(p).detach().double() for p in params]
    return torch.stack([sum(p.sum() for p in held), sum(p.pow(2).sum() for p in held)])


def whole_model(template: nn.Module, model: nn.Module, params: Iterable[torch.Tensor],
                keep: bool, device: torch.device) -> nn.Module | None:
    """A whole copy of ``model``, whose parameters FSDP2 sharded, with ``params`` (its own or
    its EMA's, in ``model.parameters()`` order) gathered into it: built from ``template``, a
    shape-only (meta) copy of the model made before sharding, on ``device``. Every process
    calls this; only those with ``keep`` get the copy (None elsewhere)."""
    names = [name for name, _ in model.named_parameters()]
    tensors = whole_tensors(params, keep)
    if not keep:
        return None
    state = dict(zip(names, tensors, strict=True))
    state.update(model.named_buffers())  # FSDP2 leaves buffers whole on every process
    whole = copy.deepcopy(template).to_empty(device=device)
    whole.load_state_dict(state)
    return whole


class TrainingState:
    """What a resumed run needs besides model, optimizer and RNG: the EMA weights
    (``ema.safetensors``), the EMA counters, the LR schedule of the current stage and the count
    of skipped non-finite steps (``training_state.json``). Written and read here, never pickled,
    so that a checkpoint holds no code (see ``videofusion.checkpoint``)."""

    def __init__(self, ema: EMAModel | None, lr_scheduler):
        self.ema, self.lr_scheduler = ema, lr_scheduler
        self.ema_missing = False  # EMA on now, but the checkpoint was saved without one
        self.nonfinite_steps = 0  # optimizer steps skipped for a non-finite loss or gradient

    def whole_ema(self, keep: bool) -> list[torch.Tensor] | None:
        """The EMA weights whole, for ``save``: every process calls this (under FSDP2 it gathers
        the shards); only those with ``keep`` get the tensors."""
        return None if self.ema is None else whole_tensors(self.ema.shadow_params, keep)

    def save(self, folder: Path, ema_weights: list[torch.Tensor] | None = None) -> None:
        """Write the state into ``folder`` (one process). ``ema_weights``: the EMA's tensors
        from ``whole_ema``; by default the EMA's own, which are whole unless FSDP2 sharded
        them."""
        from safetensors.torch import save_file

        meta = {"lr_scheduler": self.lr_scheduler.state_dict(),
                "nonfinite_steps": self.nonfinite_steps, "ema": None}
        if self.ema is not None:
            ema = dict(self.ema.state_dict())
            shadow = ema.pop("shadow_params")
            shadow = shadow if ema_weights is None else ema_weights
            save_file({str(i): p.detach().cpu().contiguous() for i, p in enumerate(shadow)},
                      str(folder / EMA_FILE))
            meta["ema"] = ema
        (folder / TRAINING_STATE_FILE).write_text(json.dumps(meta, indent=2))

    def load(self, folder: Path) -> None:
        """Read the state from ``folder`` (every process): the whole EMA weights are read onto
        the CPU and placed as the EMA's are now (on its device, cut into this process's
        slices under FSDP2)."""
        from safetensors.torch import load_file

        path = folder / TRAINING_STATE_FILE
        try:
            meta = json.loads(path.read_text())
            self.ema_missing = self.ema is not None and meta["ema"] is None
            if self.ema is not None and not self.ema_missing:
                tensors = load_file(str(folder / EMA_FILE))
                shadow = [tensors[str(i)] for i in range(len(tensors))]
                if [s.shape for s in shadow] != [s.shape for s in self.ema.shadow_params]:
                    raise ValueError(f"{folder / EMA_FILE} does not match the model")
                shadow = [shard_like(s, like)
                          for s, like in zip(shadow, self.ema.shadow_params, strict=True)]
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
    check_data_source(config.data)  # before the run's folder and lock exist
    if config.latent_cache:
        safety.check_output_dir(config.latent_cache, "latent_cache")
    trainer = Trainer(config)
    try:
        return trainer.run()
    finally:
        trainer.lock.release()


class Trainer:
    """A run built from its ``TrainConfig`` (``videofusion.training_setup``), trained through
    both stages by :meth:`run`; its outputs are ``videofusion.training_report``'s."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.output = Path(config.output_dir)
        self.checkpoints = self.output / "checkpoints"
        self.accelerator = setup.make_accelerator(config, self.output)
        self.lock = setup.guard_output(config, self.output, self.accelerator)
        try:
            self._build()
        except BaseException:
            self.lock.release()
            raise

    def _build(self) -> None:
        config, accelerator = self.config, self.accelerator
        set_seed(config.seed)
        self.device = accelerator.device
        self.log = report.MetricsLog(self.output, accelerator, config)
        self.vae, self.model_channels, self.model_resolution = setup.load_vae(config, self.device)
        self.dataset = setup.training_set(config)
        if config.latent_cache:
            self.dataset = self._cached(self.dataset)
        self.num_classes = getattr(self.dataset, "num_classes", 0)
        if "class" in config.condition and not self.num_classes:
            raise ValueError(f"condition 'class' needs labelled data; {config.data!r} has none")
        # recorded in the saved pipeline, so that a class is sampled by its name
        self.class_names = (getattr(self.dataset, "class_names", None)
                            if "class" in config.condition else None)
        self.captions = (setup.CaptionEncoder(self.device, config.text_encoder)
                         if "text" in config.condition else None)
        self.model = setup.build_training_model(
            config, self.model_channels, self.model_resolution, self.num_classes, self.captions,
            latent=self.vae is not None)
        # FSDP2 shards the model in place: previews and the pipeline are made from a whole copy
        # of it, built from this shape-only (meta) template
        self.sharded = accelerator.distributed_type == DistributedType.FSDP
        self.template = copy.deepcopy(self.model).to("meta") if self.sharded else None
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps,
                                             beta_schedule=config.beta_schedule,
                                             beta_start=config.beta_start,
                                             beta_end=config.beta_end)
        self.alphas_cumprod = self.noise_scheduler.alphas_cumprod.to(self.device)
        self.lambdas = self.model.lambdas(config.frames, config.lambda_).to(self.device)
        self.distillation = None if config.distill_from is None else Distillation(
            config, self.output, self.model, self.alphas_cumprod, self.lambdas, self.captions)
        if config.distill_sampler_states:
            with accelerator.main_process_first():
                self.distillation.prepare_sampler_states(self._sampler_state_conditions(),
                                                         write=accelerator.is_main_process)
        self.module, self.optimizer = accelerator.prepare(
            setup.TrainingModule(self.model), setup.make_optimizer(config, self.model))
        self.ema = self._new_ema()
        self.state = TrainingState(self.ema, self._lr_scheduler(self._stage(0)))

    def _new_ema(self) -> EMAModel | None:
        config = self.config
        return (EMAModel(self.model.parameters(), decay=config.ema_decay, use_ema_warmup=True,
                         power=3 / 4) if config.ema_decay > 0 else None)

    def _cached(self, dataset: Dataset) -> Dataset:
        """The training set as latents from ``latent_cache``, which the main process builds
        or repairs first; the others then only check it."""
        from .latent_cache import prepare

        config, accelerator = self.config, self.accelerator
        with accelerator.main_process_first():
            cached, found = prepare(config.latent_cache, dataset, self.vae,
                                    slice_size=config.vae_slice, num_workers=config.num_workers,
                                    write=accelerator.is_main_process)
        if found.to_encode and not found.written:
            raise ValueError(f"{found.line()}: the main process left entries to encode")
        self.log.print(found.line())
        return cached

    # ---- the loop -----------------------------------------------------------------------

    def run(self) -> Path:
        config = self.config
        start_step, elapsed_before = self._resume()
        end_step = min(config.total_steps, config.stop_at_step or config.total_steps)
        batches = iter(self._loader(start_step, end_step))
        # a progress bar: no spec behaviour, so not mutated (docs/mutation.md)
        # pragma: no mutate start
        progress = tqdm(total=config.total_steps, initial=start_step, desc="training",
                        disable=not self.accelerator.is_main_process, dynamic_ncols=True)
        # pragma: no mutate end
        started = time.perf_counter()
        step, streak = start_step, 0  # streak: optimizer steps skipped in a row
        while step < end_step:
            stage = self._stage(step)
            losses, finite = self._optimizer_step(batches, step, stage)
            lr = self.state.lr_scheduler.get_last_lr()[0]
            step += 1
            streak = 0 if finite else streak + 1
            if streak:
                self._count_skipped(step, streak, progress)
            if step == config.base_pretrain_steps:
                # before any checkpoint of this step, so that resuming here finds stage 2's
                self.state.lr_scheduler = self._lr_scheduler("joint")
            if self.distillation is not None and self.distillation.round_ends(step):
                self._next_round(step)  # before any checkpoint of this step, likewise
            progress.update(1)  # pragma: no mutate
            self.log.record(step, stage, losses, lr=lr, **({} if finite else {"skipped": True}),
                            seconds=round(elapsed_before + time.perf_counter() - started, 3))
            # a skipped step changed no weight: its checkpoint would only rotate out good ones
            save = (step % config.checkpoint_every == 0 or step == end_step) and not streak
            preview = stage != "image" and (step % config.sample_every == 0
                                            or step == config.total_steps)
            if save or preview or step % config.log_every == 0 or step == end_step:
                loss = self.log.flush()
                if not config.max_nonfinite_steps and not math.isfinite(loss):
                    self._diverged(step, "the logged loss is not finite (no NaN guard: "
                                   "max_nonfinite_steps 0)", progress)
                progress.set_postfix(stage=stage, loss=f"{loss:.4f}")  # pragma: no mutate
            if save:
                self._checkpoint(step, elapsed_before + time.perf_counter() - started)
            if preview:
                self._preview(step)
        progress.close()
        return self._finish(start_step, step, elapsed_before,
                            elapsed_before + time.perf_counter() - started)

    def _optimizer_step(self, batches, step: int, stage: str) -> tuple[torch.Tensor, bool]:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches: this process's
        ``[loss, key-frame loss, non-key-frame loss]`` (on the device) and whether the step was
        taken. The NaN guard's verdict is the one value the host waits for on every step, as
        torch's GradScaler does; ``max_nonfinite_steps`` 0 turns both off."""
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
                if accelerator.sync_gradients and config.max_nonfinite_steps:
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
        return totals, finite

    def _loss(self, batch: dict, step: int, shard: int, stage: str) -> torch.Tensor:
        """``[loss, key-frame loss, non-key-frame loss]`` of one shard (the last two are the
        per-frame split of the video loss; the image loss fills both in stage 1)."""
        config = self.config
        noise_gen = torch.Generator(self.device).manual_seed(shard_seed(config.seed, step,
                                                                        shard, 0))
        data_gen = torch.Generator().manual_seed(shard_seed(config.seed, step, shard, 1))
        condition = self.batch_condition(batch, data_gen)
        cond = condition.plain()
        if stage == "image":
            k = config.image_frames_per_clip
            # (B, C, k, H, W); only the drawn frames are encoded (latent space, no cache)
            images = self._model_space(batch, partial(random_frames, k=k, generator=data_gen))
            images = images.transpose(1, 2).flatten(0, 1)  # (B * k, C, H, W)
            cond = {name: None if value is None else value.repeat_interleave(k, dim=0)
                    for name, value in cond.items()}
            loss = image_diffusion_loss(partial(self.module, image=True), images,
                                        self.alphas_cumprod, generator=noise_gen,
                                        weighting=config.loss_weighting,
                                        snr_gamma=config.snr_gamma, **cond)
            return torch.stack([loss, loss.detach(), loss.detach()])
        if stage == "distill":
            out = self.distillation.loss(self.module, self._model_space(batch), condition, step,
                                         noise_gen)
        else:
            out = diffusion_loss(self.module, self._model_space(batch), self.alphas_cumprod,
                                 self.lambdas, generator=noise_gen,
                                 stop_gradient=config.stop_gradient,
                                 freeze_base=config.freeze_base, weighting=config.loss_weighting,
                                 snr_gamma=config.snr_gamma,
                                 base_teacher_forcing=config.base_teacher_forcing, **cond)
        k = key_frame_index(config.frames)
        per_frame = out.per_frame.detach()
        others = torch.cat([per_frame[:, :k], per_frame[:, k + 1:]], dim=1)
        return torch.stack([out.loss, per_frame[:, k].mean(), others.mean()])

    def _model_space(self, batch: dict, select=None) -> torch.Tensor:
        """A batch's clips as the model sees them, ``(B, C, F, H, W)``, after ``select`` (a
        choice of frames): the latent cache's latents; or the pixels encoded by the frozen VAE
        (the selected frames only, ``vae_slice`` per call; scaled posterior means, see
        ``videofusion.vae``); or, in pixel space, the pixels."""
        select = select or (lambda clips: clips)
        if "latents" in batch:
            return select(batch["latents"].to(self.device))
        video = select(batch["video"].to(self.device))
        if self.vae is None:
            return video
        from .vae import encode_video

        return encode_video(self.vae, video, self.config.vae_slice)

    def batch_condition(self, batch: dict, generator: torch.Generator) -> Condition:
        """A batch's labels and/or caption states, each dropped to its null value with
        ``cond_drop`` odds (labels: ``class_drop`` if set; independently for ``class+text``, so
        the model also learns each one alone)."""
        condition, cond = self.config.condition, Condition()
        if "class" in condition:
            drop = torch.rand(len(batch["caption"]), generator=generator) < self.config.label_drop
            labels = torch.where(drop, self.num_classes, batch["class_label"].long())
            cond.class_labels = labels.to(self.device)
        if "text" in condition:
            drop = torch.rand(len(batch["caption"]), generator=generator) < self.config.cond_drop
            prompts = ["" if d else c for d, c in zip(drop.tolist(), batch["caption"], strict=True)]
            cond.encoder_hidden_states = self.captions(prompts)
        return cond

    def _count_skipped(self, step: int, streak: int, progress) -> None:
        """The NaN guard's bookkeeping: count and report a skipped step; stop the run, saving
        nothing, after ``max_nonfinite_steps`` in a row."""
        config = self.config
        self.state.nonfinite_steps += 1
        self.log.print(f"step {step}: non-finite loss or gradient norm, update skipped "
                       f"({streak} in a row, at most {config.max_nonfinite_steps})")
        if streak >= config.max_nonfinite_steps:
            self.log.flush()  # the steps before this one, as they were logged
            self._diverged(step, f"the loss or gradient norm was not finite for {streak} steps "
                                 "in a row (max_nonfinite_steps)", progress)

    def _diverged(self, step: int, why: str, progress) -> None:
        progress.close()  # the error starts a line of its own
        last = checkpoint.latest_checkpoint(self.checkpoints)
        raise TrainingDiverged(f"training stopped at step {step}: {why}; nothing was saved, "
                               f"the last good checkpoint is {last}")

    def _stage(self, step: int) -> str:
        if self.config.distill_from is not None:
            return "distill"
        return "image" if step < self.config.base_pretrain_steps else "joint"

    def _lr_scheduler(self, stage: str):
        """A fresh warm-up for each stage (the residual generator starts untrained in stage 2)
        and each distillation round (its student learns another target)."""
        config = self.config
        steps = {"image": config.base_pretrain_steps, "joint": config.max_steps,
                 "distill": config.distill_steps_per_round}[stage]
        return get_scheduler(config.lr_scheduler, self.optimizer,
                             num_warmup_steps=min(config.lr_warmup_steps, steps),
                             num_training_steps=steps)

    def _sampler_state_conditions(self) -> Condition:
        """The conditions of ``distill_sampler_clips`` training clips (a seeded draw), dropped
        as the batches' are: what the teacher samples to record its sampler's states."""
        generator = torch.Generator().manual_seed(self.config.seed)
        count = min(self.config.distill_sampler_clips, len(self.dataset))
        chosen = torch.randperm(len(self.dataset), generator=generator)[:count].tolist()
        items = [self.dataset[i] for i in chosen]
        batch = {"caption": [item.get("caption", "") for item in items],
                 "class_label": torch.as_tensor([item.get("class_label", 0) for item in items])}
        return self.batch_condition(batch, generator)

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

    # ---- resume and checkpoints ---------------------------------------------------------

    def _resume(self) -> tuple[int, float]:
        """The step and wall-clock seconds to continue from (``0, 0.0`` for a fresh run); then,
        every check passed, the folder is made this run's: the old run set aside
        (``overwrite``), stale temporary checkpoints removed, ``config.yaml`` written, the log
        cut back to the resumed step."""
        config, accelerator = self.config, self.accelerator
        start_step, elapsed_before = 0, 0.0
        resumed = checkpoint.resume_checkpoint(self.checkpoints, self._load) \
            if config.resume else None
        if config.resume and resumed is None:
            self.log.print(f"no checkpoint in {self.checkpoints}: starting fresh")
        if resumed is not None:
            latest, saved = resumed
            start_step, elapsed_before = saved["step"], saved["elapsed_seconds"]
            self.log.print(f"resumed from {latest} at step {start_step}")
            if self.state.ema_missing:
                self.ema.shadow_params = [p.detach().clone() for p in self.model.parameters()]
                self.log.print("the checkpoint holds no EMA: the EMA starts from its weights")
        if accelerator.is_main_process:  # only now: every check has passed
            if config.overwrite and safety.holds_run(self.output):
                aside = safety.set_aside(self.output)
                self.log.print(f"--overwrite: the old run waits in {aside} until this run's "
                               "first checkpoint, then it is deleted")
            checkpoint.remove_stale(self.checkpoints)
            config.save(self.output / "config.yaml")
        accelerator.init_trackers("tensorboard")
        self.log.trim(start_step)
        return start_step, elapsed_before

    def _load(self, folder: Path) -> dict:
        """Restore everything from checkpoint ``folder`` (see ``checkpoint.resume_checkpoint``);
        its ``trainer_state.json``."""
        saved = checkpoint.verify_checkpoint(folder)
        # the schedule first: building it sets the optimizer's LR, which the checkpoint restores
        state = TrainingState(self.ema, self._lr_scheduler(self._stage(saved["step"])))
        checkpoint.load_checkpoint(self.accelerator, folder, verified=True)
        state.load(folder)
        self.state = state
        return saved

    def _parameter_checksums(self) -> list[list[float]]:
        """``parameter_checksum`` of every process: equal under DDP unless ranks diverged;
        under FSDP2 they add up to the whole model's."""
        held = parameter_checksum(self.model.parameters()).to(self.device)
        return self.accelerator.gather(held[None]).tolist()

    def _checkpoint(self, step: int, elapsed: float) -> None:
        checksums = self._parameter_checksums()
        if not self.sharded and any(c != checksums[0] for c in checksums):
            logger.warning("the processes' weights differ at step %d: %s", step, checksums)
        ema_weights = self.state.whole_ema(keep=self.accelerator.is_main_process)
        checkpoint.save_checkpoint(
            self.accelerator, self.checkpoints, step,
            {"elapsed_seconds": elapsed, "total_steps": self.config.total_steps,
             "parameter_checksums": checksums,
             "samples_seen": step * self.config.batch_size * self.accelerator.num_processes
             * self.config.gradient_accumulation_steps},
            keep=self.config.checkpoints_total_limit,
            write=partial(self.state.save, ema_weights=ema_weights),
        )
        if self.config.overwrite and self.accelerator.is_main_process:
            safety.drop_set_aside(self.output)  # the new run now has a checkpoint of its own

    def _next_round(self, step: int) -> None:
        """Progressive distillation: the round that ``step`` ends is saved (EMA weights when
        the run has an EMA, written atomically) as the next round's teacher; the next student
        starts as its copy, with a fresh optimizer state, EMA and LR schedule."""
        folder = self.distillation.round_dir(self.distillation.round_of(step - 1))
        with self._whole_model(ema=True, device=torch.device("cpu")) as model:
            if model is not None:
                with checkpoint.atomic_directory(folder) as tmp:
                    self._pipeline(model, step).save_pretrained(tmp, safe_serialization=True)
                self.log.print(f"distillation round saved to {folder}")
        self.accelerator.wait_for_everyone()
        self.distillation.start_round(self.model, step)
        self.optimizer.state.clear()
        self.ema = self._new_ema()
        state = TrainingState(self.ema, self._lr_scheduler("distill"))
        state.nonfinite_steps = self.state.nonfinite_steps
        self.state = state

    # ---- outputs ------------------------------------------------------------------------

    def _pipeline(self, model: VideoFusionModel, step: int):
        """``model`` as the run's pipeline after ``step`` optimizer steps (a distilled
        student's settings depend on its round)."""
        settings = {} if self.distillation is None else \
            self.distillation.pipeline_settings(step)
        return report.training_pipeline(self.config, model, self.noise_scheduler, self.vae,
                                        self.captions, self.signal_leak_mean,
                                        class_names=self.class_names, **settings)

    @contextlib.contextmanager
    def _whole_model(self, ema: bool, device: torch.device) -> Iterator[VideoFusionModel | None]:
        """The model with the EMA's weights (``ema``, if there is an EMA) or the raw ones, whole,
        on the main process; None on the others. Every process enters: under FSDP2 the weights
        are gathered into a new whole model on ``device``; otherwise it is the model itself,
        the EMA swapped in for the duration."""
        average = self.ema if ema else None
        main = self.accelerator.is_main_process
        if self.sharded:
            params = self.model.parameters() if average is None else average.shadow_params
            yield whole_model(self.template, self.model, params, keep=main, device=device)
        elif main:
            with report.ema_weights(self.model, average):
                yield self.model
        else:
            yield None

    @cached_property
    def signal_leak_mean(self) -> list[float]:
        """Per-channel mean of the first clips of the training data in model space: what
        z_T holds of the data besides noise (``sampling.initial_latents``' ``signal_leak``)."""
        items = [self.dataset[i] for i in range(min(len(self.dataset), 32))]
        key = "latents" if "latents" in items[0] else "video"
        with torch.no_grad():
            video = self._model_space({key: torch.stack([item[key] for item in items])})
        return [round(float(m), 6) for m in video.double().mean(dim=(0, 2, 3, 4))]

    def _preview(self, step: int) -> None:
        """Sample GIFs and a contact sheet with the EMA weights (main process)."""
        with self._whole_model(ema=True, device=self.device) as model:
            if model is not None:
                config = self.config if self.distillation is None else \
                    self.distillation.preview_config(step)
                captions = ([self.dataset[i]["caption"] for i in range(config.sample_num)]
                            if "text" in config.condition else [])
                report.write_previews(self._pipeline(model, step),
                                      self.output / "samples" / f"step-{step:06d}",
                                      config, self.num_classes, captions, self.device)
        if self.accelerator.is_main_process:
            report.plot_loss(self.output)
        self.accelerator.wait_for_everyone()

    def _finish(self, start_step: int, step: int, elapsed_before: float, elapsed: float) -> Path:
        """The loss curve, the pipeline (EMA weights, or the raw ones with ``raw_weights``,
        written atomically) and the summary; the pipeline folder, or the output folder of a
        run stopped early."""
        config, accelerator = self.config, self.accelerator
        target = self.output / "pipeline"
        if accelerator.is_main_process:
            report.plot_loss(self.output)
        # gathered onto the CPU under FSDP2: a whole copy on the GPU is not needed to save it
        with self._whole_model(ema=not config.raw_weights, device=torch.device("cpu")) as model:
            if model is not None:
                with checkpoint.atomic_directory(target) as tmp:
                    self._pipeline(model, step).save_pretrained(tmp, safe_serialization=True)
                self.log.print(f"saved the pipeline to {target}")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            latent = None if self.vae is None else {
                "vae": config.vae, "channels": self.model_channels,
                "resolution": self.model_resolution}
            report.write_summary(
                self.output, config, self.model, start_step=start_step, step=step,
                elapsed_before=elapsed_before, elapsed=elapsed,
                num_processes=accelerator.num_processes, device=self.device, latent=latent,
                nonfinite_steps=self.state.nonfinite_steps,
                skipped_files=int(getattr(self.dataset, "num_skipped", 0)), pipeline_dir=target)
        accelerator.end_training()
        if step < config.total_steps:
            self.log.print(f"stopped at step {step} of {config.total_steps} ({target} holds "
                           "this step's weights); continue with --resume")
            return self.output
        return target
