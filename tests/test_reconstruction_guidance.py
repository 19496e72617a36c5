"""Reconstruction guidance of image-to-video (docs/method.md §7), checked against its definition:
epstilde^i = epshat^i + w abar_t / sqrt(1 - abar_t) d/dz_t^i (1/2) ||x^k - xhat0^k(z_t)||^2 on
the frames other than the key frame, with xhat0^k the key-frame-correcting model's own estimate
of the given key frame, (z_t^k - sqrt(1 - abar_t) (b + rhat^k)) / sqrt(abar_t)."""


import numpy as np
import pytest
import torch
from conftest import tiny_base, tiny_residual
from diffusers import DDPMScheduler
from PIL import Image

from videofusion import VideoFusionModel, make_lambdas
from videofusion.cli import main
from videofusion.condition import Condition
from videofusion.noise import FreshNoise, key_frame_index
from videofusion.pipeline import VideoFusionPipeline
from videofusion.reconstruction_guidance import MIN_SIGMA, reconstruction_guidance
from videofusion.sampling import guided_noise_prediction, sample_decomposed

ALPHAS = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.double()
FRAMES = 5
K = key_frame_index(FRAMES)


def perturbed_residual():
    residual = tiny_residual(num_classes=3)
    with torch.no_grad():  # away from the zero-initialised layers, so every path carries signal
        for p in residual.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return residual


def corrected_model(correction=True):
    return VideoFusionModel(perturbed_residual(), tiny_base(num_classes=3),
                            key_frame_correction=correction)


def inputs():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 3, FRAMES, 8, 8, generator=g, dtype=torch.float64)
    key = torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1  # the given image
    t = torch.tensor([300, 700])
    a = ALPHAS[t]
    av = a.view(-1, 1, 1, 1)
    b = (z[:, :, K] - av.sqrt() * key) / (1 - av).sqrt()  # the base noise the image implies
    return z, key, t, a, b


def test_it_is_the_gradient_of_the_key_frames_reconstruction_error():
    model = corrected_model().double()
    z, key, t, a, b = inputs()
    lambdas = make_lambdas(FRAMES, 0.5).double()
    labels = torch.tensor([0, 2])

    def miss(z_t):  # (1/2) ||x^k - xhat0^k||^2 per clip, written from the definition
        with torch.no_grad():
            rhat = model.predict_residual(z_t, b, t, a, lambdas, class_labels=labels)
        av = a.view(-1, 1, 1, 1)
        xhat0 = (z_t[:, :, K] - (1 - av).sqrt() * (b + rhat[:, :, K])) / av.sqrt()
        return 0.5 * (key - xhat0).pow(2).sum(dim=(1, 2, 3))

    w = 3.0
    rhat, change = reconstruction_guidance(model, z, b, t, a, lambdas,
                                           {"class_labels": labels}, w)
    with torch.no_grad():  # its pass is the plain conditional one
        torch.testing.assert_close(rhat, model.predict_residual(z, b, t, a, lambdas,
                                                                class_labels=labels))
    assert change.shape == z.shape
    assert torch.all(change[:, :, K] == 0)  # the given key frame is not moved
    assert change.abs().max() > 1e-6
    g = torch.Generator().manual_seed(4)
    for clip in range(2):
        for _ in range(3):
            d = torch.zeros_like(z)
            d[clip] = torch.randn(z[clip].shape, generator=g, dtype=torch.float64)
            d[:, :, K] = 0
            h = 1e-4
            slope = (miss(z + h * d)[clip] - miss(z - h * d)[clip]) / (2 * h)
            expected = w * a[clip] / (1 - a[clip]).sqrt() * slope
            torch.testing.assert_close((change * d).sum(), expected, rtol=1e-5, atol=1e-9)


def test_it_stops_below_the_minimum_noise_level():
    """No change where sigma_t = sqrt((1 - abar_t) / abar_t) < MIN_SIGMA: no later step would
    denoise it (grain beside the key frame)."""
    model = corrected_model().double()
    z, key, _, _, _ = inputs()
    lambdas = make_lambdas(FRAMES, 0.5).double()
    sigma = torch.tensor([MIN_SIGMA * 0.98, MIN_SIGMA * 1.02], dtype=torch.float64)
    a = 1 / (1 + sigma**2)  # the clips just below and just above the threshold
    t = torch.tensor([80, 80])
    av = a.view(-1, 1, 1, 1)
    b = (z[:, :, K] - av.sqrt() * key) / (1 - av).sqrt()
    _, change = reconstruction_guidance(model, z, b, t, a, lambdas,
                                        {"class_labels": torch.tensor([0, 2])}, 3.0)
    assert torch.all(change[0] == 0)
    assert change[1].abs().amax() > 1e-6
    a = a[[0, 0]]  # both clips below: the plain conditional pass and no change
    b = (z[:, :, K] - a.view(-1, 1, 1, 1).sqrt() * key) / (1 - a.view(-1, 1, 1, 1)).sqrt()
    labels = torch.tensor([0, 2])
    rhat, change = reconstruction_guidance(model, z, b, t, a, lambdas, {"class_labels": labels},
                                           3.0)
    assert torch.all(change == 0) and not rhat.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(rhat, model.predict_residual(z, b, t, a, lambdas,
                                                                class_labels=labels))


def test_the_sampler_adds_it_to_the_non_key_frames_and_keeps_the_image():
    model = corrected_model()
    z, key, t, a, _ = (x.float() if x.is_floating_point() else x for x in inputs())
    lambdas = make_lambdas(FRAMES, 0.5)
    condition = Condition(class_labels=torch.tensor([0, 2]),
                          null_class_labels=torch.tensor([3, 3]))
    with torch.no_grad():
        plain = guided_noise_prediction(model, z, t, a, lambdas, condition, guidance_scale=2.0,
                                        key_frame=key)  # off unless asked for
        guided = guided_noise_prediction(model, z, t, a, lambdas, condition, guidance_scale=2.0,
                                         key_frame=key, reconstruction_guidance_scale=5.0)
        av = a.view(-1, 1, 1, 1)
        b = (z[:, :, K] - av.sqrt() * key) / (1 - av).sqrt()
        _, change = reconstruction_guidance(model, z, b, t, a, lambdas, condition.plain(), 5.0)
    torch.testing.assert_close(guided - plain, change, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(guided[:, :, K], plain[:, :, K], rtol=0, atol=0)
    with torch.no_grad():  # the residual generator unguided: its conditional pass alone
        plain, guided = (guided_noise_prediction(
            model, z, t, a, lambdas, condition, guidance_scale=2.0, residual_guidance_scale=1.0,
            key_frame=key, reconstruction_guidance_scale=w) for w in (0.0, 5.0))
    torch.testing.assert_close(guided - plain, change, rtol=1e-4, atol=1e-5)

    scheduler = DDPMScheduler()
    scheduler.set_timesteps(4)
    out = {}
    for w in (0.0, 5.0):
        g = torch.Generator().manual_seed(0)
        out[w] = sample_decomposed(model, scheduler, z.clone(), FreshNoise(lambdas, g),
                                   condition=condition, key_frame=key,
                                   reconstruction_guidance_scale=w)
    torch.testing.assert_close(out[5.0][:, :, K], key.float())
    assert (out[5.0] - out[0.0]).abs().max() > 1e-3


@pytest.mark.parametrize("case, message", [
    ("no key frame", r"^reconstruction guidance needs a given key frame \(image-to-video\)$"),
    ("no correction", r"^reconstruction guidance reads the residual generator's key-frame "
                      r"correction \(spec §7\): this model has none$"),
    ("negative", "finite number >= 0"), ("not a number", "finite number >= 0, got True")])
def test_impossible_requests_are_refused(case, message):
    model = corrected_model(correction=case != "no correction")
    z, key, *_ = inputs()
    scheduler = DDPMScheduler()
    scheduler.set_timesteps(2)
    scale = {"negative": -1.0, "not a number": True}.get(case, 2.0)
    with pytest.raises(ValueError, match=message):
        sample_decomposed(model, scheduler, z.float(), FreshNoise(make_lambdas(FRAMES, 0.5)),
                          key_frame=None if case == "no key frame" else key.float(),
                          reconstruction_guidance_scale=scale)


def pipeline(default=None):
    return VideoFusionPipeline.from_components(
        residual=perturbed_residual(), base=tiny_base(num_classes=3), scheduler=DDPMScheduler(),
        sample_size=8,
        key_frame_correction=True, default_reconstruction_guidance_scale=default)


def test_the_folder_records_its_default_and_image_to_video_uses_it(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert pipeline().plan(class_labels=[1], image=image).reconstruction_guidance_scale == 0.0
    pipe = pipeline(default=7.0)
    pipe.save_pretrained(tmp_path / "m")
    again = VideoFusionPipeline.from_pretrained(tmp_path / "m")
    assert again.default_reconstruction_guidance == 7.0
    assert again.plan(class_labels=[1], image=image).reconstruction_guidance_scale == 7.0
    assert again.plan(class_labels=[1]).reconstruction_guidance_scale == 0.0  # no image
    assert again.plan(class_labels=[1], image=image,
                      reconstruction_guidance_scale=0).reconstruction_guidance_scale == 0.0
    with pytest.raises(ValueError, match="needs a given key frame"):
        again.plan(class_labels=[1], reconstruction_guidance_scale=2.0)
    with pytest.raises(ValueError, match="finite number"):
        again.plan(class_labels=[1], image=image, reconstruction_guidance_scale=float("nan"))


def test_the_folders_default_holds_for_its_own_scheduler_only(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    pipe = pipeline(default=7.0)
    for name in ("ddim", "unipc", "dpm_sde"):
        pipe.use_scheduler(name)
        assert pipe.default_reconstruction_guidance == 0.0, name
        assert pipe.plan(class_labels=[1], image=image).reconstruction_guidance_scale == 0.0
    pipe.use_scheduler("ddpm")
    assert pipe.plan(class_labels=[1], image=image).reconstruction_guidance_scale == 7.0


def test_cli_refuses_it_without_an_image(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--reconstruction-guidance", "5", "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "needs --image" in capsys.readouterr().err


def test_cli_guides_under_a_clipping_ddim(tmp_path):
    """DDIM with clip_sample steps along the epsilon of its clipped x0
    (``sampling.noise_injecting_step``), under which the guidance no longer diverges
    (docs/results/coherence/README.md, "Other samplers")."""
    key = tmp_path / "key.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(key)
    assert main(["sample", "--image", str(key), "--class-label", "5", "--scheduler", "ddim",
                 "--steps", "2", "--reconstruction-guidance", "5",
                 "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "video_000.mp4").stat().st_size > 0
