"""Spec §7, key-frame correction: epshat^k = bhat + rhat^k, learnt by the residual generator
alone, while the base generator keeps exactly the image loss and gradient of spec §3."""

import json

import pytest
import torch
from conftest import tiny_base, tiny_residual
from diffusers import DDPMScheduler

from videofusion import VideoFusionModel, diffusion_loss, make_lambdas
from videofusion.condition import Condition
from videofusion.noise import key_frame_index
from videofusion.sampling import guided_noise_prediction

ALPHAS = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
FRAMES = 5
K = key_frame_index(FRAMES)


def pair():
    """The same networks with and without the correction."""
    torch.manual_seed(0)
    residual, base = tiny_residual(), tiny_base()
    return (VideoFusionModel(residual, base),
            VideoFusionModel(residual, base, key_frame_correction=True))


def clip():
    return torch.rand(2, 3, FRAMES, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_key_frame_prediction_is_base_plus_residual_and_other_frames_are_the_papers():
    plain, corrected = pair()
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 3, FRAMES, 8, 8, generator=g)
    t, a = torch.tensor([100, 800]), ALPHAS[[100, 800]]
    lambdas = make_lambdas(FRAMES, 0.5)
    with torch.no_grad():
        p = plain(z, t, a, lambdas)
        c = corrected(z, t, a, lambdas)
    torch.testing.assert_close(c.base, p.base)
    torch.testing.assert_close(c.residual, p.residual)
    torch.testing.assert_close(c.noise[:, :, K], p.base + p.residual[:, :, K])
    for i in range(FRAMES):
        if i != K:
            expected = 0.5 ** 0.5 * p.base + 0.5 ** 0.5 * p.residual[:, :, i]
            torch.testing.assert_close(c.noise[:, :, i], expected)
    torch.testing.assert_close(p.noise[:, :, K], p.base)  # the paper: the key frame is bhat
    assert c.key_frame_corrected and not p.key_frame_corrected


def losses(model):
    return diffusion_loss(model, clip(), ALPHAS, make_lambdas(FRAMES, 0.5),
                          generator=torch.Generator().manual_seed(7))


def replayed_noise():
    g = torch.Generator().manual_seed(7)
    t = torch.randint(0, 1000, (2,), generator=g)
    base = torch.randn(2, 3, 8, 8, generator=g)
    residual = torch.randn(2, 3, FRAMES, 8, 8, generator=g)
    return t, base, residual


def test_loss_is_the_papers_with_the_correction_term_added():
    plain, corrected = pair()
    p, c = losses(plain), losses(corrected)
    t, b, _ = replayed_noise()
    a = ALPHAS[t].view(-1, 1, 1, 1)
    z_key = a.sqrt() * clip()[:, :, K] + (1 - a).sqrt() * b
    with torch.no_grad():
        bhat = plain.base(z_key, t)
    others = [i for i in range(FRAMES) if i != K]
    torch.testing.assert_close(c.per_frame[:, others], p.per_frame[:, others])
    # the key frame's slot holds || b - (bhat + rhat^k) ||^2 instead of the image loss ...
    image_loss = (bhat - b).pow(2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(p.per_frame[:, K], image_loss)
    assert not torch.allclose(c.per_frame[:, K], image_loss)
    # ... and the total adds the base generator's own image loss as one more frame's term
    expected = (c.per_frame.mean(dim=1) + image_loss / FRAMES).mean()
    torch.testing.assert_close(c.loss, expected)


def gradients(model):
    model.zero_grad()
    losses(model).loss.backward()
    return ({n: q.grad.clone() for n, q in model.base.named_parameters() if q.grad is not None},
            {n: q.grad.clone() for n, q in model.residual.named_parameters()
             if q.grad is not None})


def test_base_generator_gets_exactly_the_papers_gradient():
    plain, corrected = pair()
    base_plain, residual_plain = gradients(plain)
    base_corrected, residual_corrected = gradients(corrected)
    assert base_plain.keys() == base_corrected.keys() and base_plain
    for name in base_plain:
        torch.testing.assert_close(base_corrected[name], base_plain[name])
    # while the residual generator now learns from the key frame as well
    assert any(not torch.allclose(residual_corrected[n], residual_plain[n]) for n in residual_plain)


def test_sampler_uses_the_correction_but_not_for_a_known_key_frame():
    plain, corrected = pair()
    z = torch.randn(1, 3, FRAMES, 8, 8, generator=torch.Generator().manual_seed(4))
    t, a = torch.tensor([500]), ALPHAS[[500]]
    lambdas = make_lambdas(FRAMES, 0.5)
    none = Condition()
    with torch.no_grad():
        p = guided_noise_prediction(plain, z, t, a, lambdas, none)
        c = guided_noise_prediction(corrected, z, t, a, lambdas, none)
        parts = plain(z, t, a, lambdas)
        torch.testing.assert_close(c[:, :, K], parts.base + parts.residual[:, :, K])
        torch.testing.assert_close(p[:, :, K], parts.base)
        key = torch.rand(1, 3, 8, 8) * 2 - 1
        known_plain = guided_noise_prediction(plain, z, t, a, lambdas, none, key_frame=key)
        known = guided_noise_prediction(corrected, z, t, a, lambdas, none, key_frame=key)
    torch.testing.assert_close(known, known_plain)


def test_the_vdm_baseline_has_no_key_frame_to_correct():
    with pytest.raises(ValueError, match="base generator"):
        VideoFusionModel(tiny_residual(), None, key_frame_correction=True)


def test_pipeline_folder_records_the_correction(tmp_path):
    from videofusion import VideoFusionPipeline

    residual, base = tiny_residual(), tiny_base()
    pipe = VideoFusionPipeline.from_components(residual=residual, base=base,
                                               scheduler=DDPMScheduler(),
                                               key_frame_correction=True)
    assert pipe.model.key_frame_correction
    pipe.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "model_index.json").read_text())["key_frame_correction"]
    again = VideoFusionPipeline.from_pretrained(tmp_path / "m")
    assert again.model.key_frame_correction
    old = json.loads((tmp_path / "m" / "model_index.json").read_text())
    del old["key_frame_correction"]  # a folder written before the option existed
    (tmp_path / "m" / "model_index.json").write_text(json.dumps(old))
    assert not VideoFusionPipeline.from_pretrained(tmp_path / "m").model.key_frame_correction


def test_timestep_weighting_weights_each_clips_base_term_with_its_own_timestep():
    from videofusion.objective import loss_weights

    plain, corrected = pair()
    out = diffusion_loss(corrected, clip(), ALPHAS, make_lambdas(FRAMES, 0.5),
                         generator=torch.Generator().manual_seed(7), weighting="v",
                         snr_gamma=5.0)
    t, b, _ = replayed_noise()
    a = ALPHAS[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        bhat = plain.base(a.sqrt() * clip()[:, :, K] + (1 - a).sqrt() * b, t)
    image_loss = (bhat - b).pow(2).mean(dim=(1, 2, 3))  # (B,)
    weights = loss_weights(ALPHAS[t], "v", 5.0)
    assert not torch.allclose(weights[0], weights[1])
    expected = (weights * (out.per_frame.mean(dim=1) + image_loss / FRAMES)).mean()
    torch.testing.assert_close(out.loss, expected)
