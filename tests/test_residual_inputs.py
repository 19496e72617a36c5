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
