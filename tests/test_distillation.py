"""Progressive and guidance distillation (``videofusion.distillation``), written from
Salimans & Ho (2022), Algorithm 2, and Meng et al. (2023): the two-step target, nested grids,
resume inside a round and across a round boundary, and the distilled folder's sampling."""

import dataclasses
import json
import re
from functools import partial

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from safetensors import safe_open
from test_resume_equivalence import assert_same_tensors, folder_weights, run

from videofusion import training_report as report
from videofusion import training_setup as setup
from videofusion.cli import main
from videofusion.condition import Condition
from videofusion.config import TrainConfig
from videofusion.distillation import (
    DDIM_GRID,
    Distillation,
    SamplerStates,
    alpha_bar_at,
    check_teacher,
    ddim_step,
    distillation_loss,
    distillation_target,
    frozen,
    guidance_distillation_loss,
    record_sampler_states,
    step_grid,
    teacher_two_steps,
)
from videofusion.models.videofusion import NoisePrediction
from videofusion.noise import make_lambdas
from videofusion.objective import noised_clips
from videofusion.pipeline import load_pipeline
from videofusion.sampling import guided_noise_prediction, noise_injecting_step

pytestmark = pytest.mark.usefixtures("one_thread")

# scaled_linear (the shipped model's): abar from 0.9991 down to 0.0047
ALPHAS = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                       beta_end=0.012).alphas_cumprod.double()
GUIDANCE = 3.0
ROUNDS, PER_ROUND = [4, 2], 2
STOPS = [1, 2, 3]  # inside round 0, exactly at the boundary, inside round 1


def tiny_settings(**overrides) -> dict:
    settings = dict(
        frames=4, resolution=16, batch_size=2, base_channels=[8, 16], residual_channels=[8, 16],
        condition="class", residual_input="with_key_frame", key_frame_correction=True,
        lr_scheduler="linear", lr_warmup_steps=0, learning_rate=1e-3, ema_decay=0.9,
        checkpoint_every=100, sample_every=100, sample_num=1, log_every=1,
        data_options={"length": 16})
    return {**settings, **overrides}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny class-conditioned model with the shipped model's options, saved as a folder whose
    own guidance is ``GUIDANCE``: random weights, so its two branches differ."""
    folder = tmp_path_factory.mktemp("teacher") / "pipeline"
    config = TrainConfig(**tiny_settings(base_from_scratch=True)).validate()
    model = setup.build_training_model(config, 3, 16, 10, None, latent=False)
    report.training_pipeline(config, model, DDPMScheduler(), None, None, [-0.9] * 3,
                             default_guidance_scale=GUIDANCE).save_pretrained(folder)
    return folder


def oracle(x0: torch.Tensor, seen: list | None = None):
    """The exact epsilon of clips noised from the one clip ``x0``: (z - alpha x0) / sigma; the
    timesteps it is called at go to ``seen``, each checked against its abar."""
    def predict(z, timestep, alpha_bar):
        torch.testing.assert_close(alpha_bar, alpha_bar_at(ALPHAS, timestep).to(alpha_bar))
        if seen is not None:
            seen.extend(timestep.tolist())
        a = alpha_bar.view(-1, 1, 1, 1, 1)
        return (z - a.sqrt() * x0) / (1 - a).sqrt()
    return predict


class Recorder:
    """A student that keeps what it was called with and predicts zero noise."""

    def __init__(self):
        self.calls = []

    def __call__(self, z, timestep, alpha_bar, lambdas):
        self.calls.append((z, timestep, alpha_bar))
        return NoisePrediction(torch.zeros_like(z), None, torch.zeros_like(z))


def assert_noised_by_spec(z, timesteps, alpha_bar, video, lambdas, alphas_cumprod):
    """Spec §1 at each clip's timestep: abar is that of the timestep, and (z_t - sqrt(abar) x) /
    sqrt(1 - abar) is the decomposed noise, unit variance with frame correlations
    sqrt(lambda_i lambda_j)."""
    torch.testing.assert_close(alpha_bar,
                               alpha_bar_at(alphas_cumprod, timesteps).to(alpha_bar))
    a = alpha_bar.view(-1, 1, 1, 1, 1)
    noise = (z - a.sqrt() * video) / (1 - a).sqrt()
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 1) < 0.02
    frames = noise.transpose(0, 2).reshape(lambdas.numel(), -1)  # (F, everything else)
    expected = (lambdas[:, None] * lambdas[None]).sqrt().to(frames)
    off_diagonal = ~torch.eye(lambdas.numel(), dtype=torch.bool)
    torch.testing.assert_close(frames.corrcoef()[off_diagonal], expected[off_diagonal],
                               atol=0.03, rtol=0)


# ---- (1) the target, from an oracle teacher -------------------------------------------------

def test_an_oracle_teacher_gives_the_clean_clip_and_the_true_noise_at_every_point():
    torch.manual_seed(0)
    x0 = torch.rand(1, 3, 4, 8, 8, dtype=torch.float64) * 1.8 - 0.9
    eps = torch.randn(1, 3, 4, 8, 8, dtype=torch.float64)
    grid = step_grid(1000, 8)  # the teacher's; the student's points are every other one
    for i in range(0, 8, 2):
        timesteps = grid[i:i + 3].view(3, 1)
        alpha_bars = alpha_bar_at(ALPHAS, timesteps)
        a = alpha_bars[0].view(-1, 1, 1, 1, 1)
        z_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        z_teacher = teacher_two_steps(oracle(x0), z_t, timesteps, alpha_bars, clip=1.0)
        a2 = alpha_bars[2].view(-1, 1, 1, 1, 1)
        torch.testing.assert_close(z_teacher, a2.sqrt() * x0 + (1 - a2).sqrt() * eps)
        x, target = distillation_target(z_t, z_teacher, alpha_bars[0], alpha_bars[2])
        torch.testing.assert_close(x, x0)
        torch.testing.assert_close(target, eps)


def test_a_student_that_is_the_oracle_has_zero_loss_and_any_other_does_not():
    torch.manual_seed(0)
    x0 = torch.rand(1, 3, 4, 8, 8, dtype=torch.float64) * 1.8 - 0.9
    video = x0.expand(16, -1, -1, -1, -1)  # 16 draws: every student point is hit
    lambdas = make_lambdas(4, 0.5).double()

    student_saw, teacher_saw = [], []

    def student(offset):
        def run(z, timestep, alpha_bar, lambdas):
            eps = oracle(x0, student_saw)(z, timestep, alpha_bar) + offset
            return NoisePrediction(eps, None, eps)
        return run

    def loss(offset):
        return distillation_loss(student(offset), oracle(x0, teacher_saw), video,
                                 step_grid(1000, 8), ALPHAS, lambdas, clip=1.0,
                                 generator=torch.Generator().manual_seed(0))

    assert loss(0.0).loss.item() < 1e-20
    assert loss(0.01).loss.item() > 1e-5
    # the student starts from points of its own grid, the teacher steps through the 2N grid
    assert set(student_saw) == set(step_grid(1000, 4).tolist()[:-1])
    assert set(teacher_saw) == set(step_grid(1000, 8).tolist()[:-1])


@pytest.mark.parametrize("clip, weighting", [(None, "epsilon"), (1.0, "min-snr")])
def test_the_students_one_ddim_step_lands_where_a_nonlinear_teachers_two_go(clip, weighting):
    """Salimans & Ho's target for a teacher that is not an oracle: the student whose one DDIM
    step t -> t'' (the teacher's grid point after next) lands on the teacher's two, each with
    x0 clipped as the sampler clips it, has zero loss (``ddim_step`` is checked against
    diffusers' DDIM above); an error of 0.01 everywhere costs 1e-4 per clip, weighted at t by
    Min-SNR-gamma, min(SNR_t, gamma) / SNR_t."""
    torch.manual_seed(0)
    video = torch.rand(16, 3, 4, 8, 8, dtype=torch.float64) * 1.8 - 0.9
    lambdas = make_lambdas(4, 0.5).double()
    grid = step_grid(1000, 8)
    at = {t: i for i, t in enumerate(grid.tolist())}
    seen = []

    def teacher(z, t, a):  # its clean estimate leaves [-1, 1] at high noise: the clip counts
        return torch.tanh(2 * z) * (1 + t.view(-1, 1, 1, 1, 1) / 1000) - 0.2 * z

    def student(offset):
        def run(z, timestep, alpha_bar, lambdas):
            seen.append(alpha_bar)
            t1, t2 = (torch.tensor([grid[at[t] + k] for t in timestep.tolist()]) for k in (1, 2))
            a, a1, a2 = (alpha_bar_at(ALPHAS, t).double() for t in (timestep, t1, t2))
            z1 = ddim_step(z, teacher(z, timestep, a), a, a1, clip)
            z_two = ddim_step(z1, teacher(z1, t1, a1), a1, a2, clip)
            r = (a2 / a).sqrt().view(-1, 1, 1, 1, 1)
            s, s2 = ((1 - x).sqrt().view(-1, 1, 1, 1, 1) for x in (a, a2))
            eps = (z_two - r * z) / (s2 - r * s) + offset
            return NoisePrediction(eps, None, eps)
        return run

    def loss(offset):
        return distillation_loss(student(offset), teacher, video, grid, ALPHAS, lambdas,
                                 clip=clip, generator=torch.Generator().manual_seed(0),
                                 weighting=weighting, snr_gamma=0.5).loss.item()

    assert loss(0.0) < 1e-18
    snr = seen[-1] / (1 - seen[-1])
    weights = snr.clamp(max=0.5) / snr if weighting == "min-snr" else torch.ones_like(snr)
    assert (weights < 1).any() or weighting == "epsilon"
    assert loss(0.01) == pytest.approx(1e-4 * weights.mean().item(), rel=1e-6)


def test_training_clips_are_noised_with_decomposed_noise_at_the_students_points():
    video = torch.full((128, 3, 4, 8, 8), 0.5)
    lambdas = make_lambdas(4, 0.5)
    student = Recorder()
    distillation_loss(student, lambda z, t, a: torch.zeros_like(z), video, step_grid(1000, 8),
                      ALPHAS, lambdas, generator=torch.Generator().manual_seed(0))
    (z, timesteps, alpha_bar), = student.calls
    assert set(timesteps.tolist()) == set(step_grid(1000, 4).tolist()[:-1])
    assert_noised_by_spec(z, timesteps, alpha_bar, video, lambdas, ALPHAS)


def test_truncated_snr_weighs_the_clean_estimate_at_high_noise_and_the_noise_at_low():
    from videofusion.objective import loss_weights

    snr = torch.tensor([0.01, 0.25, 1.0, 4.0, 100.0])
    weights = loss_weights(snr / (1 + snr), "truncated-snr", 5.0)  # abar = SNR / (1 + SNR)
    torch.testing.assert_close(weights, torch.tensor([100.0, 4.0, 1.0, 1.0, 1.0]))


# ---- (2) the guided two-step target, by independent arithmetic --------------------------------

def hand_guided_eps(model, z, t, alpha_bar, labels, null, w):
    """Spec §4's guidance written out: each network guided in turn, the guided bhat taken out of
    the residual input, the key frame corrected (bhat + rhat^k)."""
    lambdas = make_lambdas(z.shape[2], 0.5)
    b_u, b_c = (model.predict_base(z, t, class_labels=c) for c in (null, labels))
    b = b_u + w * (b_c - b_u)
    r_u, r_c = (model.predict_residual(z, b, t, alpha_bar, lambdas, class_labels=c)
                for c in (null, labels))
    r = r_u + w * (r_c - r_u)
    eps = lambdas.view(1, 1, -1, 1, 1).sqrt() * b[:, :, None] \
        + (1 - lambdas.view(1, 1, -1, 1, 1)).sqrt() * r
    k = z.shape[2] // 2
    eps[:, :, k] = b + r[:, :, k]
    return eps


def hand_target(model, z_t, timesteps, labels, null, w):
    """Two DDIM steps (x0 clipped to [-1, 1], epsilon re-derived from it) and the target, each
    line from the papers."""
    abar = [1.0 if t < 0 else float(ALPHAS[t]) for t in timesteps]
    z = z_t
    for i in range(2):
        t = torch.tensor([timesteps[i]] * z.shape[0])
        eps = hand_guided_eps(model, z, t, torch.tensor([abar[i]] * z.shape[0]), labels, null, w)
        x0 = ((z - (1 - abar[i]) ** 0.5 * eps) / abar[i] ** 0.5).clamp(-1, 1)
        eps = (z - abar[i] ** 0.5 * x0) / (1 - abar[i]) ** 0.5
        z = abar[i + 1] ** 0.5 * x0 + (1 - abar[i + 1]) ** 0.5 * eps
    alpha, sigma = abar[0] ** 0.5, (1 - abar[0]) ** 0.5
    alpha2, sigma2 = abar[2] ** 0.5, (1 - abar[2]) ** 0.5
    x = (z - sigma2 / sigma * z_t) / (alpha2 - sigma2 / sigma * alpha)
    return (z_t - alpha * x) / sigma


@pytest.mark.parametrize("timesteps", [(999, 874, 749), (249, 124, -1)])
def test_the_guided_target_is_the_two_step_composition_of_spec_4(teacher_dir, timesteps):
    model = load_pipeline(teacher_dir).model.eval()
    torch.manual_seed(0)
    z_t = torch.randn(2, 3, 4, 16, 16)
    labels, null = torch.tensor([3, 7]), torch.tensor([10, 10])
    steps = torch.tensor(timesteps).view(3, 1).expand(3, 2)
    alpha_bars = alpha_bar_at(ALPHAS.float(), steps)
    with torch.no_grad():
        expected = hand_target(model, z_t, timesteps, labels, null, GUIDANCE)
        unguided = hand_target(model, z_t, timesteps, labels, null, 1.0)
        teacher = partial(guided_noise_prediction, model, lambdas=make_lambdas(4, 0.5),
                          condition=Condition(labels, None, null), guidance_scale=GUIDANCE)
        z_teacher = teacher_two_steps(teacher, z_t, steps, alpha_bars, clip=1.0)
        _, target = distillation_target(z_t, z_teacher, alpha_bars[0], alpha_bars[2])
    assert (expected - unguided).abs().max() > 1e-2  # the branches differ: guidance matters
    torch.testing.assert_close(target, expected, rtol=1e-4, atol=1e-4)


def test_the_trainers_loss_guides_round_0s_teacher_and_not_the_later_ones(runs, teacher_dir):
    root, alphas = runs[0], DDPMScheduler().alphas_cumprod  # the tiny runs' linear schedule
    config = distill_config(root, "straight", teacher_dir)
    student = load_pipeline(root / "straight" / "pipeline").model
    lambdas = make_lambdas(4, 0.5)
    rounds = Distillation(config, root / "straight", student, alphas, lambdas)
    torch.manual_seed(0)
    video = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    labels, null = torch.tensor([3, 10]), torch.tensor([10, 10])  # the second label dropped
    for round_, folder, w in ((0, teacher_dir, GUIDANCE),
                              (1, root / "straight" / "rounds" / "round-0", 1.0)):
        teacher = load_pipeline(folder).model.eval()
        with torch.no_grad():
            got = rounds.loss(student, video, Condition(labels), round_ * PER_ROUND,
                              torch.Generator().manual_seed(0))
            expected = distillation_loss(
                student, lambda z, t, a, m=teacher, w=w: hand_guided_eps(m, z, t, a, labels,
                                                                         null, w),
                video, step_grid(1000, 2 * ROUNDS[round_]), alphas, lambdas, clip=1.0,
                generator=torch.Generator().manual_seed(0), class_labels=labels)
        torch.testing.assert_close(got.loss, expected.loss, rtol=1e-4, atol=0)


# ---- (3) grids --------------------------------------------------------------------------------

def test_the_student_grid_is_every_other_point_of_the_teachers():
    assert step_grid(1000, 4).tolist() == [999, 749, 499, 249, -1]
    assert step_grid(1000, 8).tolist() == [999, 874, 749, 624, 499, 374, 249, 124, -1]
    for steps in (1, 2, 4, 8, 16, 32, 64, 125, 250):
        assert torch.equal(step_grid(1000, 2 * steps)[::2], step_grid(1000, steps))
    assert alpha_bar_at(ALPHAS, torch.tensor([-1, 999])).tolist() == [1.0, ALPHAS[999].item()]


@pytest.mark.parametrize("steps", [4, 8])
def test_the_distilled_folders_ddim_walks_the_grid_with_the_same_step(steps):
    scheduler = DDIMScheduler.from_config(DDPMScheduler(beta_schedule="scaled_linear",
                                                        beta_start=0.00085,
                                                        beta_end=0.012).config, **DDIM_GRID)
    scheduler.set_timesteps(steps)
    grid = step_grid(1000, steps)
    assert torch.equal(scheduler.timesteps, grid[:-1])
    torch.manual_seed(0)
    z, eps = torch.randn(1, 3, 2, 4, 4) * 2, torch.randn(1, 3, 2, 4, 4)
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        abar = alpha_bar_at(scheduler.alphas_cumprod, torch.stack([t, t_next]))
        torch.testing.assert_close(noise_injecting_step(scheduler)(eps, t, z, None),
                                   ddim_step(z, eps, abar[:1], abar[1:], clip=1.0))


@pytest.mark.parametrize("overrides, message", [
    ({"distill_rounds": [8, 3]}, "halve"),
    ({"distill_rounds": [32, 16]}, "divide num_train_timesteps"),
    ({"distill_rounds": [1000]}, "first teacher takes 2000 steps"),
    ({"base_pretrain_steps": 5}, "teacher's copy"),
    ({"init_from": "elsewhere"}, "different folders"),
    ({"condition": "none", "distill_guidance": 2.0}, "conditioned model"),
])
def test_impossible_distillation_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{"distill_from": "teacher", **overrides}).validate()


@pytest.mark.parametrize("name, edge, past, message", [
    ("distill_steps_per_round", 1, 0, "distill_steps_per_round must be >= 1, got 0"),
    ("distill_guidance", 0.0, -0.5, "distill_guidance must be >= 0, got -0.5"),
    ("distill_guidance", 0.5, -0.5, "distill_guidance must be >= 0, got -0.5"),
    ("distill_sampler_clips", 1, 0, "distill_sampler_clips must be >= 1, got 0"),
    ("distill_rounds", [2, 1], [0], "distill_rounds must be step counts that halve from round to "
     "round, e.g. 16,8,4, got [0]"),
    ("distill_rounds", [500], [1000], "distill_rounds: the first teacher takes 2000 steps, more "
     "than the 1000 timesteps"),
])
def test_each_distillation_limit_admits_its_edge_and_refuses_past_it(name, edge, past, message):
    settings = {"distill_from": "teacher", "condition": "class"}
    TrainConfig(**settings, **{name: edge}).validate()
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        TrainConfig(**settings, **{name: past}).validate()


@pytest.mark.parametrize("overrides, message", [
    ({"base_pretrain_steps": 5}, "--distill-from: the student starts as the teacher's copy: drop "
     "--base-pretrain-steps, --base-from and --base-from-scratch"),
    ({"init_from": "elsewhere"}, "--init-from and --distill-from name different folders: the "
     "student starts as the teacher's copy"),
    ({"condition": "none", "distill_guidance": 2.0},
     "distill_guidance needs a class- or text-conditioned model"),
    ({"distill_kind": "progressive", "distill_sampler_states": 0.5},
     "distill_sampler_states needs --distill-kind guidance, or ancestral with one round (the "
     "states are the first teacher's): a progressive student learns two DDIM steps from noised "
     "clips"),
    ({"distill_kind": "progressive", "distill_temporal_weight": 1.0},
     "distill_temporal_weight needs --distill-kind guidance"),
])
def test_distillation_refusals_say_what_to_change(overrides, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        TrainConfig(**{"distill_from": "teacher", **overrides}).validate()


# ---- (4) resume ------------------------------------------------------------------------------

def distill_config(root, name, teacher_dir, **overrides) -> TrainConfig:
    return TrainConfig(**tiny_settings(
        output_dir=str(root / name), distill_from=str(teacher_dir), distill_rounds=ROUNDS,
        distill_steps_per_round=PER_ROUND, **overrides)).validate()


def test_a_teacher_the_student_cannot_copy_or_step_like_is_refused(teacher_dir, tmp_path):
    pipe = load_pipeline(teacher_dir)
    config = distill_config(tmp_path, "student", teacher_dir)
    check_teacher(pipe, config)
    for overrides, difference in (
            ({"residual_input": "paper"}, "residual_input 'with_key_frame', the config 'paper'"),
            ({"key_frame_correction": False}, "key_frame_correction True, the config False"),
            ({"lambda_": 0.7}, "lambda 0.5, the config 0.7"),
            ({"resolution": 32}, "resolution 16, the config 32"),
            ({"vae": "some/vae"}, "vae False, the config True")):
        with pytest.raises(ValueError, match=re.escape(
                f"--distill-from: {teacher_dir} has {difference}: the student is the teacher's "
                "copy") + "$"):
            check_teacher(pipe, dataclasses.replace(config, **overrides))
    # the VDM baseline samples every frame from independent noise: its teacher has lambda 0
    vdm_teacher = load_pipeline(teacher_dir)
    vdm_teacher.register_to_config(residual_input="paper", key_frame_correction=False)
    with pytest.raises(ValueError, match="has lambda 0.5, the config 0.0: "):
        check_teacher(vdm_teacher, dataclasses.replace(config, model="vdm"))
    own = pipe.scheduler.config
    for scheduler_config in ({"prediction_type": "v_prediction"}, {"thresholding": True}):
        pipe.scheduler = DDIMScheduler.from_config(own, **scheduler_config)
        with pytest.raises(ValueError, match=re.escape(
                f"--distill-from: {teacher_dir}'s scheduler must predict epsilon without dynamic "
                "thresholding (the teacher's DDIM steps do neither otherwise)") + "$"):
            check_teacher(pipe, config)
    teacher = frozen(pipe, torch.device("cpu"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, teacher_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("distill")
    straight = run(distill_config(root, "straight", teacher_dir))
    resumed = None
    for stop in STOPS:
        resumed = run(distill_config(root, "split", teacher_dir, stop_at_step=stop,
                                     resume=resumed is not None))
    resumed = run(distill_config(root, "split", teacher_dir, resume=True))
    torch.set_num_threads(threads)
    return root, straight, resumed


def test_stops_inside_a_round_and_at_its_boundary_resume_bitwise(runs):
    root, straight, resumed = runs
    logs = [[json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("straight", "split")]
    assert [r["step"] for r in logs[1]] == [1, 2, 3, 4]
    assert {r["stage"] for r in logs[0]} == {"distill"}
    for a, b in zip(*logs, strict=True):
        assert (a["loss"], a["lr"]) == (b["loss"], b["lr"])
    assert logs[0][0]["lr"] == logs[0][2]["lr"]  # each round starts its own schedule
    assert_same_tensors(straight.model.state_dict(), resumed.model.state_dict())
    assert_same_tensors({str(i): p for i, p in enumerate(straight.ema.shadow_params)},
                        {str(i): p for i, p in enumerate(resumed.ema.shadow_params)})
    assert straight.ema.optimization_step == resumed.ema.optimization_step == PER_ROUND
    for name in ("rounds/round-0", "pipeline"):
        assert_same_tensors(folder_weights(root / "straight" / name),
                            folder_weights(root / "split" / name))


def test_the_round_boundary_makes_the_saved_student_the_teacher_and_the_start(runs, teacher_dir):
    root, straight, _ = runs
    first = folder_weights(root / "straight" / "rounds" / "round-0")
    assert any(not torch.equal(first[k], v) for k, v in folder_weights(teacher_dir).items())
    # the checkpoint at the boundary holds round 1's start: the saved student, fresh EMA
    from safetensors.torch import load_file as load

    saved = load(root / "split" / "checkpoints" / "step-000002" / "model.safetensors")
    started = {k.replace("model.base.unet.", "base.").replace("model.residual.", "residual."): v
               for k, v in saved.items()}
    assert_same_tensors(first, started)
    summary = json.loads((root / "straight" / "train_summary.json").read_text())
    assert summary["distillation"]["rounds"] == ROUNDS and summary["steps"] == 4


def test_a_round_starts_and_trains_a_student_that_fsdp2_shards(teacher_dir, tmp_path):
    """torch's FSDP2 on 2 CPU processes (``tests/fsdp_distill_run.py``): the round's start cuts
    the whole teacher into each process's slices, and the sharded student's loss is the
    unsharded one's."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("fsdp_distill_run.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(teacher_dir), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        found = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        assert found["parameter_type"] == "DTensor" and found["started_as_teacher"]
        assert found["loss_sharded"] == pytest.approx(found["loss_whole"], rel=1e-5)


# ---- (5) the distilled folder -----------------------------------------------------------------

def network_calls(pipe, monkeypatch) -> list[tuple[str, int]]:
    calls = []
    for name in ("base", "residual"):
        network = getattr(pipe, name)
        forward = network.forward

        def counted(sample, *args, _name=name, _forward=forward, **kwargs):
            calls.append((_name, sample.shape[0]))
            return _forward(sample, *args, **kwargs)
        monkeypatch.setattr(network, "forward", counted)
    return calls


def test_the_distilled_folder_samples_n_steps_of_one_pass_each(runs, teacher_dir, monkeypatch):
    root = runs[0]
    pipe = load_pipeline(root / "straight" / "pipeline")
    assert pipe.config.distilled_guidance_scale == GUIDANCE
    assert (pipe.default_steps, pipe.default_guidance) == (ROUNDS[-1], 1.0)
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    calls = network_calls(pipe, monkeypatch)
    pipe(class_labels=[1], num_frames=4, num_inference_steps=pipe.default_steps, progress=False)
    assert calls == [("base", 1), ("residual", 1)] * ROUNDS[-1]
    teacher = load_pipeline(teacher_dir)
    calls = network_calls(teacher, monkeypatch)
    teacher(class_labels=[1], num_frames=4, num_inference_steps=1, guidance_scale=GUIDANCE,
            progress=False)
    assert calls == [("base", 2), ("residual", 2)]  # what guidance costs undistilled
    with pytest.raises(ValueError, match="distilled with guidance 3 folded in"):
        pipe(class_labels=[1], num_frames=4, guidance_scale=2.0, progress=False)
    with pytest.raises(ValueError, match="residual_guidance_scale: this model was distilled"):
        pipe(class_labels=[1], num_frames=4, residual_guidance_scale=2.0, progress=False)


def test_the_cli_refuses_a_second_guidance_and_info_says_distilled(runs, tmp_path, capsys):
    folder = str(runs[0] / "straight" / "pipeline")
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--model-dir", folder, "--class-label", "1", "--frames", "4",
              "--guidance", "2", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "would guide it a second time" in err[0], err
    assert main(["sample", "--model-dir", folder, "--class-label", "1", "--num-videos", "1",
                 "--frames", "4", "--out", str(tmp_path / "out")]) == 0
    assert main(["info", folder]) == 0
    out = capsys.readouterr().out
    assert "distilled:      2 DDIM steps, guidance 3 folded in" in out
    assert "progressive distillation, rounds 4,2" in out


# ---- (6) guidance distillation: the guided teacher's epsilon, its sampler kept ---------------

def test_guidance_distillation_regresses_on_the_teachers_epsilon_at_any_timestep():
    torch.manual_seed(0)
    x0 = torch.rand(1, 3, 4, 8, 8, dtype=torch.float64) * 1.8 - 0.9
    video = x0.expand(64, -1, -1, -1, -1)
    lambdas = make_lambdas(4, 0.5).double()
    seen = []

    def teacher(z, timestep, alpha_bar):  # any epsilon the student can match exactly
        seen.append(timestep)
        return 0.3 * oracle(x0)(z, timestep, alpha_bar) + 0.1

    def student(offset):
        def run(z, timestep, alpha_bar, lambdas):
            torch.testing.assert_close(timestep, seen[-1])  # the teacher's z_t and t
            eps = teacher(z, timestep, alpha_bar) + offset
            return NoisePrediction(eps, None, eps)
        return run

    def loss(offset):
        return guidance_distillation_loss(student(offset), teacher, video, ALPHAS, lambdas,
                                          generator=torch.Generator().manual_seed(0))

    assert loss(0.0).loss.item() < 1e-20
    assert loss(0.01).loss.item() == pytest.approx(1e-4, rel=1e-6)  # epsilon weighting: plain MSE
    drawn = torch.cat(seen)
    assert drawn.min() < 100 and drawn.max() > 900  # every timestep, not a grid
    assert len(set(drawn.tolist())) > 50


@pytest.mark.parametrize("snr_gamma", [0.5, 5.0])
def test_guidance_distillation_weighs_each_clip_with_its_min_snr_gamma(snr_gamma):
    """Min-SNR-gamma (Hang et al.): each clip's epsilon error weighted min(SNR_t, gamma) / SNR_t,
    at the gamma given, not a default."""
    video = torch.zeros(6, 3, 4, 8, 8)
    seen = []

    def student(z, timestep, alpha_bar, lambdas):
        seen.append(alpha_bar)
        eps = torch.full_like(z, 0.1)  # the teacher says 0: an error of 0.1 everywhere
        return NoisePrediction(eps, None, eps)

    got = guidance_distillation_loss(student, lambda z, t, a: torch.zeros_like(z), video,
                                     ALPHAS.float(), make_lambdas(4, 0.5), weighting="min-snr",
                                     snr_gamma=snr_gamma,
                                     generator=torch.Generator().manual_seed(0))
    snr = seen[0] / (1 - seen[0])
    expected = (snr.clamp(max=snr_gamma) / snr * 0.01).mean()
    torch.testing.assert_close(got.loss, expected, rtol=1e-5, atol=0)
    assert (snr < 5).any() and (snr > 0.5).any()  # both gammas cap some clips, not all


@pytest.fixture(scope="module")
def guidance_run(tmp_path_factory, teacher_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("guidance")
    settings = {"distill_kind": "guidance", "distill_weighting": "epsilon"}
    straight = run(distill_config(root, "straight", teacher_dir, **settings))
    run(distill_config(root, "split", teacher_dir, stop_at_step=1, **settings))
    resumed = run(distill_config(root, "split", teacher_dir, resume=True, **settings))
    torch.set_num_threads(threads)
    return root, straight, resumed


def test_the_trainers_guidance_loss_is_the_guided_teachers_epsilon(guidance_run, teacher_dir):
    root, _, _ = guidance_run
    alphas = DDPMScheduler().alphas_cumprod  # the tiny runs' linear schedule
    config = distill_config(root, "straight", teacher_dir, distill_kind="guidance",
                            distill_weighting="epsilon")
    student = load_pipeline(root / "straight" / "pipeline").model
    lambdas = make_lambdas(4, 0.5)
    distillation = Distillation(config, root / "straight", student, alphas, lambdas)
    torch.manual_seed(0)
    video = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    labels, null = torch.tensor([3, 10]), torch.tensor([10, 10])
    teacher = load_pipeline(teacher_dir).model.eval()
    with torch.no_grad():
        got = distillation.loss(student, video, Condition(labels), 0,
                                torch.Generator().manual_seed(0))
        expected = guidance_distillation_loss(
            student, lambda z, t, a: hand_guided_eps(teacher, z, t, a, labels, null, GUIDANCE),
            video, alphas, lambdas, generator=torch.Generator().manual_seed(0),
            class_labels=labels)
        unguided = guidance_distillation_loss(
            student, lambda z, t, a: hand_guided_eps(teacher, z, t, a, labels, null, 1.0),
            video, alphas, lambdas, generator=torch.Generator().manual_seed(0),
            class_labels=labels)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-4, atol=0)
    assert abs(got.loss.item() - unguided.loss.item()) > 1e-4 * got.loss.item()


def test_a_guidance_student_keeps_its_teachers_sampler_at_one_pass_a_step(
        guidance_run, teacher_dir, monkeypatch, capsys):
    root, straight, resumed = guidance_run
    assert_same_tensors(straight.model.state_dict(), resumed.model.state_dict())
    assert not (root / "straight" / "rounds").exists()  # one round: no teacher to hand on
    pipe, teacher = load_pipeline(root / "straight" / "pipeline"), load_pipeline(teacher_dir)
    assert type(pipe.scheduler) is type(teacher.scheduler)
    assert pipe.scheduler.config == teacher.scheduler.config  # "leading", not DDIM_GRID's
    assert pipe.config.distilled_guidance_scale == GUIDANCE
    assert pipe.config.distilled_steps is None
    assert (pipe.default_steps, pipe.default_guidance) == (teacher.default_steps, 1.0)
    calls = network_calls(pipe, monkeypatch)
    pipe(class_labels=[1], num_frames=4, num_inference_steps=3, progress=False)
    assert calls == [("base", 1), ("residual", 1)] * 3
    summary = json.loads((root / "straight" / "train_summary.json").read_text())
    assert summary["distillation"]["kind"] == "guidance"
    assert summary["distillation"]["rounds"] is None and summary["steps"] == PER_ROUND
    assert main(["info", str(root / "straight" / "pipeline")]) == 0
    out = capsys.readouterr().out
    assert "distilled:      its teacher's sampler, guidance 3 folded in" in out
    assert "guidance distillation" in out


def test_guidance_distillation_ignores_the_rounds():
    config = TrainConfig(distill_from="teacher", distill_kind="guidance", distill_rounds=[8, 3],
                         distill_steps_per_round=7).validate()
    assert config.total_steps == 7
    with pytest.raises(ValueError, match="distill_kind"):
        TrainConfig(distill_from="teacher", distill_kind="consistency").validate()


def test_only_a_guidance_distillation_may_lengthen_its_round_on_resume():
    """Its one round is its max_steps; a progressive round's length places every later
    teacher, so changing it on resume is refused like any change to the objective."""
    def changes(kind, new_kind=None, steps=9):
        saved = TrainConfig(distill_from="teacher", distill_kind=kind, distill_steps_per_round=7)
        wanted = TrainConfig(distill_from="teacher", distill_kind=new_kind or kind,
                             distill_steps_per_round=steps)
        return wanted.resume_changes(saved)

    assert changes("guidance") == []
    assert changes("progressive") == ["distill_steps_per_round 7 -> 9"]
    assert "distill_steps_per_round 7 -> 9" in changes("progressive", "guidance")
    assert "distill_steps_per_round 7 -> 9" in changes("guidance", "progressive")


# ---- (5) guidance distillation at the teacher's own sampler states ----------------------------

def test_the_recorded_states_are_the_teachers_ddim_trajectory(teacher_dir):
    """Each recorded state is the previous one moved by one deterministic DDIM step (x0
    clipped to [-1, 1] and epsilon re-derived from it, as the sampler's DDIM does) with the
    guided epsilon of spec §4,
    written out by hand; the first is the signal-leak start of the pipeline's own draw."""
    pipe = load_pipeline(teacher_dir).use_scheduler("ddim")
    pipe.scheduler.set_timesteps(1)  # the recording sets its own steps
    pipe.register_to_config(default_inference_steps=4)
    labels = torch.tensor([3, 10, 5])  # the second one dropped: the null label
    lambdas = make_lambdas(4, 0.5)
    null = torch.full_like(labels, 10)
    states = record_sampler_states(pipe, Condition(labels, None, null), lambdas, GUIDANCE,
                                   seed=7, steps=4, chunk=2)
    assert states.states.shape == (3, 4, 3, 4, 16, 16) and states.states.dtype == torch.float16
    assert states.timesteps.tolist() == pipe.scheduler.timesteps.tolist()
    assert states.class_labels.tolist() == labels.tolist() and states.text_states is None
    # the first state of chunk 1 (clip 2) is the pipeline's z_T for seed 7 + 1
    plan = pipe.plan(class_labels=[5], num_frames=4, num_inference_steps=4,
                     guidance_scale=GUIDANCE)
    z_T, _ = pipe.prepare_latents(plan, torch.Generator().manual_seed(8))
    torch.testing.assert_close(states.states[2, 0].float(), z_T[0], atol=2e-3, rtol=1e-3)
    model, alphas = pipe.model.eval(), pipe.scheduler.alphas_cumprod
    for s in range(3):
        t, t_next = states.timesteps[s], states.timesteps[s + 1]
        z = states.states[:, s].float()
        with torch.no_grad():
            eps = hand_guided_eps(model, z, t.expand(3), alphas[t].expand(3), labels, null,
                                  GUIDANCE)
        x0 = ((z - (1 - alphas[t]).sqrt() * eps) / alphas[t].sqrt()).clamp(-1, 1)
        eps = (z - alphas[t].sqrt() * x0) / (1 - alphas[t]).sqrt()  # the clipped x0's
        expected = alphas[t_next].sqrt() * x0 + (1 - alphas[t_next]).sqrt() * eps
        torch.testing.assert_close(states.states[:, s + 1].float(), expected, atol=2e-2,
                                   rtol=1e-2)


def test_a_drawn_state_comes_with_its_own_timestep_and_its_clips_condition():
    clips, steps = 3, 4
    marks = torch.arange(clips).view(-1, 1) * 10 + torch.arange(steps)  # clip n, step s: 10n + s
    states = SamplerStates(marks.view(clips, steps, 1, 1, 1, 1).expand(-1, -1, 3, 2, 4, 4).half(),
                           torch.tensor([900, 600, 300, 50]), torch.tensor([7, 10, 2]),
                           torch.arange(clips).float().view(-1, 1, 1).expand(-1, 5, 8))
    z_t, timesteps, condition = states.draw(64, torch.Generator().manual_seed(0), "cpu")
    assert z_t.shape == (64, 3, 2, 4, 4) and z_t.dtype == torch.float32
    mark = z_t[:, 0, 0, 0, 0].long()
    clip, step = mark // 10, mark % 10
    assert len(set(mark.tolist())) > 6  # clips and steps are both drawn
    assert timesteps.tolist() == [[900, 600, 300, 50][s] for s in step.tolist()]
    assert condition.class_labels.tolist() == [[7, 10, 2][n] for n in clip.tolist()]
    assert condition.encoder_hidden_states[:, 0, 0].long().tolist() == clip.tolist()


def one_state_distillation(root, teacher_dir, share, **settings):
    config = distill_config(root, "one_state", teacher_dir, distill_kind="guidance",
                            distill_weighting="epsilon", distill_sampler_states=share, **settings)
    student = load_pipeline(teacher_dir).model
    distillation = Distillation(config, root / "one_state", student,
                                DDPMScheduler().alphas_cumprod, make_lambdas(4, 0.5))
    torch.manual_seed(1)
    state = torch.randn(1, 1, 3, 4, 16, 16)
    distillation.sampler_states = SamplerStates(state.half(), torch.tensor([640]),
                                                torch.tensor([6]))
    return distillation, student, state[0].half().float()


@pytest.mark.parametrize("temporal_weight", [0.0, 3.0])
def test_a_sampler_state_step_regresses_the_student_on_the_guided_teacher_there(
        teacher_dir, tmp_path, temporal_weight):
    distillation, student, state = one_state_distillation(
        tmp_path, teacher_dir, 1.0, distill_temporal_weight=temporal_weight)
    with torch.no_grad():
        student.residual.conv_in.weight.mul_(1.1)  # the student is not its teacher
    video = torch.zeros(2, 3, 4, 16, 16)  # not used: every clip is the recorded state
    teacher = load_pipeline(teacher_dir).model.eval()
    abar = DDPMScheduler().alphas_cumprod[640]
    with torch.no_grad():
        got = distillation.loss(student, video, Condition(torch.tensor([1, 2])), 0,
                                torch.Generator().manual_seed(0))
        z = state.expand(2, -1, -1, -1, -1)
        labels, null = torch.tensor([6, 6]), torch.tensor([10, 10])
        target = hand_guided_eps(teacher, z, torch.tensor([640, 640]), abar.expand(2), labels,
                                 null, GUIDANCE)
        mine = student(z, torch.tensor([640, 640]), abar.expand(2), make_lambdas(4, 0.5),
                       class_labels=labels)
        # the key frame's slot is corrected (spec §7): its base term counts as one more frame
        k = 2
        error = mine.noise - target
        changes = torch.stack([error[:, :, f + 1] - error[:, :, f] for f in range(3)], dim=2)
        expected = (error.pow(2).mean(dim=(1, 3, 4)).mean(dim=1)
                    + (mine.base - target[:, :, k]).pow(2).mean(dim=(1, 2, 3)) / 4
                    + temporal_weight * changes.pow(2).mean(dim=(1, 2, 3, 4))).mean()
    assert mine.key_frame_corrected
    torch.testing.assert_close(got.loss, expected, rtol=1e-4, atol=0)
    assert got.loss > 1e-6


@pytest.mark.parametrize("temporal_weight", [0.0, 3.0])
def test_without_sampler_states_the_loss_is_on_noised_clips(teacher_dir, tmp_path,
                                                            temporal_weight):
    distillation, student, _ = one_state_distillation(
        tmp_path, teacher_dir, 0.0, distill_temporal_weight=temporal_weight)
    video = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    labels = torch.tensor([3, 10])
    alphas, lambdas = DDPMScheduler().alphas_cumprod, make_lambdas(4, 0.5)
    teacher = load_pipeline(teacher_dir).model.eval()

    def guided(z, t, a):
        return hand_guided_eps(teacher, z, t, a, labels, torch.tensor([10, 10]), GUIDANCE)

    with torch.no_grad():
        got = distillation.loss(student, video, Condition(labels), 0,
                                torch.Generator().manual_seed(0))
        plain = guidance_distillation_loss(student, guided, video, alphas, lambdas,
                                           generator=torch.Generator().manual_seed(0),
                                           class_labels=labels)
        # the temporal term by hand, at the same noised clips
        z_t, t, a, _ = noised_clips(video, alphas, lambdas, torch.Generator().manual_seed(0))
        error = student(z_t, t, a, lambdas, class_labels=labels).noise - guided(z_t, t, a)
        changes = error[:, :, 1:] - error[:, :, :-1]
        term = temporal_weight * changes.pow(2).mean(dim=(1, 2, 3, 4)).mean()
    torch.testing.assert_close(got.loss, plain.loss + term, rtol=1e-4, atol=0)
    assert term > 1e-6 * plain.loss or temporal_weight == 0


def test_a_run_records_the_states_once_and_resumes_on_them_bitwise(teacher_dir, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    settings = {"distill_kind": "guidance", "distill_weighting": "epsilon",
                "distill_sampler_states": 0.5, "distill_sampler_clips": 3}
    try:
        straight = run(distill_config(tmp_path, "straight", teacher_dir, **settings))
        run(distill_config(tmp_path, "split", teacher_dir, stop_at_step=1, **settings))
        path = tmp_path / "split" / "sampler_states" / "states.safetensors"
        written = path.stat().st_mtime_ns
        resumed = run(distill_config(tmp_path, "split", teacher_dir, resume=True, **settings))
    finally:
        torch.set_num_threads(threads)
    assert path.stat().st_mtime_ns == written  # read back, not recorded again
    states = straight.distillation.sampler_states
    assert states.states.shape[:2] == (3, load_pipeline(teacher_dir).default_steps)
    assert_same_tensors(straight.model.state_dict(), resumed.model.state_dict())
    # states recorded otherwise (another guidance, other conditions) are not reused
    with safe_open(path, framework="pt") as handle:
        about = handle.metadata()
    assert about["guidance_scale"] == repr(GUIDANCE)
    assert SamplerStates.load(path, about) is not None
    for key, other in (("guidance_scale", "1.5"), ("conditions", "0" * 16)):
        assert SamplerStates.load(path, {**about, key: other}) is None


@pytest.mark.parametrize("condition", ["class_labels", "text_states"])
def test_sampler_states_keep_their_conditions_through_a_file(tmp_path, condition):
    values = {"class_labels": torch.tensor([3, 10]), "text_states": torch.randn(2, 4, 8)}
    states = SamplerStates(torch.randn(2, 3, 3, 4, 8, 8).half(), torch.tensor([200, 100, 0]),
                           **{condition: values[condition]})
    about = {"guidance_scale": "4.0"}
    states.save(tmp_path / "states" / "states.safetensors", about)
    loaded = SamplerStates.load(tmp_path / "states" / "states.safetensors", about)
    for name in ("states", "timesteps", "class_labels", "text_states"):
        expected, got = getattr(states, name), getattr(loaded, name)
        assert (got is None) if expected is None else torch.equal(got, expected), name


@pytest.mark.parametrize("overrides, message", [
    ({"distill_kind": "guidance", "distill_sampler_states": 1.5}, "share in"),
    ({"distill_kind": "progressive", "distill_sampler_states": 0.5}, "distill-kind guidance"),
    ({"distill_kind": "guidance", "distill_sampler_clips": 0}, "distill_sampler_clips"),
    ({"distill_kind": "guidance", "distill_temporal_weight": -1.0}, "must be >= 0"),
    ({"distill_kind": "guidance", "distill_temporal_weight": float("nan")}, "finite number"),
    ({"distill_kind": "progressive", "distill_temporal_weight": 1.0}, "distill-kind guidance"),
])
def test_impossible_sampler_state_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{"distill_from": "teacher", **overrides}).validate()
