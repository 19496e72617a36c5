"""videofusion: decomposed diffusion for video generation (Luo et al., CVPR 2023).

The public names below load on first use, so that ``videofusion --help`` and light imports
(``videofusion.noise``) don't pay for importing diffusers.
"""

from importlib import import_module

_EXPORTS = {
    "BaseGenerator": ".models.base",
    "DEFAULT_MODEL_DIR": ".assets",
    "Condition": ".condition",
    "Conditioning": ".condition",
    "DecomposedNoise": ".noise",
    "NoisePrediction": ".models.videofusion",
    "SamplingPlan": ".pipeline",
    "SpaceTimeUNet": ".models.residual",
    "VideoFusionModel": ".models.videofusion",
    "VideoFusionPipeline": ".pipeline",
    "decomposed_noise": ".noise",
    "diffusion_loss": ".objective",
    "image_diffusion_loss": ".objective",
    "key_frame_index": ".noise",
    "make_lambdas": ".noise",
    "sample_decomposed": ".sampling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'videofusion' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
