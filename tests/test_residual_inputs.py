"""Spec §2's residual input and its key-frame variants, checked against the formulas."""

import torch
from conftest import tiny_base, tiny_residual

from videofusion import VideoFusionModel, make_lambdas
from videofusion.noise import key_frame_index


class Recorder(torch.nn.Module):
    """A residual generator that records what it is given and predicts zeros."""

    def __init__(self, channels: int):
        super().__init__()
        self.seen = None
        self.config = type("C", (), {"in_channels": 2 * channels, "out_channels": channels})()

    def forward(self, z, timestep, class_labels=None, encoder_hidden_states=None):
        self.seen = z.clone()
        return torch.zeros_like(z[:, : z.shape[1] // 2])


def test_key_frame_estimate_is_the_clean_key_frame_the_base_implies():
    g = torch.Generator().manual_seed(0)
    frames, k = 5, key_frame_index(5)
    x = torch.rand(2, 3, frames, 8, 8, generator=g) * 1.6 - 0.8  # inside [-1, 1]
    b = torch.randn(2, 3, 8, 8, generator=g)
    alpha_bar = torch.tensor([0.3, 0.9])
    a = alpha_bar.view(-1, 1, 1, 1)
    z = torch.randn(2, 3, frames, 8, 8, generator=g)
    z[:, :, k] = a.sqrt() * x[:, :, k] + (1 - a).sqrt() * b  # the key frame is all base
    recorder = Recorder(3)
    model = VideoFusionModel(recorder, tiny_base(), residual_input="key_frame_estimate")
    lambdas = make_lambdas(frames, 0.5)
    model.predict_residual(z, b, torch.tensor([10, 20]), alpha_bar, lambdas)
    seen = recorder.seen  # (B, 2C, F, H, W)
    # first C channels: z' = z - sqrt(lambda) sqrt(1 - abar) bhat (spec §2)
    expected = z - (0.5 ** 0.5) * (1 - a).sqrt().unsqueeze(2) * b.unsqueeze(2)
    expected[:, :, k] = z[:, :, k] - (1 - a).sqrt() * b
    torch.testing.assert_close(seen[:, :3], expected)
    # last C channels: the key frame itself when bhat is the true base noise, on every frame
    for i in range(frames):
        torch.testing.assert_close(seen[:, 3:, i], x[:, :, k], atol=1e-5, rtol=0)


def test_key_frame_estimate_stays_in_the_data_range_at_high_noise():
    recorder = Recorder(3)
    model = VideoFusionModel(recorder, tiny_base(), residual_input="key_frame_estimate")
    z = torch.randn(1, 3, 4, 8, 8) * 3
    model.predict_residual(z, -z[:, :, 2], torch.tensor([999]), torch.tensor([0.005]),
                           make_lambdas(4, 0.5))
    assert recorder.seen[:, 3:].abs().max() <= 1.0
    assert recorder.seen[:, 3:].abs().max() == 1.0  # clamped, not vanished


def test_key_frame_estimate_trains_and_needs_twice_the_channels():
    model = VideoFusionModel(tiny_residual(in_channels=6), tiny_base(),
                             residual_input="key_frame_estimate")
    from diffusers import DDPMScheduler

    from videofusion import diffusion_loss
    alphas = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    out = diffusion_loss(model, torch.zeros(1, 3, 4, 8, 8), alphas, make_lambdas(4, 0.5))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert model.residual.conv_in.weight.grad[:, 3:].abs().sum() > 0


# ---- teacher-forced base noise (beyond the paper) ----------------------------------------------

def forced_training_inputs(forcing: float, clips: int = 4, seed: int = 0):
    """What the residual generator sees in one training step of a ``key_frame_estimate`` model
    at ``base_teacher_forcing=forcing``, with the clips, their alpha_bar and lambdas."""
    from diffusers import DDPMScheduler

    from videofusion import diffusion_loss
    alphas = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    frames = 5
    x = torch.rand(clips, 3, frames, 16, 16, generator=torch.Generator().manual_seed(9)) - 0.5
    seen_t = []

    class TimedRecorder(Recorder):
        def forward(self, z, timestep, class_labels=None, encoder_hidden_states=None):
            seen_t.append(timestep.clone())
            return super().forward(z, timestep)

    recorder = TimedRecorder(3)
    model = VideoFusionModel(recorder, tiny_base(), residual_input="key_frame_estimate")
    lambdas = make_lambdas(frames, 0.5)
    diffusion_loss(model, x, alphas, lambdas, generator=torch.Generator().manual_seed(seed),
                   base_teacher_forcing=forcing)
    return recorder.seen, x, alphas[seen_t[0]].view(-1, 1, 1, 1), lambdas


def test_a_teacher_forced_clip_shows_the_residual_generator_its_exact_key_frame():
    seen, x, a, lambdas = forced_training_inputs(1.0)
    k = key_frame_index(x.shape[2])
    for i in range(x.shape[2]):  # the key-frame channels hold the clean key frame itself
        torch.testing.assert_close(seen[:, 3:, i], x[:, :, k], atol=1e-4, rtol=0)
    # the true b removed from the key frame leaves exactly its signal: z'^k = sqrt(abar) x^k
    torch.testing.assert_close(seen[:, :3, k], a.sqrt() * x[:, :, k], atol=1e-5, rtol=0)
    # and from the others all of the shared part: z'^i - sqrt(abar) x^i is the residual noise
    # alone, variance (1 - lambda^i)(1 - abar), with nothing of b left in it
    others = [i for i in range(x.shape[2]) if i != k]
    rest = (seen[:, :3, others] - a.unsqueeze(2).sqrt() * x[:, :, others])
    rest = rest / ((1 - lambdas[others]).view(1, 1, -1, 1, 1) * (1 - a.unsqueeze(2))).sqrt()
    assert abs(rest.var().item() - 1) < 0.1
    key_noise_direction = rest.mean(dim=2)  # b would survive averaging over frames, r would not
    assert key_noise_direction.var().item() < 0.35  # 1 / 4 frames = 0.25; with b left: > 0.5


def test_without_teacher_forcing_the_key_frame_is_the_base_generators_estimate():
    seen, x, _, _ = forced_training_inputs(0.0)
    k = key_frame_index(x.shape[2])
    assert (seen[:, 3:, 0] - x[:, :, k]).abs().amax(dim=(1, 2, 3)).min() > 0.05


def test_teacher_forcing_picks_each_clip_with_its_probability():
    seen, x, _, _ = forced_training_inputs(0.5, clips=64)
    k = key_frame_index(x.shape[2])
    exact = (seen[:, 3:, 0] - x[:, :, k]).abs().amax(dim=(1, 2, 3)) < 1e-4  # (B,)
    assert 20 <= int(exact.sum()) <= 44  # binomial(64, 0.5): mean 32, sd 4


def test_a_teacher_forced_clip_combines_the_true_base_and_keeps_the_base_generators_loss():
    frames, k = 5, key_frame_index(5)
    model = VideoFusionModel(Recorder(3), tiny_base(), residual_input="key_frame_estimate",
                             key_frame_correction=True)
    z = torch.randn(2, 3, frames, 8, 8, generator=torch.Generator().manual_seed(3))
    b = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    lambdas = make_lambdas(frames, 0.5)
    t, a = torch.tensor([500, 500]), torch.tensor([0.3, 0.3])
    out = model(z, t, a, lambdas, base_noise=b, teacher_forced=torch.tensor([True, False]))
    bhat = model.predict_base(z, t)
    # rhat = 0: epshat^i = sqrt(lambda^i) b on the forced clip, sqrt(lambda^i) bhat on the other
    for i in range(frames):
        s = lambdas[i].sqrt()
        torch.testing.assert_close(out.noise[0, :, i], s * b[0])
        torch.testing.assert_close(out.noise[1, :, i], s * bhat[1])
    assert lambdas[k] == 1
    torch.testing.assert_close(out.base, bhat)  # the base generator still learns from its own


def test_teacher_forcing_needs_both_the_mask_and_the_base_noise():
    import pytest
    model = VideoFusionModel(Recorder(3), tiny_base(), residual_input="key_frame_estimate")
    z = torch.zeros(1, 3, 4, 8, 8)
    with pytest.raises(ValueError, match="^teacher_forced and base_noise go together$"):
        model(z, torch.tensor([5]), torch.tensor([0.5]), make_lambdas(4, 0.5),
              teacher_forced=torch.tensor([True]))


def test_teacher_forcing_draws_its_clips_from_the_steps_generator():
    # a resumed run replays its steps bitwise only if the forced clips come from that generator
    first, x, _, _ = forced_training_inputs(0.5, clips=16, seed=3)
    again, _, _, _ = forced_training_inputs(0.5, clips=16, seed=3)
    other, _, _, _ = forced_training_inputs(0.5, clips=16, seed=4)
    k = key_frame_index(x.shape[2])

    def forced(seen):
        return (seen[:, 3:, 0] - x[:, :, k]).abs().amax(dim=(1, 2, 3)) < 1e-4

    assert torch.equal(forced(first), forced(again))
    assert torch.equal(first, again)
    assert not torch.equal(forced(first), forced(other))
