"""Spec §3: the loss, and the stop-gradient that keeps the base generator an image model."""

import pytest
import torch
from conftest import tiny_base, tiny_residual
from diffusers import DDPMScheduler

from videofusion import VideoFusionModel, diffusion_loss, make_lambdas
from videofusion.noise import key_frame_index

ALPHAS = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod


def model_and_clip(**kwargs):
    model = VideoFusionModel(tiny_residual(), tiny_base(), **kwargs)
    clip = torch.rand(2, 3, 5, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return model, clip


def test_key_frame_loss_is_the_image_diffusion_loss_of_the_base():
    model, clip = model_and_clip()
    lambdas = make_lambdas(5, 0.5)
    out = diffusion_loss(model, clip, ALPHAS, lambdas, generator=torch.Generator().manual_seed(7))
    # replay the same draws: timesteps first, then base and residual noise
    g = torch.Generator().manual_seed(7)
    t = torch.randint(0, 1000, (2,), generator=g)
    base_noise = torch.randn(2, 3, 8, 8, generator=g)
    a = ALPHAS[t].view(-1, 1, 1, 1)
    key = clip[:, :, key_frame_index(5)]
    z_key = a.sqrt() * key + (1 - a).sqrt() * base_noise
    with torch.no_grad():
        image_loss = (model.base(z_key, t) - base_noise).pow(2).mean(dim=(1, 2, 3))
    assert torch.allclose(out.per_frame[:, key_frame_index(5)], image_loss, atol=1e-6)


def base_grad_from_non_key_frames(stop_gradient: bool) -> float:
    model, clip = model_and_clip()
    lambdas = make_lambdas(5, 0.5)
    out = diffusion_loss(model, clip, ALPHAS, lambdas, generator=torch.Generator().manual_seed(3),
                         stop_gradient=stop_gradient)
    others = [i for i in range(5) if i != key_frame_index(5)]
    out.per_frame[:, others].mean().backward()
    residual_grad = sum(p.grad.abs().sum() for p in model.residual.parameters()
                        if p.grad is not None)
    assert residual_grad > 0
    return sum(p.grad.abs().sum().item() for p in model.base.parameters() if p.grad is not None)


def test_stop_gradient_blocks_base_gradient_from_other_frames():
    assert base_grad_from_non_key_frames(stop_gradient=True) == 0.0
    assert base_grad_from_non_key_frames(stop_gradient=False) > 0.0


def test_key_frame_gives_base_gradient_with_stop_gradient():
    model, clip = model_and_clip()
    out = diffusion_loss(model, clip, ALPHAS, make_lambdas(5, 0.5),
                         generator=torch.Generator().manual_seed(3))
    out.per_frame[:, key_frame_index(5)].mean().backward()
    assert sum(p.grad.abs().sum() for p in model.base.parameters() if p.grad is not None) > 0


def test_freeze_base_gives_no_base_gradient_at_all():
    model, clip = model_and_clip()
    out = diffusion_loss(model, clip, ALPHAS, make_lambdas(5, 0.5), freeze_base=True,
                         generator=torch.Generator().manual_seed(3))
    out.loss.backward()
    assert all(p.grad is None for p in model.base.parameters())
    assert any(p.grad is not None for p in model.residual.parameters())


@pytest.mark.parametrize("variant", ["with_key_frame", "key_frame_difference"])
def test_residual_input_variants_train(variant):
    in_channels = 6 if variant == "with_key_frame" else 3
    model = VideoFusionModel(tiny_residual(in_channels=in_channels), tiny_base(),
                             residual_input=variant)
    clip = torch.zeros(1, 3, 4, 8, 8)
    out = diffusion_loss(model, clip, ALPHAS, make_lambdas(4, 0.5))
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_residual_input_variant_checks_channels():
    with pytest.raises(ValueError, match="twice as many"):
        VideoFusionModel(tiny_residual(), tiny_base(), residual_input="with_key_frame")
    with pytest.raises(ValueError, match="residual_input must be one of"):
        VideoFusionModel(tiny_residual(), tiny_base(), residual_input="nope")


def test_baseline_is_the_standard_video_diffusion_loss():
    model = VideoFusionModel(tiny_residual())
    clip = torch.zeros(2, 3, 4, 8, 8)
    lambdas = model.lambdas(4, 0.5)
    assert (lambdas == 0).all()
    out = diffusion_loss(model, clip, ALPHAS, lambdas, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 1000, (2,), generator=g)
    torch.randn(2, 3, 8, 8, generator=g)  # the (unused) base draw
    noise = torch.randn(2, 3, 4, 8, 8, generator=g)
    a = ALPHAS[t].view(-1, 1, 1, 1, 1)
    with torch.no_grad():
        expected = (model.residual(a.sqrt() * clip + (1 - a).sqrt() * noise, t) - noise).pow(2)
    assert torch.allclose(out.loss, expected.mean(), atol=1e-6)
    with pytest.raises(ValueError, match="lambdas must all be 0"):
        diffusion_loss(model, clip, ALPHAS, make_lambdas(4, 0.5))


def test_image_loss_weightings_replayed():
    """epsilon is the plain loss; min-snr and v weigh each image's epsilon error by
    min(SNR, gamma) / SNR and min(SNR + 1, gamma) / SNR (replayed draws)."""
    from videofusion import image_diffusion_loss

    base = model_and_clip()[0].base
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1

    def loss(**kw):
        with torch.no_grad():
            return image_diffusion_loss(base, images, ALPHAS,
                                        generator=torch.Generator().manual_seed(0), **kw)

    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 1000, (4,), generator=g)  # two timesteps with SNR > 1, two below
    noise = torch.randn(images.shape, generator=g)
    a = ALPHAS[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        per_image = (base(a.sqrt() * images + (1 - a).sqrt() * noise, t) - noise).pow(2)
    per_image = per_image.mean(dim=(1, 2, 3))
    snr = ALPHAS[t] / (1 - ALPHAS[t])
    assert torch.allclose(loss(), per_image.mean(), atol=1e-6)
    min_snr = snr.clamp(max=1.0) / snr
    assert torch.allclose(loss(weighting="min-snr", snr_gamma=1.0), (min_snr * per_image).mean(),
                          atol=1e-6)
    v = (snr + 1).clamp(max=5.0) / snr
    assert torch.allclose(loss(weighting="v", snr_gamma=5.0), (v * per_image).mean(), rtol=1e-5)
    # v weighs the noisiest images far above 1 (x0 error weight ~1), min-snr never above 1
    assert v.max() > 100 and min_snr.max() == 1.0 and min_snr.min() < 1
    # without a cap, v is the v-prediction loss: epsilon error / alpha_bar
    v_loss = loss(weighting="v", snr_gamma=float("inf"))
    assert torch.allclose(v_loss, (per_image / ALPHAS[t]).mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="weighting must be one of"):
        loss(weighting="x0")


def test_video_loss_weighting_scales_each_clip_by_its_timestep():
    model, clip = model_and_clip()
    lambdas = make_lambdas(5, 0.5)

    def run(**kw):
        with torch.no_grad():
            return diffusion_loss(model, clip, ALPHAS, lambdas,
                                  generator=torch.Generator().manual_seed(7), **kw)

    plain, weighted = run(), run(weighting="v", snr_gamma=5.0)
    assert torch.equal(plain.per_frame, weighted.per_frame)
    t = torch.randint(0, 1000, (2,), generator=torch.Generator().manual_seed(7))
    snr = ALPHAS[t] / (1 - ALPHAS[t])
    weights = (snr + 1).clamp(max=5.0) / snr
    assert torch.allclose(weighted.loss, (weights[:, None] * plain.per_frame).mean(), rtol=1e-5)
    assert torch.allclose(plain.loss, plain.per_frame.mean())


def test_truncated_snr_weights_are_max_snr_1_over_snr():
    """Salimans & Ho's truncated SNR on the epsilon loss: 1/SNR below SNR 1 (the x0 error),
    1 above it (the epsilon error)."""
    from videofusion.objective import loss_weights

    alpha_bar = torch.tensor([0.1, 0.5, 0.9])  # SNR 1/9, 1, 9
    weights = loss_weights(alpha_bar, "truncated-snr", snr_gamma=5.0)
    assert torch.allclose(weights, torch.tensor([9.0, 1.0, 1.0]))


def test_temporal_term_prices_only_the_error_that_changes_from_frame_to_frame():
    """``temporal_weight`` adds w * mean((e_{f+1} - e_f)^2) per clip, e the prediction's error:
    an error shared by every frame adds nothing, one that flips sign each frame adds w * 4 e^2."""
    from videofusion.models.videofusion import NoisePrediction
    from videofusion.objective import noise_regression

    target = torch.zeros(2, 3, 5, 4, 4)
    shared = torch.full_like(target, 0.5)  # the same error in every frame
    flips = 0.5 * torch.tensor([1.0, -1, 1, -1, 1]).view(1, 1, 5, 1, 1).expand_as(target)
    alpha_bar = torch.tensor([0.3, 0.8])

    def loss(noise, weight):
        prediction = NoisePrediction(noise, None, noise)
        return noise_regression(prediction, target, alpha_bar, "epsilon", 5.0,
                                temporal_weight=weight)

    assert torch.allclose(loss(shared, 2.0).loss, torch.tensor(0.25))
    assert torch.allclose(loss(flips, 0.0).loss, torch.tensor(0.25))
    assert torch.allclose(loss(flips, 2.0).loss, torch.tensor(0.25 + 2.0 * 4 * 0.25))
    assert torch.equal(loss(flips, 2.0).per_frame, loss(flips, 0.0).per_frame)
    # one clip's error changes, the other's is shared: each clip pays for its own changes
    mixed = torch.cat([flips[:1], shared[1:]])
    assert torch.allclose(loss(mixed, 1.0).loss, torch.tensor(0.25 + 1.0 * 4 * 0.25 / 2))
    # ... under its own timestep's weight: Min-SNR's min(SNR, 5) / SNR is 5/9 at abar 0.9
    # (SNR 9) and 1 at abar 0.3 (SNR 3/7)
    weighted = noise_regression(NoisePrediction(mixed, None, mixed), target,
                                torch.tensor([0.9, 0.3]), "min-snr", 5.0, temporal_weight=1.0)
    expected = (5 / 9 * (0.25 + 4 * 0.25) + 1.0 * 0.25) / 2
    assert torch.allclose(weighted.loss, torch.tensor(expected))
