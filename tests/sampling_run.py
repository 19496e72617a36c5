"""The pipeline's prepare-latents and denoise stages over a bare model and scheduler, for the
sampler's tests: shape, lambdas and noise in, z_0 out (``VideoFusionPipeline.generate``)."""

from __future__ import annotations

import torch

from videofusion.noise import FreshNoise, decomposed_noise
from videofusion.sampling import initial_latents, sample_decomposed


def sample(model, scheduler, shape, lambdas, *, num_inference_steps=50, generator=None,
           base_noise=None, residual_noise=None, signal_leak=None, key_frame=None,
           dtype=torch.float32, **denoise) -> torch.Tensor:
    noise = decomposed_noise(shape, lambdas, generator, base_noise=base_noise,
                             residual_noise=residual_noise, dtype=dtype, return_parts=True)
    latents = initial_latents(scheduler, noise, num_inference_steps, signal_leak=signal_leak,
                              key_frame=key_frame)
    fresh_noise = FreshNoise(lambdas, generator, base_noise, residual_noise)
    return sample_decomposed(model, scheduler, latents, fresh_noise, key_frame=key_frame,
                             **denoise)
