"""videofusion.latents: decomposed initial noise for other diffusers video pipelines."""

import json

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    TextToVideoSDPipeline,
    UNet3DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from videofusion.latents import decomposed_latents
from videofusion.noise import key_frame_index


def frame_correlations(latents: torch.Tensor) -> torch.Tensor:
    """(batch, C, F, h, w) -> the F x F correlation of the frames over all other axes."""
    return torch.corrcoef(latents.transpose(0, 2).reshape(latents.shape[2], -1).double())


def tiny_text_to_video(tmp_path) -> TextToVideoSDPipeline:
    torch.manual_seed(0)
    unet = UNet3DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 8),
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), layers_per_block=1,
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        block_out_channels=(8, 8), norm_num_groups=4,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
        pad_token_id=1))
    # a tokenizer from a tiny vocabulary written here: nothing is downloaded
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "digit</w>": 3}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"),
                              model_max_length=8)
    pipe = TextToVideoSDPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                 unet=unet, scheduler=EulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_text_to_video_pipeline_runs_from_the_decomposed_latents(tmp_path):
    pipe = tiny_text_to_video(tmp_path)
    latents = decomposed_latents(pipe, num_frames=4, height=16, width=16, lambda_=0.5,
                                 generator=torch.Generator().manual_seed(0))
    assert latents.shape == (1, 4, 4, 8, 8)  # (batch, channels, frames, h/2, w/2)
    seen = []
    pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    video = pipe("a digit", num_frames=4, height=16, width=16, num_inference_steps=2,
                 latents=latents, output_type="np").frames
    assert video.shape == (1, 4, 16, 16, 3) and np.isfinite(video).all()
    # the pipeline scales by init_noise_sigma (157 here) and Euler's first scale_model_input
    # divides it out again: the UNet's first input is our latents, unscaled (both CFG halves)
    first = seen[0]
    assert pipe.scheduler.init_noise_sigma > 100
    torch.testing.assert_close(first, torch.cat([latents, latents]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lambda_", [0.0, 0.5, 0.8])
def test_frame_correlation_is_lambda(lambda_):
    latents = decomposed_latents(4, num_frames=5, height=16, width=16, lambda_=lambda_,
                                 batch_size=64, generator=torch.Generator().manual_seed(1))
    corr = frame_correlations(latents)
    k = key_frame_index(5)
    others = [i for i in range(5) if i != k]
    pairs = corr[others][:, others][~torch.eye(4, dtype=torch.bool)]
    # 64 * 4 * 256 = 65536 samples per frame: the std of a correlation estimate is < 0.004
    assert torch.allclose(pairs, torch.full_like(pairs, lambda_), atol=0.02)
    assert torch.allclose(corr[k, others], torch.full((4,), lambda_ ** 0.5).double(), atol=0.02)
    assert abs(latents.std().item() - 1.0) < 0.02


def test_fixed_base_noise_layout_and_bad_input():
    base = torch.randn(2, 4, 8, 8)
    a = decomposed_latents(4, 6, 8, 8, 0.5, torch.Generator().manual_seed(0), batch_size=2,
                           base_noise=base)
    b = decomposed_latents(4, 6, 8, 8, 0.5, torch.Generator().manual_seed(1), batch_size=2,
                           base_noise=base, layout="bfchw")
    torch.testing.assert_close(a[:, :, key_frame_index(6)], base)  # the key frame is all base
    assert b.shape == (2, 6, 4, 8, 8)
    torch.testing.assert_close(b[:, key_frame_index(6)], base)
    assert not torch.allclose(a.transpose(1, 2), b)  # other residual noise
    sigma = decomposed_latents(4, 6, 8, 8, 0.5, torch.Generator().manual_seed(0), batch_size=2,
                               base_noise=base, init_noise_sigma=3.0)
    torch.testing.assert_close(sigma, 3.0 * a)
    with pytest.raises(ValueError, match="layout"):
        decomposed_latents(4, 6, 8, 8, layout="bchw")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        decomposed_latents(4, 6, 8, 8, lambda_=2.0)
    with pytest.raises(ValueError, match="unet or transformer"):
        decomposed_latents("pipe", 6, 8, 8)
