"""Ancestral progressive distillation (``videofusion.distillation``, kind ``ancestral``), written
from DDPM's posterior (Ho et al., eq. 7): one DDPM step of the student from z_t, its fresh noise
the teacher's two draws combined, lands where the teacher's two DDPM steps go."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from test_distillation import (
    GUIDANCE,
    Recorder,
    assert_noised_by_spec,
    distill_config,
    hand_guided_eps,
    tiny_settings,
)

from videofusion import training_report as report
from videofusion import training_setup as setup
from videofusion.condition import Condition
from videofusion.config import TrainConfig
from videofusion.distillation import (
    Distillation,
    SamplerStates,
    alpha_bar_at,
    ancestral_distillation_loss,
    ancestral_grid,
    ancestral_path,
    ancestral_target,
    check_teacher,
    clean_estimate,
    ddpm_posterior,
)
from videofusion.models.videofusion import NoisePrediction
from videofusion.noise import decomposed_noise, make_lambdas
from videofusion.pipeline import load_pipeline
from videofusion.sampling import ddpm_step

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 5  # the student's: 800, 600, 400, 200, 0; its teacher's 10 steps are 100 apart


def ddpm(steps: int) -> DDPMScheduler:
    """diffusers' DDPM as the shipped folder configures it: leading timesteps, fixed_small."""
    scheduler = DDPMScheduler(clip_sample=True)
    scheduler.set_timesteps(steps)
    return scheduler


ALPHAS = DDPMScheduler().alphas_cumprod


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny class-conditioned model whose folder samples with DDPM at its own guidance."""
    folder = tmp_path_factory.mktemp("ddpm_teacher") / "pipeline"
    config = TrainConfig(**tiny_settings(base_from_scratch=True)).validate()
    model = setup.build_training_model(config, 3, 16, 10, None, latent=False)
    report.training_pipeline(config, model, DDPMScheduler(), None, None, [-0.9] * 3,
                             scheduler=DDPMScheduler(clip_sample=True),
                             default_guidance_scale=GUIDANCE).save_pretrained(folder)
    assert isinstance(load_pipeline(folder).scheduler, DDPMScheduler)
    return folder


def toy_teacher(z, t, a):
    """A nonlinear epsilon whose clean estimate leaves [-1, 1] at high noise: the clip counts.
    Called with an abar, it must be that of its timestep."""
    if a is not None:
        torch.testing.assert_close(a, alpha_bar_at(ALPHAS, t).to(a))
    return torch.tanh(3 * z) * (1 + t.view(-1, 1, 1, 1, 1).float() / 1000) - 0.3 * z


def given(noise):
    """A fresh-noise source for ``ddpm_step`` that hands back ``noise``."""
    return lambda shape, dtype=torch.float32: noise


def test_the_posterior_is_diffusers_ddpm_step():
    scheduler = ddpm(STEPS)
    torch.manual_seed(0)
    z, eps = torch.randn(1, 3, 4, 8, 8), torch.randn(1, 3, 4, 8, 8)
    for t in (800, 400, 200):
        out = scheduler.step(eps, t, z, generator=torch.Generator().manual_seed(t))
        noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(t))
        a, a_next = ALPHAS[t].view(1), ALPHAS[t - 200].view(1)
        c_x, c_z, variance = ddpm_posterior(a, a_next)
        x = ((z - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
        torch.testing.assert_close(c_x * x + c_z * z + variance.sqrt() * noise, out.prev_sample)


def test_the_posteriors_compose():
    a_t, a_s, a_u = torch.tensor([0.05, 0.3]), torch.tensor([0.2, 0.6]), torch.tensor([0.5, 1.0])
    cx_ts, cz_ts, v_ts = ddpm_posterior(a_t, a_s)
    cx_su, cz_su, v_su = ddpm_posterior(a_s, a_u)
    cx_tu, cz_tu, v_tu = ddpm_posterior(a_t, a_u)
    torch.testing.assert_close(cx_tu, cx_su + cz_su * cx_ts)
    torch.testing.assert_close(cz_tu, cz_su * cz_ts)
    torch.testing.assert_close(v_tu, cz_su**2 * v_ts + v_su)


def test_the_student_grid_is_every_other_point_of_the_teachers_ddpm():
    for steps in (5, 10, 15, 25):
        grid = ancestral_grid(DDPMScheduler().config, 1000, steps)
        assert grid.tolist() == ddpm(2 * steps).timesteps[1::2].tolist()
        assert grid.tolist() == ddpm(steps).timesteps.tolist()
    assert ancestral_grid(DDPMScheduler().config, 1000, STEPS).tolist() == [800, 600, 400, 200, 0]


def test_the_grid_follows_the_folders_training_timesteps():
    assert ancestral_grid(DDPMScheduler().config, 500, STEPS).tolist() == [400, 300, 200, 100, 0]


def test_a_clean_estimate_without_a_clip_is_unclamped():
    z, eps = torch.full((1, 1, 2, 1, 1), 3.0), torch.full((1, 1, 2, 1, 1), -1.0)
    a = torch.tensor([0.25])
    unclamped = (3 + 0.75**0.5) / 0.5  # (z - sqrt(1 - abar) eps) / sqrt(abar)
    torch.testing.assert_close(clean_estimate(z, eps, a, None), torch.full_like(z, unclamped))
    torch.testing.assert_close(clean_estimate(z, eps, a, 1.0), torch.ones_like(z))


def test_the_teachers_path_ends_clean():
    path = ancestral_path(torch.tensor([800, 200, 100, 0]), 100)
    assert path.tolist() == [[800, 200, 100, 0], [700, 100, 0, -1], [600, 0, -1, -1]]


def test_one_student_step_lands_where_the_teachers_two_go():
    """Per clip: the teacher's two steps of its 10-step DDPM (the sampler's own ``ddpm_step``)
    with fresh noises n1, n2; the student's one step of the 5-step DDPM with the epsilon of
    xtilde and the noise (c_z(s -> u) std(t -> s) n1 + std(s -> u) n2) / std(t -> u)."""
    torch.manual_seed(0)
    timesteps = torch.tensor([800, 200, 0])
    shape = (3, 3, 4, 8, 8)
    z_t, n1, n2 = torch.randn(shape), torch.randn(shape), torch.randn(shape)
    path = ancestral_path(timesteps, 100)
    alpha_bars = alpha_bar_at(ALPHAS, path)
    x = ancestral_target(toy_teacher, z_t, path, alpha_bars, n1, clip=1.0)
    assert x.abs().max() <= 1
    teacher, student = ddpm(2 * STEPS), ddpm(STEPS)
    for i, t in enumerate(timesteps.tolist()):
        z = z_t[i:i + 1]
        eps = toy_teacher(z, torch.tensor([t]), None)
        first = ddpm_step(teacher, eps, t, z, given(n1[i:i + 1]))
        two = first if t == 0 else ddpm_step(
            teacher, toy_teacher(first, torch.tensor([t - 100]), None), t - 100, first,
            given(n2[i:i + 1]))
        a = ALPHAS[t]
        eps = (z - a.sqrt() * x[i:i + 1]) / (1 - a).sqrt()
        _, cz_su, v_su = ddpm_posterior(alpha_bars[1, i:i + 1], alpha_bars[2, i:i + 1])
        v_ts = ddpm_posterior(alpha_bars[0, i:i + 1], alpha_bars[1, i:i + 1])[2]
        v_tu = ddpm_posterior(alpha_bars[0, i:i + 1], alpha_bars[2, i:i + 1])[2]
        noise = (cz_su * v_ts.sqrt() * n1[i:i + 1] + v_su.sqrt() * n2[i:i + 1]) / v_tu.sqrt()
        one = ddpm_step(student, eps, t, z, given(noise))
        torch.testing.assert_close(one, two, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(x[0], ((z_t[0] - (1 - ALPHAS[800]).sqrt() * toy_teacher(
        z_t[:1], torch.tensor([800]), None)[0]) / ALPHAS[800].sqrt()).clamp(-1, 1))


def test_two_teacher_steps_that_end_clean_give_the_teachers_last_estimate():
    """t = 100, s = 0, u = x: DDPM's last step returns its clean estimate, so xtilde is where
    the teacher's two steps land (w = 1), not its first estimate."""
    torch.manual_seed(1)
    z_t, n1 = torch.randn(1, 3, 4, 8, 8), torch.randn(1, 3, 4, 8, 8)
    path = ancestral_path(torch.tensor([100]), 100)
    x = ancestral_target(toy_teacher, z_t, path, alpha_bar_at(ALPHAS, path), n1, clip=1.0)
    teacher = ddpm(2 * STEPS)
    z_s = ddpm_step(teacher, toy_teacher(z_t, torch.tensor([100]), None), 100, z_t, given(n1))
    two = ddpm_step(teacher, toy_teacher(z_s, torch.tensor([0]), None), 0, z_s, given(n1))
    torch.testing.assert_close(x, two, rtol=1e-4, atol=1e-5)


def test_the_student_regresses_on_the_epsilon_of_xtilde():
    torch.manual_seed(0)
    video = torch.rand(4, 3, 4, 8, 8) * 2 - 1
    lambdas = make_lambdas(4, 0.5)
    grid = ancestral_grid(DDPMScheduler().config, 1000, STEPS)

    def student(offset):
        def run(z, timestep, alpha_bar, lambdas):
            path = ancestral_path(timestep, 100)
            alpha_bars = alpha_bar_at(ALPHAS, path)
            # the fresh noise the loss draws after z_t's noise, from the same generator
            generator = torch.Generator().manual_seed(0)
            torch.randint(0, grid.numel(), (4,), generator=generator)
            decomposed_noise(video.shape, lambdas, generator)
            fresh = decomposed_noise(video.shape, lambdas, generator)
            x = ancestral_target(toy_teacher, z, path, alpha_bars, fresh, 1.0)
            a = alpha_bars[0].view(-1, 1, 1, 1, 1)
            eps = (z - a.sqrt() * x) / (1 - a).sqrt() + offset
            return NoisePrediction(eps, None, eps)
        return run

    def loss(offset):
        return ancestral_distillation_loss(
            student(offset), toy_teacher, video, grid, 100, ALPHAS, lambdas,
            generator=torch.Generator().manual_seed(0), clip=1.0, weighting="epsilon",
            snr_gamma=5.0).loss.item()

    assert loss(0.0) < 1e-12
    assert loss(0.01) == pytest.approx(1e-4, rel=1e-4)


def test_training_clips_are_noised_with_decomposed_noise_at_every_grid_point():
    video = torch.full((128, 3, 4, 8, 8), 0.5)
    lambdas = make_lambdas(4, 0.5)
    grid = ancestral_grid(DDPMScheduler().config, 1000, STEPS)
    student = Recorder()
    ancestral_distillation_loss(student, toy_teacher, video, grid, 100, ALPHAS, lambdas,
                                generator=torch.Generator().manual_seed(0), clip=1.0,
                                weighting="epsilon", snr_gamma=5.0)
    (z, timesteps, alpha_bar), = student.calls
    assert set(timesteps.tolist()) == set(grid.tolist())
    assert_noised_by_spec(z, timesteps, alpha_bar, video, lambdas, ALPHAS)


@pytest.mark.parametrize("snr_gamma", [0.5, 5.0])
def test_the_ancestral_loss_weighs_each_clip_at_its_own_timestep(snr_gamma):
    """Min-SNR-gamma (min(SNR_t, gamma) / SNR_t on the epsilon error) at each clip's t, not at
    the teacher's intermediate s."""
    torch.manual_seed(0)
    video = torch.rand(8, 3, 4, 8, 8) * 2 - 1
    grid = ancestral_grid(DDPMScheduler().config, 1000, STEPS)
    student = Recorder()
    loss = ancestral_distillation_loss(student, toy_teacher, video, grid, 100, ALPHAS,
                                       make_lambdas(4, 0.5),
                                       generator=torch.Generator().manual_seed(1), clip=1.0,
                                       weighting="min-snr", snr_gamma=snr_gamma)
    alpha_bar = student.calls[0][2]
    snr = alpha_bar / (1 - alpha_bar)
    weights = snr.clamp(max=snr_gamma) / snr
    expected = (weights * loss.per_frame.mean(dim=1)).mean()
    torch.testing.assert_close(loss.loss, expected)
    assert (weights < 1).any() and (weights == 1).any()


def test_the_trainers_ancestral_loss_halves_the_guided_teachers_ddpm(teacher_dir, tmp_path):
    config = distill_config(tmp_path, "ancestral", teacher_dir, distill_kind="ancestral",
                            distill_weighting="epsilon")
    student = load_pipeline(teacher_dir).model
    with torch.no_grad():
        student.residual.conv_in.weight.mul_(1.1)  # the student is not its teacher
    distillation = Distillation(config, tmp_path / "ancestral", student, ALPHAS,
                                make_lambdas(4, 0.5))
    teacher = load_pipeline(teacher_dir).model.eval()
    video = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    labels, null = torch.tensor([3, 10]), torch.tensor([10, 10])
    with torch.no_grad():
        got = distillation.loss(student, video, Condition(labels), 0,
                                torch.Generator().manual_seed(0))
        expected = ancestral_distillation_loss(
            student, lambda z, t, a: hand_guided_eps(teacher, z, t, a, labels, null, GUIDANCE),
            video, ancestral_grid(DDPMScheduler().config, 1000, 4), 1000 // 8, ALPHAS,
            make_lambdas(4, 0.5), generator=torch.Generator().manual_seed(0), clip=1.0,
            weighting="epsilon", snr_gamma=5.0, class_labels=labels)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-4, atol=0)
    assert got.loss > 1e-6
    settings = distillation.pipeline_settings(1)
    assert isinstance(settings["scheduler"], DDPMScheduler)
    assert settings["default_inference_steps"] == settings["distilled_steps"] == 4
    assert settings["default_guidance_scale"] == 1.0
    assert distillation.pipeline_settings(3)["default_inference_steps"] == 2  # round 1


def test_recorded_states_are_kept_at_the_students_timesteps():
    states = SamplerStates(torch.arange(4).view(1, 4, 1, 1, 1, 1).half(),
                           torch.tensor([300, 200, 100, 0]), torch.tensor([1]))
    kept = states.at(torch.tensor([200, 0]))
    assert kept.timesteps.tolist() == [200, 0]
    assert kept.states.flatten().tolist() == [1, 3]
    with pytest.raises(ValueError, match="no recorded state"):
        states.at(torch.tensor([50]))


def test_a_teacher_that_is_not_ddpm_is_refused(teacher_dir):
    pipe = load_pipeline(teacher_dir)
    config = TrainConfig(distill_from=str(teacher_dir), distill_kind="ancestral",
                         distill_rounds=[4, 2], frames=4, resolution=16, condition="class",
                         residual_input="with_key_frame", key_frame_correction=True)
    check_teacher(pipe, config)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="must be DDPM"):
        check_teacher(pipe, config)


@pytest.mark.parametrize("overrides, message", [
    ({"distill_rounds": [12]}, r"T // N = 2 \(T // 2N\)"),
    ({"distill_rounds": [30, 15]}, r"T // N = 2 \(T // 2N\)"),
    ({"distill_rounds": [20, 10], "distill_sampler_states": 0.5}, "ancestral with one round"),
    ({"distill_rounds": [15], "distill_temporal_weight": 1.0}, "distill-kind guidance"),
])
def test_impossible_ancestral_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(distill_from="teacher", distill_kind="ancestral", **overrides).validate()
    TrainConfig(distill_from="teacher", distill_kind="ancestral", distill_rounds=[15],
                distill_sampler_states=0.5).validate()
