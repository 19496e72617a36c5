"""Spec §2-§3 replayed with independent arithmetic: every frame's training prediction, the loss
and its gradients, from the drawn t, b, r and the two networks called directly.

The replay does not call the library's noise or model code: eps^i, z_t^i, z'^i and epshat^i are
written out frame by frame from the spec with Python floats for sqrt(lambda^i), so a residual
generator fed z_t instead of z', a lambda taken from the wrong frame or a swapped
sqrt(lambda) / sqrt(1 - lambda) all show.
"""

import math

import pytest
import torch
from conftest import tiny_base, tiny_residual
from diffusers import DDPMScheduler

from videofusion import VideoFusionModel, diffusion_loss, make_lambdas

ALPHAS = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
FRAMES = 5
K = FRAMES // 2  # spec: key frame k = N // 2
# per-frame lambdas, all different (1 on the key frame, spec §1), so a wrong index shows
LAMBDAS = [0.2, 0.7, 1.0, 0.4, 0.0]


def model_and_clip(conditioned=False, dtype=torch.float32):
    cond = {"num_classes": 3, "cross_attention_dim": 8} if conditioned else {}
    model = VideoFusionModel(tiny_residual(**cond), tiny_base(**cond)).to(dtype)
    clip = torch.rand(3, 3, FRAMES, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return model, clip.to(dtype)


def conditions(conditioned, dtype=torch.float32):
    if not conditioned:
        return {}
    g = torch.Generator().manual_seed(8)
    return {"class_labels": torch.tensor([0, 2, 1]),
            "encoder_hidden_states": torch.randn(3, 5, 8, generator=g, dtype=dtype)}


def replay(model, clip, seed, stop_gradient=True, class_labels=None,
           encoder_hidden_states=None):
    """Spec §3 by hand. The draws follow the documented order of ``diffusion_loss``: one
    timestep per clip, then the base noise (one frame per clip), then the residual noise."""
    batch, channels, frames, height, width = clip.shape
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 1000, (batch,), generator=g)
    b = torch.randn(batch, channels, height, width, generator=g, dtype=clip.dtype)
    r = torch.randn(batch, channels, frames, height, width, generator=g, dtype=clip.dtype)
    abar = ALPHAS[t].view(-1, 1, 1, 1).to(clip.dtype)
    eps = [math.sqrt(lam) * b + math.sqrt(1 - lam) * r[:, :, i] for i, lam in enumerate(LAMBDAS)]
    z = [abar.sqrt() * clip[:, :, i] + (1 - abar).sqrt() * eps[i] for i in range(frames)]
    bhat = model.base(z[K], t, class_labels, encoder_hidden_states)  # key frame only
    bhat_sg = bhat.detach() if stop_gradient else bhat
    # z'^i = z^i - sqrt(lambda^i) sqrt(1 - abar_t) bhat, all frames in one call of R_psi
    z_res = torch.stack([z[i] - math.sqrt(lam) * (1 - abar).sqrt() * bhat_sg
                         for i, lam in enumerate(LAMBDAS)], dim=2)
    rhat = model.residual(z_res, t, frame_index=torch.arange(frames), class_labels=class_labels,
                          encoder_hidden_states=encoder_hidden_states)
    per_frame = []
    for i, lam in enumerate(LAMBDAS):
        bhat_i = bhat if i == K else bhat_sg
        epshat = math.sqrt(lam) * bhat_i + math.sqrt(1 - lam) * rhat[:, :, i]
        per_frame.append((eps[i] - epshat).pow(2).mean(dim=(1, 2, 3)))
    per_frame = torch.stack(per_frame, dim=1)  # (B, F)
    return per_frame.mean(), per_frame


@pytest.mark.parametrize(("stop_gradient", "conditioned", "dtype"), [
    (True, False, torch.float32), (False, False, torch.float32),
    (True, True, torch.float32),  # class labels and text states reach both networks
    (True, False, torch.float64),  # everything in the clip's dtype
])
def test_every_frame_of_the_training_prediction_replays_spec_3(stop_gradient, conditioned,
                                                               dtype):
    model, clip = model_and_clip(conditioned, dtype)
    lambdas = torch.tensor(LAMBDAS)
    cond = conditions(conditioned)
    out = diffusion_loss(model, clip, ALPHAS, lambdas, generator=torch.Generator().manual_seed(4),
                         stop_gradient=stop_gradient, **cond)
    assert out.per_frame.dtype == out.loss.dtype == torch.float32  # reported in float32
    out.loss.backward()
    library_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    loss, per_frame = replay(model, clip, 4, stop_gradient, **cond)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-6, "atol": 0}
    torch.testing.assert_close(out.per_frame, per_frame.detach().float(), **tol)
    torch.testing.assert_close(out.loss, loss.detach().float(), **tol)
    loss.backward()
    replay_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert library_grads.keys() == replay_grads.keys()
    gtol = {"rtol": 1e-4, "atol": 1e-7}  # the loss is reduced in float32 whatever the dtype
    for name, grad in replay_grads.items():
        torch.testing.assert_close(library_grads[name], grad, msg=name, **gtol)
    # the replay itself can tell the two inputs of R_psi apart on these networks
    assert per_frame[:, [0, 1, 3]].min() > 0


def test_the_residual_input_matters_for_the_replayed_frames():
    """Guard of the replay: z_t instead of z' changes the non-key predictions by far more than
    the tolerance above, so the replay test can fail on that bug."""
    model, clip = model_and_clip()
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, FRAMES, 8, 8, generator=g)
    bhat = torch.randn(2, 3, 8, 8, generator=g)
    shifted = z - 0.6 * bhat.unsqueeze(2)
    with torch.no_grad():
        a, b = model.residual(z, torch.tensor([10, 900])), \
            model.residual(shifted, torch.tensor([10, 900]))
    assert (a - b).abs().max() > 1e-2


def test_model_forward_matches_the_spec_outside_the_loss():
    """``VideoFusionModel.forward`` at a given z_t, t, abar: bhat on the key frame, rhat on z',
    epshat combined per frame (spec §2, §4 without guidance)."""
    model, _ = model_and_clip()
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 3, FRAMES, 8, 8, generator=g)
    t = torch.tensor([37, 611])
    abar = torch.tensor([0.93, 0.21])
    with torch.no_grad():
        out = model(z, t, abar, torch.tensor(LAMBDAS))
        bhat = model.base(z[:, :, K], t)
        sigma = (1 - abar).sqrt().view(-1, 1, 1, 1)
        z_res = torch.stack([z[:, :, i] - math.sqrt(lam) * sigma * bhat
                             for i, lam in enumerate(LAMBDAS)], dim=2)
        rhat = model.residual(z_res, t)
    torch.testing.assert_close(out.base, bhat)
    torch.testing.assert_close(out.residual, rhat, rtol=1e-5, atol=1e-6)
    for i, lam in enumerate(LAMBDAS):
        expected = math.sqrt(lam) * bhat + math.sqrt(1 - lam) * rhat[:, :, i]
        torch.testing.assert_close(out.noise[:, :, i], expected, rtol=1e-5, atol=1e-6)


def test_the_defaults_are_the_spec_stop_gradient_and_plain_average():
    """Without options: stop-gradient on (the base learns only from the key frame), epsilon
    weighting; and v weighting's default cap is 5."""
    model, clip = model_and_clip()
    lambdas = torch.tensor(LAMBDAS)
    out = diffusion_loss(model, clip, ALPHAS, lambdas, generator=torch.Generator().manual_seed(4))
    out.per_frame[:, [0, 1, 3, 4]].mean().backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.base.parameters())
    with torch.no_grad():
        loss, _ = replay(model, clip, 4)
        torch.testing.assert_close(out.loss.detach(), loss, rtol=1e-5, atol=1e-6)
        # seed 0 draws t = 44 among others: SNR + 1 = 42 there, so the cap matters
        default_cap, cap_5, cap_6 = (
            diffusion_loss(model, clip, ALPHAS, lambdas, weighting="v",
                           generator=torch.Generator().manual_seed(0), **gamma).loss
            for gamma in ({}, {"snr_gamma": 5.0}, {"snr_gamma": 6.0}))
        assert default_cap == cap_5 != cap_6


@pytest.mark.parametrize("conditioned", [False, True])
def test_the_stage_1_image_loss_replays_in_float64_with_its_conditions(conditioned):
    from videofusion import image_diffusion_loss

    model, _ = model_and_clip(conditioned, torch.float64)
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(2)).double() * 2 - 1
    cond = conditions(conditioned, torch.float64)
    with torch.no_grad():
        loss = image_diffusion_loss(model.base, images, ALPHAS,
                                    generator=torch.Generator().manual_seed(6), **cond)
        v_default = image_diffusion_loss(model.base, images, ALPHAS, weighting="v",
                                         generator=torch.Generator().manual_seed(6), **cond)
        v_5 = image_diffusion_loss(model.base, images, ALPHAS, weighting="v", snr_gamma=5.0,
                                   generator=torch.Generator().manual_seed(6), **cond)
        g = torch.Generator().manual_seed(6)
        t = torch.randint(0, 1000, (3,), generator=g)
        noise = torch.randn(images.shape, generator=g, dtype=torch.float64)
        a = ALPHAS[t].double().view(-1, 1, 1, 1)
        z = a.sqrt() * images + (1 - a).sqrt() * noise
        pred = model.base(z, t, cond.get("class_labels"), cond.get("encoder_hidden_states"))
        expected = (pred - noise).pow(2).mean()
    torch.testing.assert_close(loss, expected.float(), rtol=1e-6, atol=0)
    assert v_default == v_5  # seed 6 draws t = 130: SNR + 1 = 5.98, above the default cap


# ---- VideoFusionModel beyond the paper's default path (found by mutation survivors) --------


@pytest.mark.parametrize("variant", ["key_frame_difference", "with_key_frame"])
def test_the_alternative_residual_inputs_of_spec_2(variant):
    """key_frame_difference: z^i - sqrt(lambda^i) z^k; with_key_frame: z' plus z^k on extra
    channels."""
    in_channels = 6 if variant == "with_key_frame" else 3
    model = VideoFusionModel(tiny_residual(in_channels=in_channels), tiny_base(),
                             residual_input=variant)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 3, FRAMES, 8, 8, generator=g)
    t, abar = torch.tensor([37, 611]), torch.tensor([0.93, 0.21])
    with torch.no_grad():
        out = model(z, t, abar, torch.tensor(LAMBDAS))
        bhat = model.base(z[:, :, K], t)
        sigma = (1 - abar).sqrt().view(-1, 1, 1, 1)
        if variant == "key_frame_difference":
            z_res = torch.stack([z[:, :, i] - math.sqrt(lam) * z[:, :, K]
                                 for i, lam in enumerate(LAMBDAS)], dim=2)
        else:
            z_res = torch.stack([torch.cat([z[:, :, i] - math.sqrt(lam) * sigma * bhat,
                                            z[:, :, K]], dim=1)
                                 for i, lam in enumerate(LAMBDAS)], dim=2)
        rhat = model.residual(z_res, t)
    torch.testing.assert_close(out.residual, rhat, rtol=1e-5, atol=1e-6)


def test_the_baseline_predicts_every_frame_with_its_condition():
    residual = tiny_residual(num_classes=3)
    model = VideoFusionModel(residual)
    z = torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t, labels = torch.tensor([5, 500]), torch.tensor([2, 0])
    with torch.no_grad():
        out = model(z, t, torch.tensor([0.9, 0.3]), torch.zeros(4), class_labels=labels)
        expected = residual(z, t, class_labels=labels)
        other = residual(z, t, class_labels=torch.tensor([1, 1]))
    torch.testing.assert_close(out.noise, expected)
    torch.testing.assert_close(out.residual, expected)
    assert out.base is None and (expected - other).abs().max() > 1e-4
    assert model.lambdas(4).tolist() == [0.0] * 4 == model.lambdas(4, 0.7).tolist()
    with pytest.raises(ValueError, match=r"^the VDM baseline has no base generator: its "
                                         r"lambdas must all be 0$"):
        model(z, t, torch.tensor([0.9, 0.3]), make_lambdas(4, 0.5), class_labels=labels)
    with pytest.raises(ValueError, match=r"^lambdas has 3 values for 4 frames$"):
        model(z, t, torch.tensor([0.9, 0.3]), torch.zeros(3), class_labels=labels)


def test_model_lambdas_and_forward_defaults():
    model, clip = model_and_clip()
    assert model.lambdas(4).tolist() == [0.5, 0.5, 1.0, 0.5]
    assert model.lambdas(3, 0.25).tolist() == [0.25, 1.0, 0.25]
    z = torch.randn(2, 3, FRAMES, 8, 8, generator=torch.Generator().manual_seed(3))
    out = model(z, torch.tensor([3, 300]), torch.tensor([0.9, 0.4]), torch.tensor(LAMBDAS))
    # defaults: stop-gradient on, base not frozen: the base learns from the key frame only
    out.noise[:, :, [0, 1, 3, 4]].pow(2).mean().backward(retain_graph=True)
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.base.parameters())
    out.noise[:, :, K].pow(2).mean().backward()
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in model.base.parameters())


def test_check_resolution_takes_the_largest_down_sampling_factor():
    from types import SimpleNamespace

    from torch import nn

    class StubBase(nn.Module):  # a base UNet with four levels: factor 8
        def __init__(self):
            super().__init__()
            self.unet = nn.Module()
            self.unet.config = SimpleNamespace(block_out_channels=(4, 4, 4, 4))

    model = VideoFusionModel(tiny_residual(), StubBase())  # residual factor 2
    model.check_resolution(16, 16)
    model.check_resolution(8, 24)
    for size in ((12, 12), (16, 12), (12, 16), (16, 4)):
        with pytest.raises(ValueError, match=rf"^resolution {size[0]}x{size[1]} is not "
                                             r"divisible by 8, the model's down-sampling "
                                             r"factor$"):
            model.check_resolution(*size)
    baseline = VideoFusionModel(tiny_residual())  # factor 2 from the residual generator
    with pytest.raises(ValueError, match="divisible by 2"):
        baseline.check_resolution(5, 6)
    VideoFusionModel(nn.Identity()).check_resolution(3, 5)  # no factor at all: anything goes


def test_with_key_frame_refuses_a_residual_without_the_extra_channels():
    with pytest.raises(ValueError, match=r"^residual_input='with_key_frame' needs a residual "
                                         r"generator with twice as many input channels as "
                                         r"output channels, got 3 and 3$"):
        VideoFusionModel(tiny_residual(), tiny_base(), residual_input="with_key_frame")
