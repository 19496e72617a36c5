"""Building a training run from its ``TrainConfig``: the accelerator, the checks before any work,
the training set, the frozen VAE, the text encoder, the model (with its starting weights) and
the optimizer.

Everything here runs once, before the first step; the loop itself is ``videofusion.train``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import accelerate
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import DistributedType, parse_flag_from_env
from torch import nn

from . import safety
from .config import RESUMABLE, TrainConfig
from .data import build_dataset
from .models.base import BaseGenerator
from .models.factory import build_model
from .models.videofusion import KEY_FRAME_CHANNEL_INPUTS, VideoFusionModel

logger = logging.getLogger(__name__)


def make_accelerator(config: TrainConfig, output: Path) -> Accelerator:
    """accelerate, on the GPU if there is one (CPU runs, also under torchrun, use DDP over gloo
    and stay fp32), logging to TensorBoard in ``output``; FSDP as ``check_fsdp`` allows."""
    cpu = not torch.cuda.is_available()
    mixed_precision = config.mixed_precision
    if cpu and mixed_precision != "no":
        logger.warning("mixed precision %s is not used on CPU: training in fp32", mixed_precision)
        mixed_precision = "no"
    accelerator = Accelerator(
        cpu=cpu, gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=mixed_precision, log_with="tensorboard", project_dir=str(output),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    check_fsdp(accelerator, asked=parse_flag_from_env("ACCELERATE_USE_FSDP"))
    return accelerator


def check_fsdp(accelerator: Accelerator, asked: bool) -> None:
    """FSDP only as the trainer handles it (docs/training.md, "Launch configs"): version 2,
    whose parameters keep their shapes as DTensors that the EMA can follow and that gather
    whole (version 1 exposes flat slices of its shards), with whole state dicts in checkpoints
    (a sharded one is written by torch.distributed.checkpoint, whose pickled metadata the
    checkpoint verification cannot read safely). FSDP ``asked`` for (``accelerate launch``
    with an FSDP config sets ACCELERATE_USE_FSDP) but not given is said: accelerate turns
    it on for GPU processes only, and runs CPU processes as DDP."""
    if accelerator.distributed_type != DistributedType.FSDP:
        if asked and accelerator.is_main_process:
            logger.warning("FSDP was asked for, but accelerate %s runs this as %s: the "
                           "parameters are not sharded (accelerate shards only GPU processes "
                           "started by accelerate launch or torchrun)",
                           accelerate.__version__, accelerator.distributed_type.value)
        return
    plugin = accelerator.state.fsdp_plugin
    if plugin.fsdp_version != 2:
        raise ValueError(f"FSDP: fsdp_version {plugin.fsdp_version} is not supported, the "
                         "trainer needs fsdp_version: 2 (configs/accelerate/fsdp_full_shard.yaml)")
    if plugin.state_dict_type.name != "FULL_STATE_DICT":
        raise ValueError(f"FSDP: fsdp_state_dict_type {plugin.state_dict_type.name} is not "
                         "supported, checkpoints need FULL_STATE_DICT")


def guard_output(config: TrainConfig, output: Path, accelerator: Accelerator) -> safety.RunLock:
    """The checks before any work (docs/training.md, "Safety"): a changed config on ``resume``
    and a run in the way are refused; then the folder's lock is taken (main process).
    ``overwrite`` sets the old run aside later, once all is built."""
    saved = output / "config.yaml"
    if config.resume and saved.is_file():
        changes = config.resume_changes(TrainConfig.from_yaml(saved))
        if changes:
            raise ValueError(f"resume: {saved} was trained with other settings ("
                             f"{'; '.join(changes)}); only {', '.join(RESUMABLE)} may "
                             "change on resume: train into a new --output-dir instead")
    found = safety.holds_run(output)
    if found and not config.resume and not config.overwrite:
        raise ValueError(f"output_dir: {output} holds a run ({', '.join(found)}): "
                         "continue it with --resume, or replace it with --overwrite")
    lock, error = safety.RunLock(output), ""
    if accelerator.is_main_process:
        try:
            lock.acquire()
        except ValueError as err:
            error = str(err)
    failed = accelerator.gather(torch.tensor([float(bool(error))], device=accelerator.device))
    if failed.any():
        raise ValueError(error or f"output_dir: {output} is in use by another run")
    return lock


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


def training_set(config: TrainConfig):
    """The run's training clips: ``build_dataset`` with the config's data settings."""
    dataset = build_dataset(config.data, "train", config.frames, config.resolution,
                            channels=config.channels, **config.data_options)
    if len(dataset) == 0:
        raise ValueError(f"data: {config.data!r} holds no clips")
    return dataset


def load_vae(config: TrainConfig, device: torch.device):
    """``(vae, channels, resolution)``: the frozen VAE of a latent-space run (None in pixel
    space) and the size of what the model sees, the latent channels and ``resolution / scale
    factor`` (the data's without a VAE)."""
    if not config.vae:
        return None, config.channels, config.resolution
    from .vae import load_vae as load_autoencoder
    from .vae import vae_scale_factor

    vae = load_autoencoder(config.vae).to(device).eval().requires_grad_(False)
    factor = vae_scale_factor(vae)
    if vae.config.in_channels != config.channels:
        raise ValueError(f"vae: takes {vae.config.in_channels}-channel images, the data has "
                         f"{config.channels} channels")
    if config.resolution % factor:
        raise ValueError(f"resolution {config.resolution} is not divisible by the VAE's "
                         f"factor {factor}")
    return vae, vae.config.latent_channels, config.resolution // factor


def build_training_model(config: TrainConfig, channels: int, resolution: int, num_classes: int,
                         captions: CaptionEncoder | None, latent: bool) -> VideoFusionModel:
    """The model the config describes, at the size the model sees, with its starting weights:
    a pretrained base (``base_from``), a whole pipeline to fine-tune (``init_from``) or to
    distil (``distill_from``: the student starts as the teacher's copy), or none."""
    model = build_model(
        config.model, sample_size=resolution, channels=channels,
        condition=config.condition, num_classes=num_classes or 10,
        text_dim=captions.dim if captions else 384,
        base_channels=config.base_channels, residual_channels=config.residual_channels,
        layers_per_block=config.layers_per_block, residual_input=config.residual_input,
        key_frame_correction=config.key_frame_correction,
    )
    if config.base_from:
        model.base = BaseGenerator.from_pretrained(config.base_from)
        check_base(model.base, config, channels, captions, latent)
    elif config.init_from or config.distill_from:
        init_from(model, Path(config.init_from or config.distill_from), config)
    elif not model.is_baseline and config.base_pretrain_steps == 0 and \
            not config.base_from_scratch:
        logger.warning("stage 1 skipped: the base generator starts from random weights "
                       "(pass --base-pretrain-steps N or --base-from PATH; "
                       "--base-from-scratch says this is intended)")
    model.check_resolution(resolution, resolution)
    if config.gradient_checkpointing:
        model.residual.enable_gradient_checkpointing()
        if model.base is not None:
            model.base.unet.enable_gradient_checkpointing()
    return model


def init_from(model: VideoFusionModel, folder: Path, config: TrainConfig) -> None:
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
    for key in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end"):
        if trained.get(key) != getattr(config, key):
            raise ValueError(f"--init-from: {folder} was trained with {key} "
                             f"{trained.get(key)!r}, the config has {getattr(config, key)!r}")
    index = json.loads((folder / "model_index.json").read_text())
    parent_input = index.get("residual_input", "paper")
    own_input = config.key_frame_settings[0]  # the VDM baseline's is always "paper"
    key_inputs = KEY_FRAME_CHANNEL_INPUTS
    widen = parent_input == "paper" and own_input in key_inputs
    swap = parent_input in key_inputs and own_input in key_inputs
    if parent_input != own_input and not (widen or swap):
        raise ValueError(f"--init-from: {folder} was trained with residual_input "
                         f"{parent_input!r}, the config has {own_input!r}")
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


def check_base(base: BaseGenerator, config: TrainConfig, channels: int,
               captions: CaptionEncoder | None, latent: bool) -> None:
    """A ``base_from`` UNet must take what the run feeds it: channels, conditions, text width."""
    unet = base.unet.config
    if unet.in_channels != channels:
        space = "the VAE's latents" if latent else "the data"
        raise ValueError(f"--base-from has {unet.in_channels} channels, {space} {channels}")
    if base.conditioning.name != config.condition:
        raise ValueError(f"--base-from is not conditioned like --condition {config.condition}")
    if captions is not None and unet.cross_attention_dim != captions.dim:
        raise ValueError(f"--base-from attends to {unet.cross_attention_dim}-d text states, "
                         f"the text encoder gives {captions.dim}")


class TrainingModule(nn.Module):
    """The one module accelerate wraps (DDP, or FSDP2's root), so that both stages' gradients
    are all-reduced: ``image=True`` runs the base generator alone (stage 1), otherwise the full
    model."""

    def __init__(self, model: VideoFusionModel):
        super().__init__()
        self.model = model

    def forward(self, *args, image: bool = False, **kwargs):
        return self.model.base(*args, **kwargs) if image else self.model(*args, **kwargs)


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
        betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon,
    )
