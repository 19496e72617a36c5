"""The training objective of spec §3.

For a clip x: draw one timestep per clip and decomposed noise (spec §1), form
``z_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps`` and regress epshat on eps, averaged over frames.
The stop-gradient lives in ``VideoFusionModel.forward``: the base generator learns only from the
key frame, where this loss is exactly its image-diffusion loss (under the same timestep
weighting, ``loss_weights``, when one other than the spec's plain average is chosen).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .choices import LOSS_WEIGHTINGS
from .noise import decomposed_noise, key_frame_index


class Loss(NamedTuple):
    loss: torch.Tensor  # scalar
    per_frame: torch.Tensor  # (B, F): mean squared error of each frame's noise prediction


def diffusion_loss(
    model: nn.Module,
    video: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    lambdas: torch.Tensor,
    *,
    class_labels: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    stop_gradient: bool = True,
    freeze_base: bool = False,
    weighting: str = "epsilon",
    snr_gamma: float = 5.0,
    base_teacher_forcing: float = 0.0,
) -> Loss:
    """Loss of spec §3 for a batch ``video`` ``(B, C, F, H, W)`` in the model's space.

    ``model`` is a ``VideoFusionModel`` (or its DDP wrapper); for the VDM baseline ``lambdas``
    are zeros and this is the standard video diffusion loss. ``weighting`` other than
    ``epsilon`` re-weights each clip by its timestep (``loss_weights``), a departure from the
    spec's plain average; ``per_frame`` stays unweighted.

    ``base_teacher_forcing`` (beyond the paper) is the chance of each clip that the residual
    generator sees the true base noise instead of bhat. The key frame's noise is all base
    (lambda^k = 1), so b is the key frame's slot of the drawn noise; those clips train the
    residual generator as image-to-video samples it, with the key frame known exactly.
    """
    z_t, timesteps, alpha_bar, noise = noised_clips(video, alphas_cumprod, lambdas, generator)
    forcing = {}
    if base_teacher_forcing > 0:
        draw = torch.rand(video.shape[0], generator=generator, device=alphas_cumprod.device)
        forcing = {"base_noise": noise[:, :, key_frame_index(video.shape[2])],
                   "teacher_forced": (draw < base_teacher_forcing).to(video.device)}
    prediction = model(z_t, timesteps, alpha_bar, lambdas, class_labels=class_labels,
                       encoder_hidden_states=encoder_hidden_states,
                       stop_gradient=stop_gradient, freeze_base=freeze_base, **forcing)
    return noise_regression(prediction, noise, alpha_bar, weighting, snr_gamma)


def noised_clips(video: torch.Tensor, alphas_cumprod: torch.Tensor, lambdas: torch.Tensor,
                 generator: torch.Generator | None = None):
    """Spec §3's forward process for a batch ``video`` ``(B, C, F, H, W)``: a timestep per clip
    drawn from all T, decomposed noise (§1), z_t = sqrt(abar) x + sqrt(1 - abar) eps. Returns
    ``(z_t, timesteps (B,), alpha_bar (B,), noise)``."""
    timesteps = torch.randint(0, alphas_cumprod.shape[0], (video.shape[0],), generator=generator,
                              device=alphas_cumprod.device).to(video.device)
    noise = decomposed_noise(video.shape, lambdas, generator, device=video.device,
                             dtype=video.dtype)
    alpha_bar = alphas_cumprod.to(video.device)[timesteps].to(video.dtype)  # (B,)
    a = alpha_bar.view(-1, 1, 1, 1, 1)
    return a.sqrt() * video + (1 - a).sqrt() * noise, timesteps, alpha_bar, noise


def noise_regression(prediction, target: torch.Tensor, alpha_bar: torch.Tensor,
                     weighting: str, snr_gamma: float, temporal_weight: float = 0.0) -> Loss:
    """The decomposed model's ``prediction`` (a ``NoisePrediction``) regressed on per-frame
    noise ``target`` ``(B, C, F, H, W)``, each clip weighted by its ``alpha_bar`` ``(B,)``.

    The target is the drawn noise in spec §3, a teacher's epsilon in progressive distillation
    (``videofusion.distillation``); either way the base generator learns as an image model.
    ``temporal_weight`` (beyond the paper, for distillation) adds the error in each change of
    epsilon between neighbouring frames: an error shared by the clip's frames costs nothing
    there, one that differs from frame to frame (what makes a sampled digit jump) costs extra.
    """
    error = prediction.noise.float() - target.float()  # (B, C, F, H, W)
    per_frame = error.pow(2).mean(dim=(1, 3, 4))
    per_clip = per_frame.mean(dim=1)  # (B,)
    if temporal_weight:
        change = error[:, :, 1:] - error[:, :, :-1]  # (B, C, F - 1, H, W)
        per_clip = per_clip + temporal_weight * change.pow(2).mean(dim=(1, 2, 3, 4))
    if prediction.key_frame_corrected:
        # spec §7: the key frame's slot holds the residual generator's correction; the base
        # generator keeps its image loss on the key frame as one more frame's term
        key_target = target[:, :, key_frame_index(target.shape[2])]
        base_term = (prediction.base.float() - key_target.float()).pow(2).mean(dim=(1, 2, 3))
        per_clip = per_clip + base_term / target.shape[2]
    weights = loss_weights(alpha_bar.float(), weighting, snr_gamma)  # (B,)
    return Loss((weights * per_clip).mean(), per_frame)


def loss_weights(alpha_bar: torch.Tensor, weighting: str, snr_gamma: float) -> torch.Tensor:
    """Per-timestep factors on the epsilon loss (``epsilon``, all ones, is spec §3).

    Written as weights of the x0 error, which the epsilon loss weights by SNR_t: ``epsilon``
    keeps SNR_t; ``min-snr`` caps it at gamma (Min-SNR-gamma, Hang et al., ICCV 2023), so the
    nearly clean timesteps stop dominating; ``v`` uses min(SNR_t + 1, gamma), the weighting of a
    v-prediction loss (Salimans & Ho, 2022) capped like Min-SNR: at the noisiest timesteps the
    x0 error keeps weight ~1 instead of ~SNR_t, so the base learns there what a sampler starts
    from (the image's mean, e.g. a black background) instead of leaving it to chance.
    ``truncated-snr`` uses max(SNR_t, 1), the x0 error below SNR 1 and the epsilon error above
    (Salimans & Ho, 2022): a few-step student's clean estimate at high noise sets the video's
    content, which the epsilon loss there barely sees (progressive distillation's default).
    """
    snr = alpha_bar / (1 - alpha_bar)
    if weighting == "epsilon":
        return torch.ones_like(snr)
    if weighting == "truncated-snr":
        return snr.clamp(min=1) / snr
    if weighting == "min-snr":
        return snr.clamp(max=snr_gamma) / snr
    if weighting == "v":
        return (snr + 1).clamp(max=snr_gamma) / snr
    raise ValueError(f"weighting must be one of {LOSS_WEIGHTINGS}, got {weighting!r}")


def image_diffusion_loss(
    base: nn.Module,
    images: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    class_labels: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    weighting: str = "epsilon",
    snr_gamma: float = 5.0,
) -> torch.Tensor:
    """Stage 1 (spec §3): the epsilon loss of the base generator on single frames
    ``(B, C, H, W)``, optionally re-weighted over timesteps (``loss_weights``)."""
    batch = images.shape[0]
    timesteps = torch.randint(0, alphas_cumprod.shape[0], (batch,), generator=generator,
                              device=alphas_cumprod.device).to(images.device)
    noise = torch.randn(images.shape, generator=generator, device=images.device,
                        dtype=images.dtype)
    a = alphas_cumprod.to(images.device)[timesteps].to(images.dtype).view(-1, 1, 1, 1)
    z_t = a.sqrt() * images + (1 - a).sqrt() * noise
    prediction = base(z_t, timesteps, class_labels, encoder_hidden_states)
    per_image = (prediction.float() - noise.float()).pow(2).mean(dim=(1, 2, 3))  # (B,)
    weights = loss_weights(a.flatten().float(), weighting, snr_gamma)
    return (weights * per_image).mean()
