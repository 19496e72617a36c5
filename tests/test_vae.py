"""Latent space: ``train-vae``, training and sampling through a frozen AutoencoderKL, bad --vae."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from videofusion.cli import main
from videofusion.config import TrainConfig
from videofusion.data import MovingDigits
from videofusion.pipeline import VideoFusionPipeline
from videofusion.train import train
from videofusion.vae import build_vae, encode_video, load_vae, psnr

VAE_FLAGS = ["--data", "moving-digits", "--resolution", "16", "--batch-size", "8",
             "--block-channels", "8,16", "--latent-channels", "4", "--lr", "2e-3"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """``videofusion train-vae`` for 40 steps on 16x16 moving digits (a few seconds)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("vae") / "out"
    assert main(["train-vae", *VAE_FLAGS, "--steps", "40", "--out", str(out)]) == 0
    return out


def frames(count=16, seed=7):
    clips = MovingDigits(split="test", num_frames=1, resolution=16, seed=seed)
    return torch.stack([clips[i]["video"][:, 0] for i in range(count)])


def test_train_vae_writes_a_loadable_vae_with_unit_variance_latents(vae_dir, capsys):
    vae = load_vae(vae_dir)  # finds vae_dir/vae
    assert (vae_dir / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert vae.config.latent_channels == 4 and vae.config.block_out_channels == [8, 16]
    images = frames()
    with torch.no_grad():
        latents = encode_video(vae, images[:, :, None])  # (16, 4, 1, 8, 8)
    assert latents.shape == (16, 4, 1, 8, 8)
    # scaling_factor = 1 / std of the latents (measured on other frames): unit variance here
    assert 0.6 < latents.std().item() < 1.6, vae.config.scaling_factor
    assert vae.config.scaling_factor != 0.18215
    summary = json.loads((vae_dir / "vae_summary.json").read_text())
    assert summary["scaling_factor"] == pytest.approx(vae.config.scaling_factor)
    # it learned: held-out PSNR well above an untrained VAE's on the same kind of frames
    torch.manual_seed(0)
    untrained = build_vae(3, 4, [8, 16], sample_size=16).eval()
    with torch.no_grad():
        before = psnr(images, untrained(images, sample_posterior=False).sample)
        after = psnr(images, vae(images, sample_posterior=False).sample)
    assert after > before + 3 and summary["held_out_psnr_db"] > before + 3, (before, after)


def test_encoding_in_slices_is_per_frame_and_scaled(vae_dir):
    vae = load_vae(vae_dir)
    video = frames(6).view(2, 3, 3, 16, 16).transpose(1, 2)  # (B=2, C, F=3, H, W)
    with torch.no_grad():
        one = encode_video(vae, video, slice_size=1)
        five = encode_video(vae, video, slice_size=5)
        direct = vae.encode(video[1, :, 2][None]).latent_dist.mean * vae.config.scaling_factor
    torch.testing.assert_close(one, five, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(one[1, :, 2], direct[0], rtol=1e-5, atol=1e-5)


def test_train_vae_stop_and_resume_is_bitwise_a_straight_run(tmp_path):
    def run(name, *extra):
        assert main(["train-vae", *VAE_FLAGS, "--steps", "4", "--out",
                     str(tmp_path / name), *extra]) == 0

    run("straight")
    run("split", "--stop-at-step", "2")
    assert not (tmp_path / "split" / "vae").exists()
    run("split", "--resume")
    for name in ("straight", "split"):
        assert (tmp_path / name / "checkpoints" / "step-000004").is_dir()
    left = load_file(tmp_path / "straight" / "checkpoints" / "step-000004" / "model.safetensors")
    right = load_file(tmp_path / "split" / "checkpoints" / "step-000004" / "model.safetensors")
    assert left.keys() == right.keys()
    assert all(torch.equal(left[k], right[k]) for k in left)


def test_latent_training_writes_a_pipeline_that_samples_rgb_frames(tmp_path, vae_dir):
    config = TrainConfig(
        frames=4, resolution=16, batch_size=2, base_channels=[8, 16], residual_channels=[8, 16],
        base_pretrain_steps=1, max_steps=2, lr_warmup_steps=1, checkpoint_every=100,
        sample_every=2, sample_num=1, sample_steps=2, log_every=1, condition="class",
        output_dir=str(tmp_path / "run"), data_options={"length": 16}, vae=str(vae_dir),
    )
    pipe = VideoFusionPipeline.from_pretrained(train(config))
    assert pipe.vae is not None and pipe.vae_scale_factor == 2
    assert pipe.vae.config.scaling_factor == pytest.approx(load_vae(vae_dir).config.scaling_factor)
    assert pipe.residual.config.out_channels == 4 and pipe.base.config.in_channels == 4
    assert pipe.base.config.sample_size == 8 and pipe.config.sample_size == 16
    assert pipe.scheduler.config.clip_sample is False  # latents are not in [-1, 1]
    latents = pipe(class_labels=[3], num_frames=4, num_inference_steps=2, progress=False,
                   output_type="latent").frames
    assert latents.shape == (1, 4, 4, 8, 8)
    video = pipe(class_labels=[3], num_frames=4, num_inference_steps=2, progress=False).frames
    assert video.shape == (1, 4, 16, 16, 3) and 0 <= video.min() and video.max() <= 1
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["latent"] == {"vae": str(vae_dir), "channels": 4, "resolution": 8}
    gif = tmp_path / "run" / "samples" / "step-000003" / "video_0.gif"
    with Image.open(gif) as image:  # decoded to 16 px, enlarged 8x
        assert image.size == (128, 128) and image.n_frames == 4


@pytest.mark.parametrize("make", [
    lambda tmp: tmp / "missing",
    lambda tmp: (tmp / "empty").mkdir() or tmp / "empty",
])
def test_a_bad_vae_path_is_one_line_and_exit_code_2(tmp_path, capsys, make):
    path = make(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--vae", str(path), "--frames", "4", "--resolution", "16",
              "--output-dir", str(tmp_path / "run"), "--base-from-scratch"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("videofusion: error: vae:"), err
    assert str(path) in err


def test_train_vae_refuses_a_resolution_its_down_sampling_cannot_take(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train-vae", "--data", "moving-digits", "--resolution", "18",
              "--block-channels", "8,16,16", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == "videofusion: error: resolution 18 is not divisible by the VAE's factor 4\n"
