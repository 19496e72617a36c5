"""Image-to-video (spec §2: the key frame carries the base): sampler oracle, pipeline, CLI."""

import numpy as np
import pytest
import torch
from conftest import tiny_base, tiny_residual, tiny_vae
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
)
from PIL import Image
from sampling_run import sample
from torch import nn

from videofusion import VideoFusionModel, make_lambdas
from videofusion.cli import main
from videofusion.noise import key_frame_index
from videofusion.pipeline import VideoFusionPipeline
from videofusion.sampling import alpha_bar_at

SCHEDULERS = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler,
              "dpm": DPMSolverMultistepScheduler, "euler": EulerDiscreteScheduler}


def abar_lookup(scheduler):
    def abar_of(timestep):
        i = int((scheduler.timesteps == timestep.flatten()[0]).nonzero()[0])
        return alpha_bar_at(scheduler, scheduler.timesteps[i], i)
    return abar_of


class OracleBase(nn.Module):
    """Exact bhat for the one-clip data distribution ``clip`` (here: the WRONG clip)."""

    def __init__(self, clip, abar_of):
        super().__init__()
        self.clip, self.abar_of = clip, abar_of

    def forward(self, key_frame, timestep, class_labels=None, encoder_hidden_states=None):
        a = self.abar_of(timestep)
        x = self.clip[:, :, key_frame_index(self.clip.shape[2])]
        return (key_frame - a.sqrt() * x) / (1 - a).sqrt()


class OracleDifferenceResidual(nn.Module):
    """Exact rhat^i for the one-clip distribution ``clip`` from the input
    ``z_t^i - sqrt(lambda^i) z_t^k`` = sqrt(abar)(x^i - sqrt(lambda^i) x^k) + sqrt(1-abar)
    sqrt(1-lambda^i) r^i. Unlike the paper's input this does not contain bhat, so a wrong bhat
    is not compensated: the clip comes out right only if the sampler's bhat is the true b."""

    def __init__(self, clip, abar_of, lambdas):
        super().__init__()
        self.clip, self.abar_of, self.lambdas = clip, abar_of, lambdas

    def forward(self, z_res, timestep, class_labels=None, encoder_hidden_states=None):
        a = self.abar_of(timestep)
        s = self.lambdas.view(1, 1, -1, 1, 1)
        key = self.clip[:, :, key_frame_index(self.clip.shape[2])].unsqueeze(2)
        clean = self.clip - s.sqrt() * key
        keep = (1 - s).sqrt()
        r = (z_res - a.sqrt() * clean) / ((1 - a).sqrt() * keep.clamp_min(1e-12))
        return torch.where(keep > 0, r, torch.zeros_like(r))


def oracle_image_to_video(scheduler, lambda_=0.5, steps=50, condition_on_key_frame=True,
                          eta=0.0):
    gen = torch.Generator().manual_seed(5)
    clip = torch.rand(2, 3, 6, 4, 4, generator=gen) * 1.6 - 0.8
    other = torch.rand(2, 3, 6, 4, 4, generator=gen) * 1.6 - 0.8
    lambdas = make_lambdas(6, lambda_)
    abar_of = abar_lookup(scheduler)
    model = VideoFusionModel(OracleDifferenceResidual(clip, abar_of, lambdas),
                             OracleBase(other, abar_of), residual_input="key_frame_difference")
    key_frame = clip[:, :, key_frame_index(6)] if condition_on_key_frame else None
    out = sample(model, scheduler, tuple(clip.shape), lambdas,
                 num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                 key_frame=key_frame, eta=eta)
    return out, clip


@pytest.mark.parametrize("lambda_", [0.3, 0.5, 0.9])
def test_oracle_conditioning_on_the_key_frame_reproduces_the_clip(lambda_):
    out, clip = oracle_image_to_video(DDIMScheduler(), lambda_)
    assert (out - clip).abs().max() < 1e-3


@pytest.mark.parametrize(("name", "eta"), [("ddpm", 0.0), ("ddim", 1.0), ("dpm", 0.0),
                                           ("euler", 0.0)])
def test_oracle_image_to_video_with_other_schedulers(name, eta):
    out, clip = oracle_image_to_video(SCHEDULERS[name](), steps=20, eta=eta)
    assert (out - clip).abs().max() < 1e-3


def test_ddim_key_frame_follows_the_image_noised_with_the_clip_base_noise():
    """Deterministic DDIM: z_t^k = sqrt(abar_t) x + sqrt(1 - abar_t) b_T at every step (the
    returned key frame is pinned, so this is where a wrong implied base noise shows)."""
    scheduler = DDIMScheduler()
    model = VideoFusionModel(tiny_residual(), tiny_base()).eval()
    key = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    base_noise = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    errors = []

    def check(i, z):
        a = alpha_bar_at(scheduler, scheduler.timesteps[i], i)
        errors.append((z[:, :, key_frame_index(4)] - a.sqrt() * key
                       - (1 - a).sqrt() * base_noise).abs().max().item())
        return z

    out = sample(model, scheduler, (1, 3, 4, 8, 8), make_lambdas(4, 0.5),
                 num_inference_steps=10, base_noise=base_noise, key_frame=key,
                 before_step=check)
    assert len(errors) == 10 and max(errors) < 1e-4
    assert torch.equal(out[:, :, key_frame_index(4)], key)


def test_oracle_without_the_key_frame_gives_another_clip():
    """The oracle test can fail: the base oracle knows another clip, so a sampler that used the
    base generator instead of the given key frame lands elsewhere."""
    out, clip = oracle_image_to_video(DDIMScheduler(), condition_on_key_frame=False)
    others = [i for i in range(6) if i != key_frame_index(6)]
    assert (out[:, :, others] - clip[:, :, others]).abs().max() > 0.1


def test_key_frame_is_refused_by_the_baseline_and_by_a_wrong_shape_or_lambda():
    model = VideoFusionModel(tiny_residual(), tiny_base())
    key = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="key_frame must have shape"):
        sample(model, DDIMScheduler(), (1, 3, 4, 8, 8), make_lambdas(4, 0.5),
               key_frame=torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="lambda = 1 on the key frame"):
        sample(model, DDIMScheduler(), (1, 3, 4, 8, 8), torch.full((4,), 0.5),
               key_frame=key)
    baseline = VideoFusionModel(tiny_residual())
    with pytest.raises(ValueError, match="needs a base generator"):
        sample(baseline, DDIMScheduler(), (1, 3, 4, 8, 8), torch.zeros(4),
               key_frame=key)


# -- pipeline ----------------------------------------------------------------------------------

def class_pipeline(**kwargs):
    return VideoFusionPipeline(residual=tiny_residual(num_classes=10),
                               base=tiny_base(num_classes=10), scheduler=DDIMScheduler(),
                               sample_size=8, **kwargs)


def run(pipe, seed=0, **kwargs):
    kwargs = {"num_frames": 4, "num_inference_steps": 3, "progress": False, **kwargs}
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).frames


def test_pipeline_key_frame_is_the_image_and_seeds_change_only_the_other_frames():
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    pipe = class_pipeline()
    a = run(pipe, 0, class_labels=[1], image=image, num_videos=2)
    b = run(pipe, 1, class_labels=[1], image=image, num_videos=2)
    k = key_frame_index(4)
    for video in (*a, *b):
        np.testing.assert_allclose(video[k], image / 255.0, atol=1e-6)
    others = [i for i in range(4) if i != k]
    assert np.abs(a[:, others] - b[:, others]).max() > 0.05
    free = run(pipe, 0, class_labels=[1], num_videos=2)
    assert np.abs(free[:, k] - image / 255.0).max() > 0.1  # the image is not a coincidence


@pytest.mark.parametrize("form", ["pil", "float", "tensor", "grey"])
def test_pipeline_image_forms_and_resizing(form):
    rgb = np.random.default_rng(1).integers(0, 256, (16, 12, 3), dtype=np.uint8)
    image = {"pil": Image.fromarray(rgb), "float": rgb / 255.0,
             "tensor": torch.from_numpy(rgb).permute(2, 0, 1) / 255.0,
             "grey": rgb[..., 0]}[form]
    out = run(class_pipeline(), class_labels=[2], image=image)
    assert out.shape == (1, 4, 8, 8, 3)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255, size=(8, 8),
        mode="bilinear", antialias=True)[0].permute(1, 2, 0).numpy()
    if form == "grey":
        expected = np.repeat(expected[..., :1], 3, axis=-1)
    np.testing.assert_allclose(out[0, key_frame_index(4)], expected, atol=1e-5)


def test_vae_pipeline_encodes_the_image_as_the_key_latent():
    vae = tiny_vae(scaling_factor=0.5)
    pipe = VideoFusionPipeline(residual=tiny_residual(channels=4), base=tiny_base(channels=4),
                               scheduler=DDIMScheduler(), vae=vae, sample_size=16)
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))
    latents = run(pipe, image=image, output_type="latent")
    expected = vae.encode(image[None] * 2 - 1).latent_dist.mode() * 0.5
    torch.testing.assert_close(latents[:, :, key_frame_index(4)], expected)
    assert run(pipe, image=image).shape == (1, 4, 16, 16, 3)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((8, 8, 3), dtype=np.float32) + 2.0, r"\[0, 1\]"),
        (np.zeros((8, 8, 2), dtype=np.uint8), "channels"),
        (np.zeros((2, 8, 8, 3), dtype=np.uint8), r"\(H, W\) or \(H, W, C\)"),
        (torch.zeros(2, 3, 8, 8), "batch of 2 images for 3 videos"),
        ("not an image", "PIL image"),
    ],
)
def test_pipeline_bad_images_give_one_clear_error(image, match):
    with pytest.raises(ValueError, match=match):
        run(class_pipeline(), class_labels=[1], image=image, num_videos=3)


def test_baseline_pipeline_refuses_an_image():
    pipe = VideoFusionPipeline(residual=tiny_residual(), scheduler=DDIMScheduler(), sample_size=8)
    with pytest.raises(ValueError, match="needs a base generator"):
        run(pipe, image=np.zeros((8, 8, 3), dtype=np.uint8))


# -- CLI ---------------------------------------------------------------------------------------

def test_cli_sample_image(tmp_path, capsys):
    class_pipeline().save_pretrained(tmp_path / "model")
    rgb = np.random.default_rng(3).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "key.png")
    code = main(["sample", "--model-dir", str(tmp_path / "model"), "--class-label", "4",
                 "--num-videos", "2", "--frames", "4", "--steps", "2",
                 "--image", str(tmp_path / "key.png"), "--out", str(tmp_path / "out")])
    assert code == 0
    sheet = np.asarray(Image.open(tmp_path / "out" / "contact_sheet.png"))
    k, side = key_frame_index(4), 8 * 8  # the sheet enlarges 8 px frames 8 times
    for row in (0, 1):
        top, left = row * (side + 1), k * (side + 1)
        np.testing.assert_array_equal(sheet[top:top + side:8, left:left + side:8], rgb)


@pytest.mark.parametrize("content", [None, b"this is not a png"])
def test_cli_sample_unreadable_image_is_exit_2(tmp_path, capsys, content):
    class_pipeline().save_pretrained(tmp_path / "model")
    path = tmp_path / "key.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--model-dir", str(tmp_path / "model"), "--class-label", "4",
              "--image", str(path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("videofusion: error:") and str(path) in err
    assert len(err.strip().splitlines()) == 1
