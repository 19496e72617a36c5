"""The base generator B_phi of spec §2: any diffusers image UNet, run on the key frame only.

Because lambda^k = 1, the key frame's noisy latent is an ordinary noisy image, so an
epsilon-predicting image diffusion model (a DDPM ``UNet2DModel``, a Stable Diffusion
``UNet2DConditionModel``) serves as the base generator unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from torch import nn

from ..condition import Conditioning

IMAGE_UNETS = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}


class BaseGenerator(nn.Module):
    """Calls a diffusers image UNet with the condition it understands."""

    def __init__(self, unet: UNet2DModel | UNet2DConditionModel):
        super().__init__()
        if not isinstance(unet, tuple(IMAGE_UNETS.values())):
            raise TypeError(
                f"the base generator must be a UNet2DModel or UNet2DConditionModel, got "
                f"{type(unet).__name__}"
            )
        self.unet = unet

    @property
    def conditioning(self) -> Conditioning:
        """What the image UNet accepts: its class table holds the labels and the null one."""
        embeds = self.unet.config.num_class_embeds
        return Conditioning(None if embeds is None else embeds - 1,
                            isinstance(self.unet, UNet2DConditionModel))

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> BaseGenerator:
        """Load an image UNet from a local folder: the UNet folder itself, a diffusers pipeline
        folder with a ``unet/`` subfolder (a DDPM or Stable Diffusion checkpoint on disk), or a
        ``VideoFusionPipeline`` folder (its ``base/``)."""
        path = Path(path)
        for sub in ("unet", "base"):
            if (path / sub / "config.json").is_file():
                path = path / sub
                break
        config = path / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"no diffusers UNet config.json in {path}")
        name = json.loads(config.read_text()).get("_class_name")
        if name not in IMAGE_UNETS:
            raise ValueError(f"{config} holds a {name}, not one of {sorted(IMAGE_UNETS)}")
        return cls(IMAGE_UNETS[name].from_pretrained(path, **kwargs))

    def forward(
        self,
        key_frame: torch.Tensor,
        timestep: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the base noise from the noisy key frame ``(B, C, H, W)``."""
        conditioning = self.conditioning
        if not conditioning.classes:
            class_labels = None
        elif class_labels is None:
            raise ValueError("the base generator is class-conditioned: pass class_labels")
        if conditioning.text:
            if encoder_hidden_states is None:
                raise ValueError(
                    "the base generator is text-conditioned: pass encoder_hidden_states"
                )
            out = self.unet(key_frame, timestep, encoder_hidden_states=encoder_hidden_states,
                            class_labels=class_labels).sample
        else:
            out = self.unet(key_frame, timestep, class_labels=class_labels).sample
        # UNets that learn their variance predict (epsilon, variance): keep epsilon
        return out[:, : key_frame.shape[1]]
