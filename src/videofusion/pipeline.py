"""``VideoFusionPipeline``: a diffusers pipeline that orchestrates the decomposed sampler.

It holds the components (residual generator, optional base generator, scheduler, optional VAE
and text encoder), turns prompts or class labels into conditions, calls
``videofusion.sampling.sample_decomposed`` (spec §4) and decodes the result. Without a base
generator it is the VDM baseline, sampled through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from diffusers.utils import BaseOutput
from PIL import Image

from . import long_video
from .models.residual import SpaceTimeUNet
from .models.videofusion import VideoFusionModel
from .noise import make_lambdas
from .sampling import Condition, sample_decomposed
from .text import MiniLMTextEncoder, TextEncoder

OUTPUT_TYPES = ("np", "pil", "pt", "latent")


@dataclass
class VideoFusionPipelineOutput(BaseOutput):
    """``frames``: numpy ``(batch, frames, H, W, C)`` in [0, 1], lists of PIL images, a tensor
    ``(batch, frames, C, H, W)`` in [0, 1], or the raw latent ``(batch, C, frames, h, w)``."""

    frames: np.ndarray | list | torch.Tensor


class VideoFusionPipeline(DiffusionPipeline):
    """Text-, class- or un-conditional video generation with decomposed diffusion."""

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
    ):
        super().__init__()
        self.register_modules(residual=residual, scheduler=scheduler, base=base, vae=vae,
                              text_encoder=text_encoder, tokenizer=tokenizer)
        self.register_to_config(text_encoder_kind=text_encoder_kind, residual_input=residual_input,
                                sample_size=sample_size, default_lambda=default_lambda, fps=fps)
        self._text_encoder: TextEncoder | None = None

    @property
    def model(self) -> VideoFusionModel:
        """The decomposed noise predictor over this pipeline's networks."""
        return VideoFusionModel(self.residual, self.base, self.config.residual_input)

    @property
    def num_classes(self) -> int | None:
        return self.residual.config.num_classes

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

    def _condition(self, prompt, class_labels, num_videos, guidance_scale) -> tuple[Condition, int]:
        """Prompts and/or class labels -> a Condition. A model trained on both (``class+text``)
        takes either alone: the missing one is filled with its null (dropped-condition) value."""
        text = self.residual.config.cross_attention_dim is not None
        classes = self.num_classes is not None
        if prompt is not None and not text:
            raise ValueError("this model is not text-conditioned: it takes no prompt")
        if class_labels is not None and not classes:
            raise ValueError("this model is not class-conditioned: it takes no class_labels")
        if prompt is None and class_labels is None:
            if text or classes:
                wanted = " and/or ".join(name for name, used in
                                         (("prompt", text), ("class_labels", classes)) if used)
                raise ValueError(f"this model is conditioned: pass {wanted}")
            if guidance_scale != 1.0:
                raise ValueError("guidance_scale needs a class- or text-conditioned model")
            return Condition(), num_videos
        labels = None
        if class_labels is not None:
            labels = torch.as_tensor(class_labels, device=self.device).flatten().long()
            if (labels < 0).any() or (labels >= self.num_classes).any():
                raise ValueError(
                    f"class_labels must lie in [0, {self.num_classes - 1}], got {labels.tolist()}"
                )
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
        if classes:
            if labels is None:
                labels = torch.full((count,), self.num_classes, device=self.device)
            condition.class_labels = labels.repeat_interleave(num_videos)
            condition.null_class_labels = torch.full_like(condition.class_labels,
                                                          self.num_classes)
        if text:
            prompts = [""] * count if prompts is None else prompts
            condition.encoder_hidden_states = self.encode_prompt(
                [p for p in prompts for _ in range(num_videos)])
            condition.null_encoder_hidden_states = self.encode_prompt([""]).expand_as(
                condition.encoder_hidden_states)
        return condition, count * num_videos

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        class_labels: int | list[int] | torch.Tensor | None = None,
        num_frames: int = 16,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
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
    ) -> VideoFusionPipelineOutput | tuple:
        """Generate videos. ``num_videos`` per prompt/label (or in all, when unconditional).

        ``base_noise`` ``(batch, C, h, w)`` / ``residual_noise`` ``(batch, C, frames, h, w)`` fix
        a part of the initial noise (spec §5); ``lambda_`` defaults to the trained value.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if num_videos < 1:
            raise ValueError(f"num_videos must be >= 1, got {num_videos}")
        height = height or self.config.sample_size
        width = width or self.config.sample_size
        for name, side in (("height", height), ("width", width)):
            if side % self.vae_scale_factor:
                raise ValueError(f"{name} {side} is not divisible by the VAE's factor "
                                 f"{self.vae_scale_factor}")
        condition, batch = self._condition(prompt, class_labels, num_videos, guidance_scale)
        model = self.model
        lambda_ = self.config.default_lambda if lambda_ is None else lambda_
        lambdas = model.lambdas(num_frames, lambda_)
        channels = self.residual.config.out_channels
        shape = (batch, channels, num_frames, height // self.vae_scale_factor,
                 width // self.vae_scale_factor)
        latents = sample_decomposed(
            model, self.scheduler, shape, lambdas, num_inference_steps=num_inference_steps,
            generator=generator, condition=condition, guidance_scale=guidance_scale, eta=eta,
            base_noise=base_noise, residual_noise=residual_noise, device=self.device,
            dtype=self.residual.dtype, progress=progress,
        )
        frames = latents if output_type == "latent" else self.postprocess(self.decode(latents),
                                                                           output_type)
        return VideoFusionPipelineOutput(frames=frames) if return_dict else (frames,)

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

    def lambdas(self, num_frames: int, lambda_=None) -> torch.Tensor:
        return self.model.lambdas(num_frames, self.config.default_lambda if lambda_ is None
                                  else lambda_)


__all__ = ["VideoFusionPipeline", "VideoFusionPipelineOutput", "make_lambdas"]
