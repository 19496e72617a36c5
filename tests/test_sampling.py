"""Spec §4: the two-step sampler, checked end to end against an analytic oracle."""

from functools import partial

import pytest
import torch
from conftest import tiny_base, tiny_residual
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from sampling_run import sample
from torch import nn

from videofusion import Condition, VideoFusionModel, make_lambdas
from videofusion.noise import FreshNoise, decomposed_noise, key_frame_index
from videofusion.sampling import (
    alpha_bar_at,
    ddpm_step,
    guided_noise_prediction,
    initial_latents,
    noise_injecting_step,
    sample_decomposed,
)

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "dpm": DPMSolverMultistepScheduler,
    "dpm_sde": partial(DPMSolverMultistepScheduler, algorithm_type="sde-dpmsolver++"),
    "euler": EulerDiscreteScheduler,
    "unipc": UniPCMultistepScheduler,
}


class OracleBase(nn.Module):
    """Exact bhat when the data distribution is the single clip ``target``."""

    def __init__(self, target, abar_of):
        super().__init__()
        self.target, self.abar_of = target, abar_of

    def forward(self, key_frame, timestep, class_labels=None, encoder_hidden_states=None):
        a = self.abar_of(timestep)
        x = self.target[:, :, key_frame_index(self.target.shape[2])]
        return (key_frame - a.sqrt() * x) / (1 - a).sqrt()


class OracleResidual(nn.Module):
    """Exact rhat^i computed from the residual input z' the sampler actually feeds it."""

    def __init__(self, target, abar_of, lambdas):
        super().__init__()
        self.target, self.abar_of, self.lambdas = target, abar_of, lambdas

    def forward(self, z_res, timestep, class_labels=None, encoder_hidden_states=None):
        a = self.abar_of(timestep)
        keep = (1 - self.lambdas).view(1, 1, -1, 1, 1)
        r = (z_res - a.sqrt() * self.target) / ((1 - a).sqrt() * keep.sqrt().clamp_min(1e-12))
        return torch.where(keep > 0, r, torch.zeros_like(r))


def oracle_sample(scheduler, lambda_, steps=50, baseline=False, target=None, **kwargs):
    if target is None:
        target = torch.rand(2, 3, 6, 4, 4, generator=torch.Generator().manual_seed(5)) * 1.6 - 0.8
    lambdas = torch.zeros(6) if baseline else make_lambdas(6, lambda_)

    def abar_of(timestep):
        i = int((scheduler.timesteps == timestep.flatten()[0]).nonzero()[0])
        return alpha_bar_at(scheduler, scheduler.timesteps[i], i)

    base = None if baseline else OracleBase(target, abar_of)
    model = VideoFusionModel(OracleResidual(target, abar_of, lambdas), base)
    out = sample(model, scheduler, tuple(target.shape), lambdas,
                 num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                 **kwargs)
    return out, target


@pytest.mark.parametrize("lambda_", [0.0, 0.5, 0.9])
def test_oracle_ddim_reproduces_the_clip(lambda_):
    out, target = oracle_sample(DDIMScheduler(), lambda_)
    assert (out - target).abs().max() < 1e-3


@pytest.mark.parametrize("name", ["ddpm", "dpm", "dpm_sde", "euler", "unipc"])
def test_oracle_other_schedulers_reproduce_the_clip(name):
    out, target = oracle_sample(SCHEDULERS[name](), 0.5, steps=20)
    assert (out - target).abs().max() < 1e-3


@pytest.mark.parametrize("name", ["ddim", "ddpm", "dpm"])
def test_colour_anchoring_gives_every_frame_the_key_frames_colour(name):
    # a one-clip data distribution whose square changes colour every frame; with the oracle the
    # clean estimate is that clip at every step, anchored it is the clip with every square in
    # the key frame's colour (colour_anchoring's docstring), and the sampler ends there
    colours = torch.tensor([[1.0, -1, 1], [-1, 1, -1], [1, 1, -1], [-1, -1, 1], [1, -1, -1],
                            [-1, 1, 1]])  # magenta, green, yellow, blue (key frame 3), ...
    target = torch.full((1, 3, 6, 4, 4), -1.0)
    target[:, :, :, 1:3, 1:3] = colours.T[None, :, :, None, None]
    anchored = target.clone()
    anchored[:, :, :, 1:3, 1:3] = torch.tensor([-1.0, -1, 1])[None, :, None, None, None]
    kwargs = {"eta": 0.0} if name == "ddim" else {}
    out, _ = oracle_sample(SCHEDULERS[name](), 0.5, steps=20, target=target,
                           colour_anchoring=1.0, **kwargs)
    assert (out - anchored).abs().max() < 2e-3
    out, _ = oracle_sample(SCHEDULERS[name](), 0.5, steps=20, target=target,
                           colour_anchoring=0.5, **kwargs)
    halfway = target.clone()  # pixels move half way to blue: (0, 0, 1) from (1, 0, 1) etc.
    halfway[:, :, :, 1:3, 1:3] = (colours.T + torch.tensor([-1.0, -1, 1])[:, None]).div(2)[
        None, :, :, None, None]
    assert (out - halfway).abs().max() < 2e-3


def test_oracle_baseline_reproduces_the_clip():
    out, target = oracle_sample(DDIMScheduler(), 0.0, baseline=True)
    assert (out - target).abs().max() < 1e-3


@pytest.mark.parametrize("name", ["ddpm", "ddim", "euler"])
def test_signal_leak_starts_from_the_noised_data_mean(name):
    """z_T = sqrt(abar_T) mean + sqrt(1 - abar_T) eps in the model's input scale, with the
    same decomposed eps as the plain start; the oracle still recovers the clip from it."""
    scheduler = SCHEDULERS[name]()
    mean = torch.tensor([-0.9, 0.2, 0.5])
    starts = []
    for leak in (None, mean):
        seen = []
        out, target = oracle_sample(scheduler, 0.5, steps=20, signal_leak=leak,
                                    before_step=lambda i, z, seen=seen: seen.append(z) or z)
        assert (out - target).abs().max() < 1e-3
        starts.append(seen[0] / scheduler.init_noise_sigma)  # the model's input scale
    noise, leaked = starts
    abar = alpha_bar_at(scheduler, scheduler.timesteps[0], 0)
    expected = abar.sqrt() * mean.view(1, 3, 1, 1, 1) + (1 - abar).sqrt() * noise
    torch.testing.assert_close(leaked, expected, atol=1e-4, rtol=1e-4)
    assert abar.sqrt() > 0.004  # the leak is there to see: the default schedule's sqrt(abar_T)
    with pytest.raises(ValueError, match="one mean per channel"):
        oracle_sample(scheduler, 0.5, steps=2, signal_leak=torch.zeros(2))


def test_oracle_detects_a_wrong_residual_input():
    """The oracle test can fail: feed the residual z_t instead of z'."""
    scheduler = DDIMScheduler()
    target = torch.zeros(1, 1, 4, 2, 2) + 0.3
    lambdas = make_lambdas(4, 0.5)

    def abar_of(timestep):
        i = int((scheduler.timesteps == timestep.flatten()[0]).nonzero()[0])
        return alpha_bar_at(scheduler, scheduler.timesteps[i], i)

    class Wrong(VideoFusionModel):
        def _residual_input(self, z_t, base, alpha_bar, lambdas):
            return z_t

    model = Wrong(OracleResidual(target, abar_of, lambdas), OracleBase(target, abar_of))
    out = sample(model, scheduler, (1, 1, 4, 2, 2), lambdas, num_inference_steps=10,
                 generator=torch.Generator().manual_seed(0))
    assert (out - target).abs().max() > 1e-2  # ten times the tolerance the oracle passes


@pytest.mark.parametrize(("name", "kwargs"), [("ddpm", {}), ("ddim", {"eta": 1.0}),
                                              ("dpm_sde", {})])
def test_fresh_noise_of_stochastic_steps_is_decomposed(name, kwargs):
    scheduler = SCHEDULERS[name]()
    scheduler.set_timesteps(10)
    lambdas = make_lambdas(4, 0.5)
    zero = torch.zeros(600, 1, 4, 8, 8)
    t = scheduler.timesteps[2]
    fresh = FreshNoise(lambdas, torch.Generator().manual_seed(0))
    out = noise_injecting_step(scheduler, **kwargs)(zero, t, zero, fresh)  # = std * fresh noise
    frames = out.transpose(0, 2).reshape(4, -1).double()
    corr = torch.corrcoef(frames)
    expected = (lambdas[:, None] * lambdas[None, :]).double().sqrt()
    expected.fill_diagonal_(1.0)
    assert frames.std() > 0.01
    assert torch.allclose(corr, expected, atol=0.03)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_same_seed_same_video_with_real_networks(name):
    model = VideoFusionModel(tiny_residual(), tiny_base()).eval()

    def run(seed):
        return sample(model, SCHEDULERS[name](), (1, 3, 4, 8, 8), make_lambdas(4, 0.5),
                      num_inference_steps=3,
                      generator=torch.Generator().manual_seed(seed))

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.isfinite(a).all()


class LabelEcho(nn.Module):
    """Outputs its class label times ``scale`` everywhere, to follow guidance through."""

    def __init__(self, scale, frames=None):
        super().__init__()
        self.scale, self.frames = scale, frames

    def forward(self, x, timestep, class_labels=None, encoder_hidden_states=None):
        return torch.ones_like(x) * class_labels.view(-1, *[1] * (x.ndim - 1)) * self.scale


def test_guidance_is_applied_to_both_networks():
    model = VideoFusionModel(LabelEcho(10.0), LabelEcho(1.0))
    lambdas = make_lambdas(4, 0.5)
    cond = Condition(class_labels=torch.tensor([1]), null_class_labels=torch.tensor([0]))
    eps = guided_noise_prediction(model, torch.zeros(1, 1, 4, 2, 2), torch.tensor([5]),
                                  torch.tensor([0.5]), lambdas, cond, guidance_scale=3.0)
    # bhat = 0 + 3 (1 - 0) = 3, rhat = 0 + 3 (10 - 0) = 30
    expected = lambdas.sqrt() * 3 + (1 - lambdas).sqrt() * 30
    assert torch.allclose(eps[0, 0, :, 0, 0], expected)


@pytest.mark.parametrize(("residual_scale", "rhat"), [(None, 30.0), (3.0, 30.0), (1.0, 10.0),
                                                     (2.0, 20.0), (0.0, 0.0)])
def test_the_residual_generator_takes_its_own_guidance_scale(residual_scale, rhat):
    """bhat is guided with guidance_scale, rhat with residual_guidance_scale (None: the same)."""
    model = VideoFusionModel(LabelEcho(10.0), LabelEcho(1.0))
    lambdas = make_lambdas(4, 0.5)
    cond = Condition(class_labels=torch.tensor([1]), null_class_labels=torch.tensor([0]))
    eps = guided_noise_prediction(model, torch.zeros(1, 1, 4, 2, 2), torch.tensor([5]),
                                  torch.tensor([0.5]), lambdas, cond, guidance_scale=3.0,
                                  residual_guidance_scale=residual_scale)
    expected = lambdas.sqrt() * 3 + (1 - lambdas).sqrt() * rhat  # bhat = 0 + 3 (1 - 0) = 3
    assert torch.allclose(eps[0, 0, :, 0, 0], expected)


def test_residual_guidance_one_runs_the_residual_generator_once_per_video():
    """The speed of guiding the base alone: the residual generator sees the batch once, with
    the conditional labels and the guided bhat, while the base still runs both branches."""
    seen = {}

    class Recording(LabelEcho):
        def __init__(self, name, scale):
            super().__init__(scale)
            self.name = name

        def forward(self, x, timestep, class_labels=None, encoder_hidden_states=None):
            seen[self.name] = (x.shape[0], class_labels.tolist())
            return super().forward(x, timestep, class_labels, encoder_hidden_states)

    model = VideoFusionModel(Recording("residual", 10.0), Recording("base", 1.0))
    cond = Condition(class_labels=torch.tensor([1, 2]), null_class_labels=torch.tensor([0, 0]))
    eps = guided_noise_prediction(model, torch.zeros(2, 1, 4, 2, 2), torch.tensor([5, 5]),
                                  torch.tensor([0.5, 0.5]), make_lambdas(4, 1.0), cond,
                                  guidance_scale=3.0, residual_guidance_scale=1.0)
    assert seen == {"base": (4, [0, 0, 1, 2]), "residual": (2, [1, 2])}
    assert eps[:, 0, 0, 0, 0].tolist() == [3.0, 6.0]  # lambda 1: epshat = guided bhat


def test_the_sampler_passes_the_residual_guidance_scale_to_every_step():
    """One DDIM step from z_T = 0 with label-echo networks: epshat is the guided mix of both
    networks' constants, so the returned z_0 tells which residual scale the step used."""
    model = VideoFusionModel(LabelEcho(10.0), LabelEcho(1.0))
    lambdas = make_lambdas(4, 0.5)
    cond = Condition(class_labels=torch.tensor([1]), null_class_labels=torch.tensor([0]))

    scheduler = DDIMScheduler(clip_sample=False, set_alpha_to_one=True,
                              timestep_spacing="trailing")
    scheduler.set_timesteps(1)
    abar = scheduler.alphas_cumprod[scheduler.timesteps[0]]

    def run(residual_scale):
        return sample_decomposed(model, scheduler, torch.zeros(1, 1, 4, 2, 2),
                                 FreshNoise(lambdas, torch.Generator().manual_seed(0)),
                                 condition=cond, guidance_scale=3.0,
                                 residual_guidance_scale=residual_scale)

    for scale, rhat in ((None, 30.0), (1.0, 10.0)):
        eps = lambdas.sqrt() * 3 + (1 - lambdas).sqrt() * rhat  # bhat 3, as guided
        x0 = -(1 - abar).sqrt() * eps / abar.sqrt()  # DDIM's last step to abar = 1
        assert torch.allclose(run(scale)[0, 0, :, 0, 0], x0, rtol=1e-4), scale


def guidance_by_step(interval, num_steps=10, guidance_scale=3.0):
    """For each step of a 10-step DDPM run with label-echo networks: whether the step ran the
    residual generator on two copies of the batch (guided) and its sigma_t; and z_0."""
    seen = []

    class Recording(LabelEcho):
        def forward(self, x, timestep, class_labels=None, encoder_hidden_states=None):
            seen.append((x.shape[0], int(timestep[0])))
            return super().forward(x, timestep, class_labels, encoder_hidden_states)

    model = VideoFusionModel(Recording(10.0), LabelEcho(1.0))
    cond = Condition(class_labels=torch.tensor([1]), null_class_labels=torch.tensor([0]))
    scheduler = DDPMScheduler(clip_sample=False)
    z0 = sample(model, scheduler, (1, 1, 4, 2, 2), make_lambdas(4, 0.5),
                num_inference_steps=num_steps, generator=torch.Generator().manual_seed(0),
                condition=cond, guidance_scale=guidance_scale, guidance_interval=interval)
    abar = scheduler.alphas_cumprod
    sigma = {t: float(((1 - abar[t]) / abar[t]).sqrt()) for _, t in seen}
    return [(n == 2, sigma[t]) for n, t in seen], z0


@pytest.mark.parametrize("interval", [(0.5, 5.0), (0.0, 2.0), (3.0, float("inf"))])
def test_guidance_acts_only_at_the_noise_levels_of_its_interval(interval):
    """Limited-interval guidance (Kynkaenniemi et al., 2024): a step whose sigma_t =
    sqrt((1 - abar_t) / abar_t) lies in [low, high] is guided, both networks' unconditional
    passes run; any other step runs each network once, on the condition alone."""
    low, high = interval
    steps, _ = guidance_by_step(interval)
    assert len(steps) == 10
    assert [guided for guided, _ in steps] == [low <= sigma <= high for _, sigma in steps]
    assert 0 < sum(guided for guided, _ in steps) < 10  # the interval splits the run


def test_guidance_over_every_level_or_none_is_guidance_or_the_condition_alone():
    everywhere = guidance_by_step((0.0, float("inf")))
    nowhere = guidance_by_step((1e6, float("inf")))
    assert all(guided for guided, _ in everywhere[0])
    assert not any(guided for guided, _ in nowhere[0])
    assert torch.equal(everywhere[1], guidance_by_step(None)[1])
    assert torch.equal(nowhere[1], guidance_by_step(None, guidance_scale=1.0)[1])
    assert not torch.allclose(everywhere[1], nowhere[1])


@pytest.mark.parametrize("interval", [(-1.0, 2.0), (2.0, 1.0), (float("nan"), 1.0), (1.0,),
                                      "0.5,5"])
def test_a_guidance_interval_that_is_no_range_of_noise_levels_is_refused(interval):
    model = VideoFusionModel(LabelEcho(10.0), LabelEcho(1.0))
    with pytest.raises(ValueError, match="guidance_interval"):
        sample(model, DDPMScheduler(), (1, 1, 4, 2, 2), make_lambdas(4, 0.5),
               num_inference_steps=2, guidance_interval=interval)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("clipping", [
    {"clip_sample": True},
    # dynamic thresholding whose largest threshold is 1: a clip to [-1, 1] too
    {"clip_sample": False, "thresholding": True, "sample_max_value": 1.0},
])
def test_a_clipping_ddim_step_re_derives_epsilon_from_the_clipped_x0(eta, clipping):
    """DDIM (eq. 12 of Song et al.) from x0 clipped to [-1, 1] and the epsilon that goes with it,
    eps' = (z_t - sqrt(abar_t) x0) / sqrt(1 - abar_t): the step and its x0 agree. z_t is large
    enough that x0 leaves [-1, 1] at most pixels, so stepping along the network's own epsilon
    lands elsewhere."""
    scheduler = DDIMScheduler(**clipping)
    scheduler.set_timesteps(10)
    t, t_prev = scheduler.timesteps[3], scheduler.timesteps[4]
    a, a_prev = scheduler.alphas_cumprod[t], scheduler.alphas_cumprod[t_prev]
    gen = torch.Generator().manual_seed(0)
    z, eps = 3 * torch.randn(1, 3, 4, 4, 4, generator=gen), torch.randn(1, 3, 4, 4, 4,
                                                                        generator=gen)
    fresh = torch.randn(1, 3, 4, 4, 4, generator=gen)
    x0 = ((z - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
    assert (x0.abs() == 1).float().mean() > 0.5
    eps_clipped = (z - a.sqrt() * x0) / (1 - a).sqrt()
    sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
    expected = (a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps_clipped
                + sigma * fresh)
    out = noise_injecting_step(scheduler, eta)(eps, t, z, lambda shape, **_: fresh)
    torch.testing.assert_close(out, expected)
    unclipped = (a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps + sigma * fresh)
    assert (out - unclipped).abs().max() > 0.1


def test_a_clipping_ddim_with_eta_1_is_the_clipping_ddpm_step():
    """DDIM with eta 1 is DDPM's ancestral step (Song et al., §4.1): both from x0 clipped to
    [-1, 1], the same variance, the same injected noise. It holds only if DDIM steps along
    the clipped x0's epsilon; along the network's, the two part wherever x0 was clipped."""
    config = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
              "clip_sample": True}
    ddim, ddpm = DDIMScheduler(**config), DDPMScheduler(**config)
    for scheduler in (ddim, ddpm):
        scheduler.set_timesteps(10)
    gen = torch.Generator().manual_seed(1)
    z, eps, fresh = (s * torch.randn(1, 3, 4, 4, 4, generator=gen) for s in (3, 1, 1))
    noise = lambda shape, **_: fresh  # noqa: E731
    for t in ddpm.timesteps[2:5]:
        torch.testing.assert_close(noise_injecting_step(ddim, 1.0)(eps, t, z, noise),
                                   noise_injecting_step(ddpm)(eps, t, z, noise))


def test_a_thresholding_scheduler_without_clipped_output_still_steps():
    """DPM-Solver thresholds its x0 but has no ``use_clipped_model_output`` (its update is
    written in x0 already): the step must not be passed one."""
    scheduler = DPMSolverMultistepScheduler(thresholding=True)
    scheduler.set_timesteps(4)
    z = torch.randn(1, 3, 4, 4, 4)
    out = noise_injecting_step(scheduler)(torch.randn_like(z), scheduler.timesteps[0], z, None)
    assert out.shape == z.shape and torch.isfinite(out).all()


def test_guidance_without_a_null_condition_is_an_error():
    model = VideoFusionModel(LabelEcho(1.0), LabelEcho(1.0))
    with pytest.raises(ValueError, match="null condition"):
        guided_noise_prediction(model, torch.zeros(1, 1, 4, 2, 2), torch.tensor([5]),
                                torch.tensor([0.5]), make_lambdas(4, 0.5),
                                Condition(class_labels=torch.tensor([1])), guidance_scale=2.0)


def test_fixed_base_noise_is_shared_between_samples():
    """Spec §5: a given base noise is the base part of z_T whatever the seed, and the seed
    draws only the residual part: z_T^i - sqrt(lambda^i) b = sqrt(1 - lambda^i) r^i."""
    model = VideoFusionModel(tiny_residual(), tiny_base()).eval()
    lambdas = make_lambdas(4, [0.3, 0.8, 1.0, 0.5])
    base_noise = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    starts, videos = [], []
    for seed in (0, 1):
        seen = []
        videos.append(sample(
            model, DDIMScheduler(), (1, 3, 4, 8, 8), lambdas, num_inference_steps=2,
            base_noise=base_noise, generator=torch.Generator().manual_seed(seed),
            before_step=lambda i, z, seen=seen: seen.append(z.clone()) or z))
        starts.append(seen[0])
    for z_T in starts:
        torch.testing.assert_close(z_T[:, :, 2], base_noise)  # the key frame is all base
    residuals = [(z - lambdas.sqrt().view(1, 1, -1, 1, 1) * base_noise.unsqueeze(2))
                 / (1 - lambdas).sqrt().view(1, 1, -1, 1, 1) for z in starts]
    for r in residuals:  # what is left is a fresh N(0, 1) draw per seed
        others = r[:, :, [0, 1, 3]]
        assert abs(others.std().item() - 1) < 0.2 and abs(others.mean().item()) < 0.2
    assert (residuals[0][:, :, [0, 1, 3]] - residuals[1][:, :, [0, 1, 3]]).abs().min() > 0
    assert not torch.allclose(videos[0], videos[1])


def test_fresh_noise_keeps_the_fixed_parts_of_every_draw():
    lambdas = make_lambdas(4, 0.5)
    base, residual = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4, 4)
    fixed_base = [FreshNoise(lambdas, torch.Generator().manual_seed(s), base_noise=base)
                  for s in (0, 1)]
    fixed_residual = [FreshNoise(lambdas, torch.Generator().manual_seed(s),
                                 residual_noise=residual) for s in (0, 1)]
    key = key_frame_index(4)
    for _ in range(3):  # three steps: the streams advance in step
        a, b = (f((2, 1, 4, 4, 4)) for f in fixed_base)
        assert torch.equal(a[:, :, key], b[:, :, key])  # the key frame is all base
        assert not torch.allclose(a[:, :, 0], b[:, :, 0])  # other frames: residuals differ
        assert not torch.allclose(a[:, :, key], base)  # a new base each step, not the first
        a, b = (f((2, 1, 4, 4, 4)) for f in fixed_residual)
        # the same residual, different bases: the difference is sqrt(lambda) (b_a - b_b)
        # everywhere, the same across frames
        diff = a - b
        assert torch.allclose(diff[:, :, 0] / lambdas[0].sqrt(), diff[:, :, key], atol=1e-5)
    # same noise given to two videos of one batch: same stream
    twins = FreshNoise(lambdas, torch.Generator().manual_seed(0),
                       base_noise=base[:1].expand(2, -1, -1, -1))((2, 1, 4, 4, 4))
    assert torch.equal(twins[0, :, key], twins[1, :, key])


def test_a_fixed_base_fixes_the_content_under_a_stochastic_sampler():
    """Spec §5 with DDPM: all-base noise (lambda 1 everywhere) and one base noise give one video,
    however the sampler is seeded; before FreshNoise, DDPM's fresh noise came from the seed."""
    model = VideoFusionModel(tiny_residual(), tiny_base()).eval()
    lambdas = torch.ones(4)
    base_noise = torch.randn(1, 3, 8, 8)
    runs = [sample(model, DDPMScheduler(), (1, 3, 4, 8, 8), lambdas,
                   num_inference_steps=3, base_noise=base_noise,
                   generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    assert torch.equal(runs[0], runs[1])
    other = sample(model, DDPMScheduler(), (1, 3, 4, 8, 8), lambdas,
                   num_inference_steps=3, base_noise=torch.randn(1, 3, 8, 8),
                   generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(runs[0], other)


def test_a_video_whose_noise_is_fixed_does_not_depend_on_its_batch():
    model = VideoFusionModel(tiny_residual(), tiny_base()).eval()
    lambdas = make_lambdas(4, 0.5)
    base, residual = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 8, 8)

    def run(batch, seed):
        return sample(model, DDPMScheduler(), (len(batch), 3, 4, 8, 8), lambdas,
                      num_inference_steps=3, base_noise=base[batch],
                      residual_noise=residual[batch],
                      generator=torch.Generator().manual_seed(seed))

    together, alone = run([0, 1], 0), run([1], 5)
    assert torch.allclose(together[1:], alone, atol=1e-5)


def test_v_prediction_scheduler_is_refused():
    model = VideoFusionModel(tiny_residual(), tiny_base())
    with pytest.raises(ValueError, match="epsilon"):
        sample(model, DDIMScheduler(prediction_type="v_prediction"), (1, 3, 4, 8, 8),
               make_lambdas(4, 0.5))


class CountingFreshNoise(FreshNoise):
    """FreshNoise that records every draw a step asks for."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.draws = 0

    def __call__(self, *args, **kwargs):
        self.draws += 1
        return super().__call__(*args, **kwargs)


@pytest.mark.parametrize(("scheduler", "eta", "draws"), [
    (DDIMScheduler(), 0.0, 0),
    (DDIMScheduler(), 1.0, 3),
    (DPMSolverMultistepScheduler(), 0.0, 0),
    (DPMSolverMultistepScheduler(algorithm_type="dpmsolver", final_sigmas_type="sigma_min"),
     0.0, 0),
    (PNDMScheduler(skip_prk_steps=True), 0.0, 0),  # a step with no means to draw noise
    (DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"), 0.0, 3),
    (EulerDiscreteScheduler(), 1.0, 0),
    (DDPMScheduler(), 0.0, 2),  # the last step (t = 0) adds no noise
])
def test_noise_is_drawn_only_by_steps_that_use_it(scheduler, eta, draws):
    model = VideoFusionModel(tiny_residual(), tiny_base()).eval()
    lambdas = make_lambdas(4, 0.5)
    generator = torch.Generator().manual_seed(0)
    fresh = CountingFreshNoise(lambdas, generator)
    latents = initial_latents(scheduler, decomposed_noise((1, 3, 4, 8, 8), lambdas, generator,
                                                          return_parts=True), 3)
    state = generator.get_state()
    global_state = torch.get_rng_state()
    sample_decomposed(model, scheduler, latents, fresh, eta=eta)
    assert fresh.draws == draws
    assert torch.equal(generator.get_state(), state) == (draws == 0)
    # no step draws from torch's global generator either (DDPM's own draw is thrown away)
    assert torch.equal(torch.get_rng_state(), global_state)


def test_ddpm_step_is_diffusers_step_with_the_noise_injected():
    """ddpm_step rebuilds DDPM's step around the injected noise: given the very noise
    DDPMScheduler.step would draw itself, both give the same bits (clipping included)."""
    eps = torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    z = 2 * torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    # every step of a short schedule (750, 500, 250, 0: the step at 250 goes to abar_0, the
    # last to abar = 1), for each noise scale DDPM can have without learning it
    for variance_type in ("fixed_small", "fixed_small_log", "fixed_large"):
        scheduler = DDPMScheduler(variance_type=variance_type)
        scheduler.set_timesteps(4)
        assert scheduler.timesteps.tolist() == [750, 500, 250, 0]
        for t in scheduler.timesteps:
            own = scheduler.step(eps, t, z, generator=torch.Generator().manual_seed(3))
            noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(3))
            injected = ddpm_step(scheduler, eps, t, z, lambda shape, dtype, noise=noise: noise)
            assert torch.equal(own.prev_sample, injected), (variance_type, int(t))


def test_a_scheduler_that_draws_its_own_noise_is_refused():
    for scheduler in (EulerAncestralDiscreteScheduler(), DDPMScheduler(variance_type="learned")):
        with pytest.raises(ValueError, match="draws its own fresh noise|variance_type"):
            noise_injecting_step(scheduler)
    with pytest.raises(ValueError, match=r"^EulerAncestralDiscreteScheduler draws its own "
                                         r"fresh noise, independent for every frame.*: use DDIM, "
                                         r"DDPM, DPM-Solver or Euler$"):
        sample(VideoFusionModel(tiny_residual(), tiny_base()), EulerAncestralDiscreteScheduler(),
               (1, 3, 4, 8, 8), make_lambdas(4, 0.5), num_inference_steps=2)
