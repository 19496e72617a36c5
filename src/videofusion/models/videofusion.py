"""The decomposed noise predictor of spec §2-§4: base generator + residual generator.

``VideoFusionModel`` is one ``nn.Module`` (so accelerate/DDP can wrap it) that turns a noisy clip
into the combined epsilon prediction::

    bhat     = B_phi(z_t^k, t)                                     (key frame only)
    z'_t^i   = z_t^i - sqrt(lambda^i) * sqrt(1 - abar_t) * bhat    (residual input, spec §2)
    rhat^i   = R_psi(z'_t^i, t, i)                                 (all frames, one batch)
    epshat^i = sqrt(lambda^i) * bhat + sqrt(1 - lambda^i) * rhat^i

Without a base generator it is the VDM baseline: the residual network predicts every frame's
(independent) noise directly and lambda must be 0 everywhere.

Layout: ``(batch, channels, frames, height, width)``; the key frame is ``k = frames // 2``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from torch import nn

from ..choices import RESIDUAL_INPUTS
from ..noise import combine_noise, key_frame_index, make_lambdas, per_frame
from .base import BaseGenerator

# Residual inputs that carry a second image of the key frame on C extra input channels.
KEY_FRAME_CHANNEL_INPUTS = ("with_key_frame", "key_frame_estimate")


class NoisePrediction(NamedTuple):
    noise: torch.Tensor  # epshat, (B, C, F, H, W)
    base: torch.Tensor | None  # bhat, (B, C, H, W); None for the VDM baseline
    residual: torch.Tensor  # rhat, (B, C, F, H, W)
    # True when epshat^k = stop_gradient(bhat) + rhat^k (key-frame correction, spec §7): the
    # objective then adds the base generator's own image loss on bhat.
    key_frame_corrected: bool = False


class VideoFusionModel(nn.Module):
    """Base generator (optional) and residual generator, combined as in spec §3/§4.

    ``residual_input`` picks what R_psi sees (spec §2): ``"paper"`` the frame with the estimated
    base noise removed; ``"with_key_frame"`` that plus the noisy key frame on extra channels;
    ``"key_frame_difference"`` ``z_t^i - sqrt(lambda^i) z_t^k``; ``"key_frame_estimate"`` z'
    plus the base generator's current clean estimate of the key frame,
    ``xhat0^k = (z_t^k - sqrt(1 - abar_t) bhat) / sqrt(abar_t)`` clamped to the data range, on
    extra channels. The last two are beyond the paper: with ``"key_frame_estimate"`` the
    residual generator sees, at every noise level, the content the key frame is heading to, so
    the other frames can follow it instead of guessing their own (the key-frame seam).

    ``key_frame_correction`` (beyond the paper, spec §7): the key frame's prediction becomes
    ``bhat + rhat^k``. In the paper the key frame is denoised by the base generator alone, which
    never sees the other frames, while every other frame follows the whole clip; sampled that
    way the two drift apart (the key-frame seam). The residual generator's key-frame output,
    unused by the paper, learns the base generator's error from the whole clip instead.
    """

    def __init__(self, residual: nn.Module, base: nn.Module | None = None,
                 residual_input: str = "paper", key_frame_correction: bool = False):
        super().__init__()
        if residual_input not in RESIDUAL_INPUTS:
            raise ValueError(
                f"residual_input must be one of {RESIDUAL_INPUTS}, got {residual_input!r}"
            )
        if isinstance(base, (UNet2DModel, UNet2DConditionModel)):
            base = BaseGenerator(base)
        self.base = base
        self.residual = residual
        self.residual_input = residual_input
        if key_frame_correction and base is None:
            raise ValueError("key_frame_correction needs a base generator (the VDM baseline has "
                             "no key frame)")
        self.key_frame_correction = key_frame_correction
        in_channels = getattr(getattr(residual, "config", None), "in_channels", None)
        out_channels = getattr(getattr(residual, "config", None), "out_channels", None)
        if in_channels is not None and residual_input in KEY_FRAME_CHANNEL_INPUTS:
            if in_channels != 2 * out_channels:
                raise ValueError(
                    f"residual_input={residual_input!r} needs a residual generator with twice "
                    f"as many input channels as output channels, got {in_channels} and "
                    f"{out_channels}"
                )

    @property
    def is_baseline(self) -> bool:
        return self.base is None

    def check_resolution(self, height: int, width: int) -> None:
        """Refuse a size the networks' down-sampling cannot take, before any work is done."""
        factors = [getattr(self.residual, "downsampling_factor", 1)]
        unet = getattr(self.base, "unet", None)
        if unet is not None:
            factors.append(2 ** (len(unet.config.block_out_channels) - 1))
        factor = max(factors)
        if height % factor or width % factor:
            raise ValueError(
                f"resolution {height}x{width} is not divisible by {factor}, the model's "
                "down-sampling factor"
            )

    def lambdas(self, num_frames: int, lambda_=0.5) -> torch.Tensor:
        """The per-frame lambda vector for this model: all zeros for the VDM baseline."""
        if self.is_baseline:
            make_lambdas(num_frames, 0.0)  # validates num_frames
            return torch.zeros(num_frames)
        return make_lambdas(num_frames, lambda_)

    def predict_base(self, z_t, timestep, class_labels=None, encoder_hidden_states=None):
        """bhat from the noisy key frame: ``(B, C, F, H, W)`` -> ``(B, C, H, W)``."""
        key_frame = z_t[:, :, key_frame_index(z_t.shape[2])]
        return self.base(key_frame, timestep, class_labels, encoder_hidden_states)

    def predict_residual(self, z_t, base, timestep, alpha_bar, lambdas, class_labels=None,
                         encoder_hidden_states=None):
        """rhat for every frame, given bhat (``None`` for the baseline)."""
        if base is not None:
            z_t = self._residual_input(z_t, base, alpha_bar, lambdas)
        return self.residual(z_t, timestep, class_labels=class_labels,
                             encoder_hidden_states=encoder_hidden_states)

    def forward(
        self,
        z_t: torch.Tensor,
        timestep: torch.Tensor,
        alpha_bar: torch.Tensor,
        lambdas: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        stop_gradient: bool = True,
        freeze_base: bool = False,
        base_noise: torch.Tensor | None = None,
        teacher_forced: torch.Tensor | None = None,
    ) -> NoisePrediction:
        """epshat for a noisy clip (spec §3). ``timestep``, ``alpha_bar``: ``(B,)``.

        With ``stop_gradient`` the base generator gets gradient only through the key frame; the
        other frames (and the residual input) see ``stop_gradient(bhat)``. ``freeze_base`` gives
        it none at all. For the clips marked ``teacher_forced`` ``(B,)`` the other frames see the
        true ``base_noise`` b ``(B, C, H, W)`` instead of bhat, as in image-to-video where a
        known key frame fixes b (beyond the paper: ``TrainConfig.base_teacher_forcing``).
        """
        num_frames = z_t.shape[2]
        if lambdas.numel() != num_frames:
            raise ValueError(f"lambdas has {lambdas.numel()} values for {num_frames} frames")
        cond = {"class_labels": class_labels, "encoder_hidden_states": encoder_hidden_states}
        if self.is_baseline:
            if (lambdas != 0).any():
                raise ValueError(
                    "the VDM baseline has no base generator: its lambdas must all be 0"
                )
            rhat = self.residual(z_t, timestep, **cond)
            return NoisePrediction(rhat, None, rhat)
        if (teacher_forced is None) != (base_noise is None):
            raise ValueError("teacher_forced and base_noise go together")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not freeze_base):
            bhat = self.predict_base(z_t, timestep, **cond)
        bhat_others = bhat.detach() if stop_gradient else bhat
        if teacher_forced is not None:
            forced = teacher_forced.view(-1, 1, 1, 1)
            bhat_others = torch.where(forced, base_noise.to(bhat_others), bhat_others)
        rhat = self.predict_residual(z_t, bhat_others, timestep, alpha_bar, lambdas, **cond)
        if self.key_frame_correction:
            # the base generator learns from its own image loss (objective), not through rhat^k
            return NoisePrediction(self.combine(bhat_others, rhat, lambdas), bhat, rhat, True)
        base_frames = bhat_others.unsqueeze(2).expand_as(rhat)
        if stop_gradient:
            key = torch.zeros(num_frames, dtype=torch.bool, device=z_t.device)
            key[key_frame_index(num_frames)] = True
            base_frames = torch.where(key.view(1, 1, -1, 1, 1), bhat.unsqueeze(2), base_frames)
        return NoisePrediction(combine_noise(base_frames, rhat, lambdas), bhat, rhat)

    def combine(self, bhat: torch.Tensor, rhat: torch.Tensor,
                lambdas: torch.Tensor) -> torch.Tensor:
        """epshat from bhat ``(B, C, H, W)`` and rhat ``(B, C, F, H, W)`` (spec §4), with the
        key frame's correction ``bhat + rhat^k`` when the model has one (spec §7)."""
        noise = combine_noise(bhat, rhat, lambdas)  # (B, C, F, H, W)
        if not self.key_frame_correction:
            return noise
        k = key_frame_index(rhat.shape[2])
        key = (bhat + rhat[:, :, k]).unsqueeze(2)
        return torch.cat([noise[:, :, :k], key, noise[:, :, k + 1:]], dim=2)

    def _residual_input(self, z_t, base, alpha_bar, lambdas):
        s = per_frame(lambdas, z_t)
        if self.residual_input == "key_frame_difference":
            key = z_t[:, :, key_frame_index(z_t.shape[2])].unsqueeze(2)
            return z_t - s.sqrt() * key
        sigma = (1 - alpha_bar.to(z_t)).sqrt().view(-1, 1, 1, 1, 1)
        z_res = z_t - s.sqrt() * sigma * base.unsqueeze(2)  # (B, C, F, H, W)
        if self.residual_input in KEY_FRAME_CHANNEL_INPUTS:
            key = z_t[:, :, key_frame_index(z_t.shape[2])]  # (B, C, H, W)
            if self.residual_input == "key_frame_estimate":
                a = alpha_bar.to(z_t).view(-1, 1, 1, 1)
                key = ((key - (1 - a).sqrt() * base) / a.sqrt()).clamp(-1, 1)
            key = key.unsqueeze(2).expand_as(z_t)
            z_res = torch.cat([z_res, key], dim=1)  # (B, 2C, F, H, W)
        return z_res
