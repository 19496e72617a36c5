"""The cases of the golden-video test: every way a user turns a seed into a video.

Shared by tests/test_golden_videos.py and scripts/make_golden_videos.py (which wrote the
fixture). Few steps, few frames: they pin what the code does with a seed, not quality.
"""

from __future__ import annotations

import numpy as np
import torch

from videofusion.control import content_motion_grid
from videofusion.long_video import generate_long


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _class_ddpm_guided(pipe):
    # the folder's own scheduler (DDPM: fresh noise every step) with the default guidance
    return pipe(class_labels=[3, 7], num_frames=16, num_inference_steps=4, guidance_scale=4.0,
                generator=_seeded(0), progress=False).frames


def _class_ddpm_unanchored(pipe):
    # the same without the folder's colour anchoring (default_colour_anchoring)
    return pipe(class_labels=[3, 7], num_frames=16, num_inference_steps=4, guidance_scale=4.0,
                generator=_seeded(0), progress=False, colour_anchoring=0.0).frames


def _caption_ddim(pipe):
    pipe.use_scheduler("ddim")
    return pipe(prompt="a green digit 5 moving up", num_frames=16, num_inference_steps=4,
                guidance_scale=2.0, generator=_seeded(1), progress=False).frames


def _class_ddim_eta1_unguided(pipe):
    pipe.use_scheduler("ddim")
    return pipe(class_labels=1, num_frames=12, num_inference_steps=4, eta=1.0,
                generator=_seeded(2), progress=False).frames


def _both_dpm_no_leak(pipe):
    pipe.use_scheduler("dpm")
    return pipe(prompt="a blue digit", class_labels=9, num_frames=8, num_inference_steps=4,
                guidance_scale=3.0, generator=_seeded(3), signal_leak=False,
                progress=False).frames


def _class_euler_lambda(pipe):
    pipe.use_scheduler("euler")
    return pipe(class_labels=0, num_frames=8, num_inference_steps=4, lambda_=0.75,
                guidance_scale=2.0, generator=_seeded(4), progress=False).frames


def _key_frame_image() -> np.ndarray:
    image = np.linspace(0, 1, 32 * 32 * 3, dtype=np.float32).reshape(32, 32, 3)
    image[8:24, 12:20] = [1.0, 0.2, 0.2]
    return image


def _image_to_video(pipe):
    # the paper's image-to-video, without the reconstruction guidance
    return pipe(class_labels=4, image=_key_frame_image(), num_frames=16, num_inference_steps=4,
                guidance_scale=4.0, generator=_seeded(5), progress=False,
                reconstruction_guidance_scale=0.0).frames


def _image_to_video_guided(pipe):
    # the folder's own reconstruction guidance (default_reconstruction_guidance_scale)
    return pipe(class_labels=6, image=_key_frame_image(), num_frames=8, num_inference_steps=3,
                guidance_scale=4.0, generator=_seeded(11), progress=False).frames


def _fixed_noise_ddpm(pipe):
    base = torch.randn(2, 3, 32, 32, generator=_seeded(6))
    residual = torch.randn(2, 3, 8, 32, 32, generator=_seeded(7))
    return pipe(class_labels=[2, 2], num_frames=8, num_inference_steps=4, guidance_scale=4.0,
                base_noise=base, residual_noise=residual, generator=_seeded(8),
                progress=False).frames


def _control_grid(pipe):
    return content_motion_grid(pipe, 2, 2, class_labels=6, num_frames=8, seed=9,
                               num_inference_steps=3, guidance_scale=4.0,
                               progress=False).videos


def _long_video(pipe):
    return generate_long(pipe, num_frames=28, clip_frames=16, overlap=4, class_labels=8,
                         num_inference_steps=3, guidance_scale=4.0, generator=_seeded(10),
                         progress=False)


CASES = {
    "class_ddpm_guided": _class_ddpm_guided,
    "class_ddpm_unanchored": _class_ddpm_unanchored,
    "caption_ddim": _caption_ddim,
    "class_ddim_eta1_unguided": _class_ddim_eta1_unguided,
    "both_dpm_no_leak": _both_dpm_no_leak,
    "class_euler_lambda": _class_euler_lambda,
    "image_to_video": _image_to_video,
    "image_to_video_guided": _image_to_video_guided,
    "fixed_noise_ddpm": _fixed_noise_ddpm,
    "control_grid": _control_grid,
    "long_video": _long_video,
}


def run_case(pipe, name: str) -> np.ndarray:
    """The case's frames in [0, 1]; the pipeline's scheduler is restored afterwards."""
    scheduler = pipe.scheduler
    try:
        return np.asarray(CASES[name](pipe))
    finally:
        pipe.scheduler = scheduler
