"""videofusion: decomposed diffusion for video generation (Luo et al., CVPR 2023)."""

from .models.base import BaseGenerator
from .models.residual import SpaceTimeUNet
from .models.videofusion import NoisePrediction, VideoFusionModel
from .noise import DecomposedNoise, decomposed_noise, key_frame_index, make_lambdas
from .objective import diffusion_loss, image_diffusion_loss
from .sampling import Condition, sample_decomposed

__all__ = [
    "BaseGenerator",
    "Condition",
    "DecomposedNoise",
    "NoisePrediction",
    "SpaceTimeUNet",
    "VideoFusionModel",
    "decomposed_noise",
    "diffusion_loss",
    "image_diffusion_loss",
    "key_frame_index",
    "make_lambdas",
    "sample_decomposed",
]
