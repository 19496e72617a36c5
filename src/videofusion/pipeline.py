"""``VideoFusionPipeline``: a diffusers pipeline that orchestrates the decomposed sampler.

It holds the components (residual generator, optional base generator, scheduler, optional VAE
and text encoder) and samples in named stages, as diffusers' pipelines do: ``check_inputs`` ->
``prepare_condition`` (prompts or class labels -> a ``Condition``) -> ``prepare_latents`` (z_T,
spec §1/§4) -> ``denoise`` (``videofusion.sampling.sample_decomposed``, spec §4) -> ``decode``.
The first two make one ``SamplingPlan`` (``plan``), which ``__call__``, long videos and the
control grid share instead of working sizes, lambdas and conditions out again. Without a base
generator it is the VDM baseline, sampled through the same code.
"""

from __future__ import annotations

import errno
import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DiffusionPipeline
from diffusers.utils import BaseOutput
from PIL import Image

from . import long_video
from .choices import (
    DEFAULT_INFERENCE_STEPS,
    DEFAULT_NUM_FRAMES,
    OUTPUT_TYPES,
    SCHEDULER_SETTINGS,
    SCHEDULERS,
)
from .class_names import class_indices, resolve_class_names
from .colour_anchoring import check_colour_anchoring
from .condition import Condition, Conditioning
from .devices import resolve_dtype
from .guidance_interval import check_guidance_interval
from .models.residual import SpaceTimeUNet
from .models.videofusion import VideoFusionModel
from .noise import DecomposedNoise, FreshNoise, decomposed_noise, make_lambdas
from .reconstruction_guidance import check_reconstruction_guidance
from .safety import check_safetensors
from .sampling import initial_latents, sample_decomposed
from .text import MiniLMTextEncoder, TextEncoder


@dataclass
class VideoFusionPipelineOutput(BaseOutput):
    """``frames``: numpy ``(batch, frames, H, W, C)`` in [0, 1], lists of PIL images, a tensor
    ``(batch, frames, C, H, W)`` in [0, 1], or the raw latent ``(batch, C, frames, h, w)``."""

    frames: np.ndarray | list | torch.Tensor


@dataclass
class SamplingPlan:
    """Everything a sampling run needs but its noise, worked out once from a request
    (``VideoFusionPipeline.plan``): the later stages, long videos and the control grid read it
    instead of deciding sizes, lambdas and conditions again."""

    height: int  # pixels
    width: int
    latent_shape: tuple[int, int, int, int, int]  # (batch, channels, frames, h, w)
    lambdas: torch.Tensor  # (frames,)
    condition: Condition
    guidance_scale: float
    num_inference_steps: int
    eta: float = 0.0
    key_frame: torch.Tensor | None = None  # (batch, channels, h, w), model space
    signal_leak: torch.Tensor | None = None  # (channels,): z_T's data mean, or pure noise
    dtype: torch.dtype = torch.float32  # the networks' forward passes (autocast); latents: fp32
    residual_guidance_scale: float | None = None  # None: guidance_scale
    reconstruction_guidance_scale: float = 0.0  # towards the given key frame; 0: off
    colour_anchoring: float = 0.0  # frames' foreground colour towards the key frame's; 0: off
    guidance_interval: tuple[float, float] | None = None  # sigma_t of guided steps; None: all

    @property
    def batch(self) -> int:
        return self.latent_shape[0]


def clip_as_threshold(config, cls) -> dict:
    """The folder's ``clip_sample`` to [-1, 1], for a scheduler that has no such setting but
    thresholds x0 (DPM-Solver, UniPC): dynamic thresholding whose largest threshold is 1 is that
    clip. Without it those solvers sample a pixel-space model with x0 unbounded, which cost the
    digits model five points of class content at 8 steps (docs/results.md, "Few-step")."""
    if (has_setting(cls, "clip_sample") or not has_setting(cls, "thresholding")
            or not config.get("clip_sample") or config.get("clip_sample_range", 1.0) != 1.0):
        return {}
    return {"thresholding": True, "sample_max_value": 1.0}


def has_setting(cls, name: str) -> bool:
    """Whether scheduler class ``cls`` takes config key ``name`` (one made ``from_config`` of
    another class's config keeps that one's keys, whether it reads them or not)."""
    return name in inspect.signature(cls.__init__).parameters


class VideoFusionPipeline(DiffusionPipeline):
    """Text-, class- or un-conditional video generation with decomposed diffusion.

    A folder written by progressive distillation (``videofusion.distillation``) records
    ``distilled_guidance_scale``, the guidance its networks have folded in, and
    ``distilled_steps``, the DDIM step count they were distilled for; it samples with guidance 1.
    A class-conditioned folder records its classes' names (``class_names``, one per label;
    ``videofusion.class_names``); one saved without them is named by its indices.
    """

    _optional_components = ["base", "vae", "text_encoder", "tokenizer"]

    def __init__(
        self,
        residual: SpaceTimeUNet,
        scheduler,
        base=None,
        vae: AutoencoderKL | None = None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_kind: str | None = None,
        residual_input: str = "paper",
        sample_size: int = 32,
        default_lambda: float = 0.5,
        fps: int = 8,
        signal_leak_mean: list[float] | None = None,
        default_guidance_scale: float | None = None,
        key_frame_correction: bool = False,
        default_inference_steps: int | None = None,
        distilled_guidance_scale: float | None = None,
        distilled_steps: int | None = None,
        class_names: list[str] | None = None,
        default_reconstruction_guidance_scale: float | None = None,
        default_colour_anchoring: float | None = None,
    ):
        super().__init__()
        self.register_modules(residual=residual, scheduler=scheduler, base=base, vae=vae,
                              text_encoder=text_encoder, tokenizer=tokenizer)
        self.register_to_config(text_encoder_kind=text_encoder_kind, residual_input=residual_input,
                                sample_size=sample_size, default_lambda=default_lambda, fps=fps,
                                signal_leak_mean=signal_leak_mean,
                                default_guidance_scale=default_guidance_scale,
                                key_frame_correction=key_frame_correction,
                                default_inference_steps=default_inference_steps,
                                distilled_guidance_scale=distilled_guidance_scale,
                                distilled_steps=distilled_steps,
                                default_reconstruction_guidance_scale=(
                                    default_reconstruction_guidance_scale),
                                default_colour_anchoring=default_colour_anchoring)
        if class_names is not None:  # checked: names that do not fit the model are refused
            class_names = resolve_class_names(class_names, self.num_classes)
        self.register_to_config(class_names=class_names)
        self._text_encoder: TextEncoder | None = None
        self._own_scheduler = sampler_identity(scheduler)  # what default_inference_steps is for
        self._model: VideoFusionModel | None = None

    @property
    def model(self) -> VideoFusionModel:
        """The decomposed noise predictor over this pipeline's networks, built again only when
        one of them is replaced."""
        model = self._model
        if (model is None or model.residual is not self.residual
                or getattr(model.base, "unet", None) is not self.base
                or model.residual_input != self.config.residual_input
                or model.key_frame_correction != self.config.key_frame_correction):
            model = self._model = VideoFusionModel(self.residual, self.base,
                                                   self.config.residual_input,
                                                   self.config.key_frame_correction)
        return model

    @property
    def conditioning(self) -> Conditioning:
        """What this model accepts: class labels, prompts, both or neither."""
        return Conditioning.of(self.residual)

    @property
    def num_classes(self) -> int | None:
        return self.conditioning.num_classes

    @property
    def class_names(self) -> list[str] | None:
        """The name of each class label (``class_names`` in ``model_index.json``), its index
        as a string where the folder recorded none; None for a model without classes.
        ``prepare_condition`` takes a name wherever it takes a label."""
        return resolve_class_names(self.config.get("class_names"), self.num_classes)

    def use_scheduler(self, name: str | None) -> VideoFusionPipeline:
        """Sample with another diffusers scheduler on the same trained noise schedule
        (``None`` keeps the folder's own); returns the pipeline."""
        if name is None:
            return self
        if name not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {tuple(SCHEDULERS)}, got {name!r}")
        import diffusers

        cls = getattr(diffusers, SCHEDULERS[name])
        settings = {**clip_as_threshold(self.scheduler.config, cls),
                    **SCHEDULER_SETTINGS.get(name, {})}
        self.scheduler = cls.from_config(self.scheduler.config, **settings)
        return self

    def signal_leak(self, enabled: bool = True) -> torch.Tensor | None:
        """The training data's per-channel mean that starts z_T (``initial_latents``), or
        None: turned off, or a folder saved without it (sampled as spec §4 says)."""
        mean = self.config.get("signal_leak_mean")
        return None if not enabled or mean is None else torch.tensor(mean, dtype=torch.float32)

    @property
    def default_steps(self) -> int:
        """The step count the CLI, the studio and evaluation use when none is given: the one
        measured for this folder's own scheduler (``default_inference_steps``) while that
        scheduler samples, else ``DEFAULT_INFERENCE_STEPS``."""
        recorded = self.config.get("default_inference_steps")
        if recorded is None or sampler_identity(self.scheduler) != self._own_scheduler:
            return DEFAULT_INFERENCE_STEPS
        return int(recorded)

    @property
    def default_guidance(self) -> float:
        """The guidance scale the CLI, evaluation and scripts use when none is given: the one
        measured best for this folder (``default_guidance_scale``), else 2 for conditioned
        models, else 1 (no guidance)."""
        if not self.conditioning.is_conditioned:
            return 1.0
        recorded = self.config.get("default_guidance_scale")
        return 2.0 if recorded is None else float(recorded)

    @property
    def default_reconstruction_guidance(self) -> float:
        """The reconstruction guidance of image-to-video when none is given: the one measured
        for this folder (``default_reconstruction_guidance_scale``) while the folder's own
        scheduler samples, else 0 (off): a scale measured for one sampler is not known to
        carry over to another (``docs/results/coherence/README.md``, "Other samplers")."""
        recorded = self.config.get("default_reconstruction_guidance_scale")
        if recorded is None or sampler_identity(self.scheduler) != self._own_scheduler:
            return 0.0
        return float(recorded)

    @property
    def default_anchoring(self) -> float:
        """The colour anchoring used when none is given: the one measured for this folder
        (``default_colour_anchoring``), else 0 (off). It acts on the clean estimate, not on a
        scheduler's step, so it holds for every scheduler (``videofusion.colour_anchoring``)."""
        recorded = self.config.get("default_colour_anchoring")
        return 0.0 if recorded is None else float(recorded)

    @property
    def vae_scale_factor(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> ``(batch, tokens, dim)`` with this pipeline's text encoder."""
        if self._text_encoder is None:
            kind = self.config.text_encoder_kind
            if kind == "minilm":
                self._text_encoder = MiniLMTextEncoder()
            elif kind == "clip" and self.text_encoder is not None:
                self._text_encoder = TextEncoder(self.text_encoder, self.tokenizer,
                                                 self.tokenizer.model_max_length)
            else:
                raise ValueError("this model is not text-conditioned: it takes no prompt")
            self._text_encoder.to(self.device)
        return self._text_encoder(prompts).to(self.device)

    def check_inputs(self, height: int | None = None, width: int | None = None,
                     num_videos: int = 1) -> tuple[int, int]:
        """Refuse, before any work, a video this model cannot sample; returns ``(height,
        width)`` in pixels, the folder's ``sample_size`` where not given."""
        if num_videos < 1:
            raise ValueError(f"num_videos must be >= 1, got {num_videos}")
        height = height or self.config.sample_size
        width = width or self.config.sample_size
        for name, side in (("height", height), ("width", width)):
            if side % self.vae_scale_factor:
                raise ValueError(f"{name} {side} is not divisible by the VAE's factor "
                                 f"{self.vae_scale_factor}")
        self.model.check_resolution(height // self.vae_scale_factor,
                                    width // self.vae_scale_factor)
        return height, width

    def prepare_condition(self, prompt=None, class_labels=None, num_videos: int = 1,
                          guidance_scale: float = 1.0,
                          residual_guidance_scale: float | None = None,
                          ) -> tuple[Condition, int]:
        """Prompts and/or class labels -> the ``Condition`` of ``num_videos`` videos each, and the
        batch size. A label is an index or a class name (``class_names``). A model that accepts
        both (``class+text``) takes either alone: the missing one is filled with its null
        (dropped-condition) value."""
        accepts = self.conditioning
        scales = {"guidance_scale": guidance_scale}
        if residual_guidance_scale is not None:
            scales["residual_guidance_scale"] = residual_guidance_scale
        for name, scale in scales.items():
            self.check_guidance(name, scale)
        guided = any(scale != 1.0 for scale in scales.values())
        if prompt is not None and not accepts.text:
            raise ValueError("this model is not text-conditioned: it takes no prompt")
        if class_labels is not None and not accepts.classes:
            raise ValueError("this model is not class-conditioned: it takes no class_labels")
        if prompt is None and class_labels is None:
            if accepts.is_conditioned:
                wanted = " and/or ".join(name for name, used in
                                         (("prompt", accepts.text),
                                          ("class_labels", accepts.classes)) if used)
                raise ValueError(f"this model is conditioned: pass {wanted}")
            if guided:
                raise ValueError("guidance needs a class- or text-conditioned model")
            return Condition(), num_videos
        labels = None
        if class_labels is not None:
            if not isinstance(class_labels, torch.Tensor):  # names and indices: one rule
                class_labels = class_indices(class_labels, self.class_names, "class_labels")
            labels = torch.as_tensor(class_labels, device=self.device).flatten().long()
            if (labels < 0).any() or (labels >= accepts.num_classes).any():
                raise ValueError(f"class_labels must lie in [0, {accepts.num_classes - 1}], got "
                                 f"{labels.tolist()}")
        prompts = None if prompt is None else [prompt] if isinstance(prompt, str) else list(prompt)
        if prompts is not None and labels is not None and len(prompts) != len(labels):
            if len(prompts) == 1:
                prompts = prompts * len(labels)
            elif len(labels) == 1:
                labels = labels.expand(len(prompts))
            else:
                raise ValueError(f"prompt and class_labels pair up: got {len(prompts)} "
                                 f"prompts and {len(labels)} labels")
        count = len(prompts) if prompts is not None else len(labels)
        condition = Condition()
        if accepts.classes:
            if labels is None:
                labels = torch.full((count,), accepts.null_class_label, device=self.device)
            condition.class_labels = labels.repeat_interleave(num_videos)
            condition.null_class_labels = torch.full_like(condition.class_labels,
                                                          accepts.null_class_label)
        if accepts.text:
            prompts = [""] * count if prompts is None else prompts
            condition.encoder_hidden_states = self.encode_prompt(
                [p for p in prompts for _ in range(num_videos)])
            condition.null_encoder_hidden_states = self.encode_prompt([""]).expand_as(
                condition.encoder_hidden_states)
        return condition, count * num_videos

    def check_guidance(self, name: str, scale) -> None:
        """Refuse a guidance scale that is not a finite number, or that would guide a
        guidance-distilled model a second time."""
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) \
                or not math.isfinite(scale):
            raise ValueError(f"{name} must be a finite number (1: no guidance; the model's "
                             f"default is pipe.default_guidance), got {scale!r}")
        folded = self.config.get("distilled_guidance_scale")
        if folded is not None and scale != 1.0:
            raise ValueError(f"{name}: this model was distilled with guidance {folded:g} folded "
                             f"in and samples with guidance 1 ({scale:g} would guide it a "
                             "second time)")

    @torch.no_grad()
    def plan(
        self,
        prompt: str | list[str] | None = None,
        class_labels: int | str | list[int | str] | torch.Tensor | None = None,
        *,
        num_frames: int = DEFAULT_NUM_FRAMES,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = DEFAULT_INFERENCE_STEPS,
        guidance_scale: float = 1.0,
        residual_guidance_scale: float | None = None,
        lambda_: float | list[float] | None = None,
        num_videos: int = 1,
        eta: float = 0.0,
        image=None,
        signal_leak: bool = True,
        dtype: str | torch.dtype | None = None,
        reconstruction_guidance_scale: float | None = None,
        colour_anchoring: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
    ) -> SamplingPlan:
        """``check_inputs`` and ``prepare_condition`` of a request (``__call__``'s arguments),
        with every default decided (the lambdas validate ``num_frames``): the plan the later
        stages follow. ``reconstruction_guidance_scale`` ``None`` is the folder's default for
        image-to-video (``default_reconstruction_guidance``) and 0 without an image;
        ``colour_anchoring`` ``None`` is the folder's (``default_anchoring``)."""
        dtype = resolve_dtype(dtype)
        if colour_anchoring is None:
            colour_anchoring = self.default_anchoring
        check_colour_anchoring(colour_anchoring, latent=self.vae is not None)
        guidance_interval = check_guidance_interval(guidance_interval)
        if reconstruction_guidance_scale is None:
            reconstruction_guidance_scale = (0.0 if image is None
                                             else self.default_reconstruction_guidance)
        check_reconstruction_guidance(self.model, reconstruction_guidance_scale,
                                      image is not None)
        height, width = self.check_inputs(height, width, num_videos)
        condition, batch = self.prepare_condition(prompt, class_labels, num_videos,
                                                  guidance_scale, residual_guidance_scale)
        lambdas = self.model.lambdas(num_frames, self.config.default_lambda if lambda_ is None
                                     else lambda_)
        factor = self.vae_scale_factor
        shape = (batch, self.residual.config.out_channels, num_frames, height // factor,
                 width // factor)
        key_frame = None if image is None else self.encode_image(image, batch, height, width)
        return SamplingPlan(height, width, shape, lambdas, condition, guidance_scale,
                            num_inference_steps, eta, key_frame, self.signal_leak(signal_leak),
                            dtype, residual_guidance_scale,
                            float(reconstruction_guidance_scale), float(colour_anchoring),
                            guidance_interval)

    def prepare_latents(self, plan: SamplingPlan, generator: torch.Generator | None = None,
                        base_noise: torch.Tensor | None = None,
                        residual_noise: torch.Tensor | None = None,
                        ) -> tuple[torch.Tensor, FreshNoise]:
        """z_T of ``plan`` (``sampling.initial_latents``) and the fresh noise of its steps.

        ``base_noise`` ``(batch, C, h, w)`` / ``residual_noise`` ``(batch, C, frames, h, w)``
        fix a part of the noise (spec §5); ``generator`` draws the rest, base first, on its own
        device. Sets the scheduler's timesteps.
        """
        noise = decomposed_noise(plan.latent_shape, plan.lambdas, generator,
                                 base_noise=base_noise, residual_noise=residual_noise,
                                 dtype=self.residual.dtype, return_parts=True)
        noise = DecomposedNoise(*(part.to(self.device) for part in noise))
        latents = initial_latents(self.scheduler, noise, plan.num_inference_steps,
                                  signal_leak=plan.signal_leak, key_frame=plan.key_frame)
        return latents, FreshNoise(plan.lambdas, generator, base_noise, residual_noise)

    def denoise(self, plan: SamplingPlan, latents: torch.Tensor, fresh_noise: FreshNoise,
                before_step=None, progress: bool = True) -> torch.Tensor:
        """z_T -> z_0 (``sampling.sample_decomposed``); ``before_step`` is its hook."""
        return sample_decomposed(
            self.model, self.scheduler, latents, fresh_noise, condition=plan.condition,
            guidance_scale=plan.guidance_scale,
            residual_guidance_scale=plan.residual_guidance_scale, eta=plan.eta,
            key_frame=plan.key_frame,
            reconstruction_guidance_scale=plan.reconstruction_guidance_scale,
            colour_anchoring=plan.colour_anchoring, guidance_interval=plan.guidance_interval,
            before_step=before_step, progress=progress, dtype=plan.dtype,
        )

    @torch.no_grad()
    def generate(self, plan: SamplingPlan, generator: torch.Generator | None = None,
                 base_noise: torch.Tensor | None = None,
                 residual_noise: torch.Tensor | None = None, output_type: str = "np",
                 progress: bool = True):
        """Run ``plan``: prepare latents, denoise, decode; frames as ``output_type`` says."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        latents, fresh_noise = self.prepare_latents(plan, generator, base_noise, residual_noise)
        latents = self.denoise(plan, latents, fresh_noise, progress=progress)
        if output_type == "latent":
            return latents
        return self.postprocess(self.decode(latents), output_type)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        class_labels: int | str | list[int | str] | torch.Tensor | None = None,
        num_frames: int = DEFAULT_NUM_FRAMES,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = DEFAULT_INFERENCE_STEPS,
        guidance_scale: float = 1.0,
        lambda_: float | list[float] | None = None,
        generator: torch.Generator | None = None,
        base_noise: torch.Tensor | None = None,
        residual_noise: torch.Tensor | None = None,
        num_videos: int = 1,
        eta: float = 0.0,
        output_type: str = "np",
        return_dict: bool = True,
        progress: bool = True,
        image=None,
        signal_leak: bool = True,
        dtype: str | torch.dtype | None = None,
        residual_guidance_scale: float | None = None,
        reconstruction_guidance_scale: float | None = None,
        colour_anchoring: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
    ) -> VideoFusionPipelineOutput | tuple:
        """Generate videos. ``num_videos`` per prompt/label (or in all, when unconditional).

        ``base_noise`` ``(batch, C, h, w)`` / ``residual_noise`` ``(batch, C, frames, h, w)`` fix
        a part of the initial noise (spec §5); ``lambda_`` defaults to the trained value.
        ``image`` makes it image-to-video: the image is the key frame (frame ``num_frames // 2``)
        of every video, the clip is generated around it (``sample_decomposed``'s ``key_frame``).
        It is a PIL image, numpy ``(H, W[, C])`` uint8 or float in [0, 1], a tensor ``(C, H, W)``
        or ``(batch, C, H, W)`` in [0, 1], or a list of those (one per video); it is resized to
        the sample size. ``signal_leak=False`` starts from pure noise even if the folder holds
        its training data's mean (``signal_leak_mean``; ``initial_latents`` says why).
        ``dtype`` (``"fp16"``, ``"bf16"`` or a torch dtype) runs the networks under autocast;
        the latents and the scheduler stay fp32 (``sample_decomposed``).
        ``residual_guidance_scale`` guides the residual generator with a scale of its own
        (``None``: ``guidance_scale``; ``sampling.guided_noise_prediction``).
        ``reconstruction_guidance_scale`` pulls the other frames of image-to-video towards the
        image (``videofusion.reconstruction_guidance``; ``None``: the folder's
        ``default_reconstruction_guidance``). ``colour_anchoring`` moves every frame's
        foreground colour towards the key frame's (``videofusion.colour_anchoring``; ``None``:
        the folder's ``default_colour_anchoring``, 0: off). ``guidance_interval`` ``(low,
        high)`` guides only the steps whose sigma_t = sqrt((1 - abar_t) / abar_t) lies in it
        (``videofusion.guidance_interval``; ``None``: every step).
        """
        plan = self.plan(prompt, class_labels, num_frames=num_frames, height=height, width=width,
                         num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                         residual_guidance_scale=residual_guidance_scale,
                         lambda_=lambda_, num_videos=num_videos, eta=eta, image=image,
                         signal_leak=signal_leak, dtype=dtype,
                         reconstruction_guidance_scale=reconstruction_guidance_scale,
                         colour_anchoring=colour_anchoring, guidance_interval=guidance_interval)
        frames = self.generate(plan, generator, base_noise, residual_noise, output_type, progress)
        return VideoFusionPipelineOutput(frames=frames) if return_dict else (frames,)

    def encode_image(self, image, batch: int, height: int, width: int) -> torch.Tensor:
        """An image (see ``__call__``) -> the key frame in model space ``(batch, C, h, w)``:
        pixels in [-1, 1], or the VAE latent's mode times ``scaling_factor``."""
        pixels = image_to_tensor(image)  # (n, C, H, W) in [0, 1]
        if len(pixels) not in (1, batch):
            raise ValueError(f"got a batch of {len(pixels)} images for {batch} videos: pass one "
                             "image, or one per video")
        channels = (self.vae.config.in_channels if self.vae is not None
                    else self.residual.config.out_channels)
        pixels = match_channels(pixels, channels)
        if pixels.shape[-2:] != (height, width):
            pixels = F.interpolate(pixels, size=(height, width), mode="bilinear",
                                   antialias=True)
        pixels = (pixels * 2 - 1).expand(batch, -1, -1, -1).to(self.device)
        if self.vae is None:
            return pixels.to(self.residual.dtype)
        latents = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mode()
        return (latents * self.vae.config.scaling_factor).to(self.residual.dtype)

    def decode(self, latents: torch.Tensor, frames_per_slice: int = 8) -> torch.Tensor:
        """Latents -> pixels ``(B, C, F, H, W)`` in [-1, 1], a few frames at a time."""
        if self.vae is None:
            return latents
        b, c, f = latents.shape[:3]
        flat = latents.transpose(1, 2).reshape(b * f, c, *latents.shape[3:])
        flat = flat / self.vae.config.scaling_factor
        pixels = torch.cat([self.vae.decode(chunk).sample
                            for chunk in flat.split(frames_per_slice)])
        return pixels.view(b, f, *pixels.shape[1:]).transpose(1, 2)

    @staticmethod
    def postprocess(video: torch.Tensor, output_type: str = "np"):
        """``(B, C, F, H, W)`` in [-1, 1] -> the requested output type."""
        video = ((video.float() + 1) / 2).clamp(0, 1).permute(0, 2, 1, 3, 4)  # (B, F, C, H, W)
        if output_type == "pt":
            return video
        frames = video.permute(0, 1, 3, 4, 2).cpu().numpy()  # (B, F, H, W, C)
        if output_type == "np":
            return frames
        frames = (frames * 255 + 0.5).astype(np.uint8)
        if frames.shape[-1] == 1:
            frames = frames[..., 0]
        return [[Image.fromarray(f) for f in clip] for clip in frames]

    @classmethod
    def from_components(cls, residual, base=None, scheduler=None, **kwargs):
        """A pipeline from networks in memory (the trainer's final save uses this)."""
        from diffusers import DDIMScheduler

        return cls(residual=residual, base=base, scheduler=scheduler or DDIMScheduler(), **kwargs)

    def generate_long(self, num_frames: int = 512, clip_frames: int = 16, overlap: int = 4,
                      **kwargs):
        """A long video as consecutive clips sharing the base noise, seams pinned (spec §5).

        Returns the frames ``(batch, num_frames, H, W, C)``, or streams them into ``out_path``
        (an mp4) and returns its path; see ``videofusion.long_video.generate_long``.
        """
        return long_video.generate_long(self, num_frames, clip_frames, overlap, **kwargs)


def sampler_identity(scheduler) -> tuple[str, str | None]:
    """What makes two schedulers the same sampler: the class and, for DPM-Solver, whether it
    solves the ODE or the SDE (``algorithm_type``, counted only where the class takes it)."""
    takes = has_setting(type(scheduler), "algorithm_type")
    return type(scheduler).__name__, scheduler.config.get("algorithm_type") if takes else None


def load_pipeline(folder: str | Path) -> VideoFusionPipeline:
    """A model folder, checked first: a missing folder is ``FileNotFoundError``, one without
    ``model_index.json`` or with unsafe weights ``ValueError`` (one line each, for the CLI and
    the studio). Diffusers' loading bar is turned off to keep stderr for sampling and errors."""
    from diffusers.utils import logging as diffusers_logging

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"{folder} is not a VideoFusionPipeline folder (no model_index.json)")
    diffusers_logging.disable_progress_bar()
    check_safetensors(folder)
    return VideoFusionPipeline.from_pretrained(folder)


def image_to_tensor(image) -> torch.Tensor:
    """A PIL image, numpy ``(H, W[, C])`` (uint8, or float in [0, 1]), a tensor ``(C, H, W)`` /
    ``(n, C, H, W)`` in [0, 1] (the ``"pt"`` output's range), or a list of them -> float
    ``(n, C, H, W)`` in [0, 1], C = 1 or 3 (an alpha channel is dropped)."""
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError("image is an empty list")
        return torch.cat([image_to_tensor(one) for one in image])
    if isinstance(image, Image.Image):
        image = np.array(image if image.mode in ("L", "RGB") else image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3:
            raise ValueError(f"a numpy image must be (H, W) or (H, W, C), got {image.shape}")
        scale = 255.0 if image.dtype == np.uint8 else 1.0
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / scale
    if not isinstance(image, torch.Tensor):
        raise ValueError("image must be a PIL image, a numpy array, a tensor or a list of them, "
                         f"got {type(image).__name__}")
    image = image.float()
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4 or image.shape[1] not in (1, 3, 4):
        raise ValueError("an image must have 1, 3 or 4 channels (C, H, W) or (n, C, H, W), got "
                         f"shape {tuple(image.shape)}")
    if not torch.isfinite(image).all() or image.min() < 0 or image.max() > 1:
        raise ValueError("float images must lie in [0, 1] (uint8 numpy or PIL for 0-255), got "
                         f"values in [{image.min().item():.3g}, {image.max().item():.3g}]")
    return image[:, :3]


def match_channels(pixels: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey -> RGB by repetition, RGB -> grey by luma (ITU-R 601, as PIL's ``convert("L")``)."""
    if pixels.shape[1] == channels:
        return pixels
    if channels not in (1, 3):
        raise ValueError(f"an image can only be the key frame of a 1- or 3-channel model, this "
                         f"one has {channels} channels")
    if channels == 3:
        return pixels.expand(-1, 3, -1, -1)
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels * luma).sum(1, keepdim=True)


def read_image(path: str | Path) -> Image.Image:
    """An image file, loaded; a missing file is ``FileNotFoundError``, an unreadable one
    ``ValueError`` (one line each, for the CLI)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "image not found", str(path))
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


__all__ = ["VideoFusionPipeline", "VideoFusionPipelineOutput", "make_lambdas"]
