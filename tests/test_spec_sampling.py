"""Spec §4 with classifier-free guidance, against an analytic oracle whose conditional and
unconditional branches differ.

For data that is a single clip x, the exact noise predictor is eps(z_t) = (z_t - sqrt(abar) x) /
sqrt(1 - abar), linear in x. Guidance with scale w mixes two such predictors (x_A for the label,
x_B for the null label) into eps_B + w (eps_A - eps_B), the exact predictor of the single clip
x_G = x_B + w (x_A - x_B). The decomposed oracles (bhat from the key frame, rhat from the residual
input z') keep that linearity, so a correct sampler must return x_G exactly, for any lambda and
any w. A residual generator fed z_t instead of z' (in either branch) breaks it.
"""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from sampling_run import sample
from torch import nn

from videofusion import Condition, VideoFusionModel, make_lambdas
from videofusion.sampling import alpha_bar_at, guided_noise_prediction

FRAMES = 5
K = FRAMES // 2
NULL = 2  # the null label; labels 0 and 1 are two different clips


def targets():
    g = torch.Generator().manual_seed(11)
    # one clip per label (0, 1) and one for the null label, each (C, F, H, W)
    return torch.rand(3, 2, FRAMES, 4, 4, generator=g) * 0.6 - 0.3


class LabelledOracleBase(nn.Module):
    def __init__(self, clips, abar_of):
        super().__init__()
        self.clips, self.abar_of = clips, abar_of

    def forward(self, key_frame, timestep, class_labels=None, encoder_hidden_states=None):
        a = self.abar_of(timestep)
        x = self.clips[class_labels][:, :, K]
        return (key_frame - a.sqrt() * x) / (1 - a).sqrt()


class LabelledOracleResidual(nn.Module):
    """Exact rhat^i of the clip of each sample's label, computed from the z' it is given."""

    def __init__(self, clips, abar_of, lambdas):
        super().__init__()
        self.clips, self.abar_of, self.lambdas = clips, abar_of, lambdas

    def forward(self, z_res, timestep, class_labels=None, encoder_hidden_states=None):
        a = self.abar_of(timestep)
        x = self.clips[class_labels]
        keep = (1 - self.lambdas).view(1, 1, -1, 1, 1)
        r = (z_res - a.sqrt() * x) / ((1 - a).sqrt() * keep.sqrt().clamp_min(1e-12))
        return torch.where(keep > 0, r, torch.zeros_like(r))


def guided_oracle_sample(scheduler, lambdas, labels, guidance_scale, steps=30, wrong=False):
    clips = targets()

    def abar_of(timestep):
        i = int((scheduler.timesteps == timestep.flatten()[0]).nonzero()[0])
        return alpha_bar_at(scheduler, scheduler.timesteps[i], i)

    cls = WrongResidualInput if wrong else VideoFusionModel
    model = cls(LabelledOracleResidual(clips, abar_of, lambdas),
                LabelledOracleBase(clips, abar_of))
    labels = torch.tensor(labels)
    condition = Condition(class_labels=labels, null_class_labels=torch.full_like(labels, NULL))
    out = sample(model, scheduler, (len(labels), 2, FRAMES, 4, 4), lambdas,
                 num_inference_steps=steps, condition=condition,
                 guidance_scale=guidance_scale,
                 generator=torch.Generator().manual_seed(0))
    expected = clips[NULL] + guidance_scale * (clips[labels] - clips[NULL])
    return out, expected


class WrongResidualInput(VideoFusionModel):
    def _residual_input(self, z_t, base, alpha_bar, lambdas):
        return z_t


@pytest.mark.parametrize("guidance_scale", [2.5, 0.0, 1.7])
@pytest.mark.parametrize("lambda_", [0.5, [0.3, 0.9, 1.0, 0.0, 0.6]])
def test_guided_ddim_returns_the_guided_clip(lambda_, guidance_scale):
    lambdas = make_lambdas(FRAMES, lambda_)
    out, expected = guided_oracle_sample(DDIMScheduler(clip_sample=False), lambdas, [0, 1],
                                         guidance_scale)
    assert (out - expected).abs().max() < 1e-3
    # the two branches really differ: the guided clip is neither of them
    if guidance_scale not in (0.0, 1.0):
        assert (expected - targets()[[0, 1]]).abs().max() > 0.1


def test_guided_ddpm_returns_the_guided_clip():
    lambdas = make_lambdas(FRAMES, 0.5)
    out, expected = guided_oracle_sample(DDPMScheduler(clip_sample=False), lambdas, [1, 0], 2.0,
                                         steps=20)
    assert (out - expected).abs().max() < 1e-3


def test_guided_oracle_detects_a_residual_fed_z_t():
    lambdas = make_lambdas(FRAMES, 0.5)
    out, expected = guided_oracle_sample(DDIMScheduler(clip_sample=False), lambdas, [0, 1], 2.5,
                                         wrong=True)
    assert (out - expected).abs().max() > 1e-2


def test_one_guided_step_by_hand():
    """guided_noise_prediction at one step, written out: bhat_g = bhat_u + w (bhat_c - bhat_u),
    z' = z - sqrt(lambda) sqrt(1 - abar) bhat_g for both branches, rhat_g likewise,
    epshat = sqrt(lambda) bhat_g + sqrt(1 - lambda) rhat_g."""
    g = torch.Generator().manual_seed(3)
    w_base = torch.randn(2, 2, generator=g)

    class LinearBase(nn.Module):
        def forward(self, key_frame, timestep, class_labels=None, encoder_hidden_states=None):
            mixed = torch.einsum("oc,bchw->bohw", w_base, key_frame)
            return mixed * (1 + class_labels.view(-1, 1, 1, 1)) + timestep.view(-1, 1, 1, 1) / 100

    class Squares(nn.Module):
        def forward(self, z, timestep, class_labels=None, encoder_hidden_states=None):
            shift = torch.arange(FRAMES).view(1, 1, -1, 1, 1)  # a frame-dependent output
            return z.pow(2) * (1 + class_labels.view(-1, 1, 1, 1, 1)) - shift

    model = VideoFusionModel(Squares(), LinearBase())
    lambdas = make_lambdas(FRAMES, [0.3, 0.9, 1.0, 0.0, 0.6])
    z = torch.randn(2, 2, FRAMES, 3, 3, generator=g)
    t, abar = torch.tensor([40, 40]), torch.tensor([0.3, 0.8])
    labels, null, w = torch.tensor([1, 3]), torch.tensor([0, 0]), 1.8
    cond = Condition(class_labels=labels, null_class_labels=null)
    eps = guided_noise_prediction(model, z, t, abar, lambdas, cond, guidance_scale=w)
    base, res = LinearBase(), Squares()
    bu, bc = base(z[:, :, K], t, null), base(z[:, :, K], t, labels)
    bg = bu + w * (bc - bu)
    for i in range(FRAMES):
        lam = float(lambdas[i])
        z_res = z - lam ** 0.5 * (1 - abar).sqrt().view(-1, 1, 1, 1, 1) * bg.unsqueeze(2)
        ru, rc = res(z_res, t, null)[:, :, i], res(z_res, t, labels)[:, :, i]
        rg = ru + w * (rc - ru)
        torch.testing.assert_close(eps[:, :, i], lam ** 0.5 * bg + (1 - lam) ** 0.5 * rg)


# ---- further guided cases, defaults and precision (found by mutation survivors) -----------


class TextOracleBase(LabelledOracleBase):
    """Picks each sample's clip from its text state's first value instead of a label."""

    def forward(self, key_frame, timestep, class_labels=None, encoder_hidden_states=None):
        return super().forward(key_frame, timestep, encoder_hidden_states[:, 0, 0].long())


class TextOracleResidual(LabelledOracleResidual):
    def forward(self, z_res, timestep, class_labels=None, encoder_hidden_states=None):
        return super().forward(z_res, timestep, encoder_hidden_states[:, 0, 0].long())


def test_text_guidance_returns_the_guided_clip():
    scheduler = DDIMScheduler(clip_sample=False)
    clips, lambdas = targets(), make_lambdas(FRAMES, 0.5)

    def abar_of(timestep):
        i = int((scheduler.timesteps == timestep.flatten()[0]).nonzero()[0])
        return alpha_bar_at(scheduler, scheduler.timesteps[i], i)

    model = VideoFusionModel(TextOracleResidual(clips, abar_of, lambdas),
                             TextOracleBase(clips, abar_of))
    states = torch.tensor([1.0, 0.0]).view(2, 1, 1).expand(2, 3, 4)
    condition = Condition(encoder_hidden_states=states,
                          null_encoder_hidden_states=torch.full((2, 3, 4), float(NULL)))
    out = sample(model, scheduler, (2, 2, FRAMES, 4, 4), lambdas,
                 num_inference_steps=20, condition=condition, guidance_scale=1.5,
                 generator=torch.Generator().manual_seed(0))
    expected = clips[NULL] + 1.5 * (clips[[1, 0]] - clips[NULL])
    assert (out - expected).abs().max() < 1e-3


def test_guided_batches_of_three_and_the_guided_baseline():
    lambdas = make_lambdas(FRAMES, 0.5)
    out, expected = guided_oracle_sample(DDIMScheduler(clip_sample=False), lambdas, [0, 1, 0],
                                         2.0, steps=10)
    assert (out - expected).abs().max() < 1e-3
    scheduler = DDIMScheduler(clip_sample=False)
    clips, zeros = targets(), torch.zeros(FRAMES)

    def abar_of(timestep):
        i = int((scheduler.timesteps == timestep.flatten()[0]).nonzero()[0])
        return alpha_bar_at(scheduler, scheduler.timesteps[i], i)

    baseline = VideoFusionModel(LabelledOracleResidual(clips, abar_of, zeros))
    labels = torch.tensor([1, 0])
    out = sample(baseline, scheduler, (2, 2, FRAMES, 4, 4), zeros,
                 num_inference_steps=10, guidance_scale=3.0,
                 condition=Condition(class_labels=labels,
                                     null_class_labels=torch.full_like(labels, NULL)),
                 generator=torch.Generator().manual_seed(0))
    assert (out - (clips[NULL] + 3.0 * (clips[labels] - clips[NULL]))).abs().max() < 1e-3


def test_the_oracle_is_exact_in_float64():
    """In float64 the DDIM oracle returns the clip to ~1e-12: every tensor of the sampler
    follows the requested dtype (a float32 draw or abar would leave ~1e-7)."""
    scheduler = DDIMScheduler(clip_sample=False)
    lambdas = make_lambdas(FRAMES, 0.5)
    clips = targets().double()

    def abar_of(timestep):
        i = int((scheduler.timesteps == timestep.flatten()[0]).nonzero()[0])
        return scheduler.alphas_cumprod.double()[int(scheduler.timesteps[i])]

    model = VideoFusionModel(LabelledOracleResidual(clips, abar_of, lambdas.double()),
                             LabelledOracleBase(clips, abar_of))
    labels = torch.tensor([0, 1])
    out = sample(model, scheduler, (2, 2, FRAMES, 4, 4), lambdas,
                 num_inference_steps=10, condition=Condition(class_labels=labels),
                 dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float64
    assert (out - clips[labels]).abs().max() < 1e-9


def test_defaults_fifty_silent_unguided_deterministic_steps(capsys):
    lambdas = make_lambdas(FRAMES, 0.5)
    seen = []
    kwargs = dict(before_step=lambda i, z: seen.append(i) or z)
    model = VideoFusionModel(LabelledOracleResidual(targets(), lambda t: torch.tensor(0.5),
                                                    lambdas),
                             LabelledOracleBase(targets(), lambda t: torch.tensor(0.5)))
    first = sample(model, DDIMScheduler(), (1, 2, FRAMES, 4, 4), lambdas,
                   condition=Condition(class_labels=torch.tensor([1])),
                   generator=torch.Generator().manual_seed(0), **kwargs)
    assert seen == list(range(50)) and capsys.readouterr().err == ""
    # the 50 is the pipeline's default, which the helper above mirrors
    from conftest import tiny_residual

    from videofusion.pipeline import VideoFusionPipeline
    pipe = VideoFusionPipeline(residual=tiny_residual(), scheduler=DDIMScheduler(), sample_size=8)
    assert pipe.plan(num_frames=FRAMES).num_inference_steps == 50
    # eta defaults to 0 (no fresh noise); eta = 1 draws fresh noise
    again = sample(model, DDIMScheduler(), (1, 2, FRAMES, 4, 4), lambdas,
                   num_inference_steps=50, eta=0.0,
                   condition=Condition(class_labels=torch.tensor([1])),
                   generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(first, again)
    noisy = [sample(model, DDIMScheduler(), (1, 2, FRAMES, 4, 4), lambdas,
                    num_inference_steps=3, eta=1.0,
                    condition=Condition(class_labels=torch.tensor([1])),
                    base_noise=torch.zeros(1, 2, 4, 4), residual_noise=torch.zeros(
                        1, 2, FRAMES, 4, 4),
                    generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    plain = [sample(model, DDIMScheduler(), (1, 2, FRAMES, 4, 4), lambdas,
                    num_inference_steps=3,
                    condition=Condition(class_labels=torch.tensor([1])),
                    base_noise=torch.zeros(1, 2, 4, 4), residual_noise=torch.zeros(
                        1, 2, FRAMES, 4, 4),
                    generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    assert (noisy[0] - plain[0]).abs().max() > 1e-3
    sample(model, DDIMScheduler(), (1, 2, FRAMES, 4, 4), lambdas,
           num_inference_steps=1, progress=True,
           condition=Condition(class_labels=torch.tensor([1])))
    assert "sampling" in capsys.readouterr().err  # a labelled bar when asked for


def test_scheduler_step_defaults_to_no_fresh_noise():
    from videofusion.noise import FreshNoise
    from videofusion.sampling import noise_injecting_step

    scheduler = DDIMScheduler()
    scheduler.set_timesteps(10)
    z = torch.zeros(1, 1, FRAMES, 2, 2)
    fresh_noise = FreshNoise(make_lambdas(FRAMES), torch.Generator().manual_seed(0))
    out = noise_injecting_step(scheduler)(z, scheduler.timesteps[2], z, fresh_noise)
    assert torch.equal(out, torch.zeros_like(out))


def test_guidance_scale_defaults_to_one_pass_without_guidance():
    lambdas = make_lambdas(FRAMES, 0.5)
    clips = targets()
    model = VideoFusionModel(LabelledOracleResidual(clips, lambda t: torch.tensor(0.3), lambdas),
                             LabelledOracleBase(clips, lambda t: torch.tensor(0.3)))
    z = torch.randn(2, 2, FRAMES, 4, 4, generator=torch.Generator().manual_seed(0))
    cond = Condition(class_labels=torch.tensor([0, 1]))  # no null condition: must not guide
    eps = guided_noise_prediction(model, z, torch.tensor([3, 3]), torch.tensor([0.3, 0.3]),
                                  lambdas, cond)
    expected = (z - 0.3 ** 0.5 * clips[[0, 1]]) / 0.7 ** 0.5  # the oracle's exact epsilon
    torch.testing.assert_close(eps, expected, rtol=1e-5, atol=1e-5)


def test_alpha_bar_of_karras_schedulers_comes_from_their_sigmas():
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler(timestep_spacing="linspace")
    scheduler.set_timesteps(7)
    from_index = []
    for i, t in enumerate(scheduler.timesteps):
        expected = 1.0 / (1.0 + scheduler.sigmas[i].double() ** 2)
        torch.testing.assert_close(alpha_bar_at(scheduler, t, i).double(), expected,
                                   rtol=1e-6, atol=0)
        from_index.append(float(scheduler.alphas_cumprod[int(t)]))
    # fractional timesteps: the table lookup would be measurably off
    assert any(abs(a - float(alpha_bar_at(scheduler, t, i))) > 1e-4
               for i, (a, t) in enumerate(zip(from_index, scheduler.timesteps, strict=True)))
    ddim = DDIMScheduler()
    ddim.set_timesteps(5)
    t = ddim.timesteps[1]
    assert alpha_bar_at(ddim, t, 1) == ddim.alphas_cumprod[int(t)]


def test_errors_say_exactly_what_is_wrong():
    from videofusion.sampling import check_key_frame

    with pytest.raises(ValueError, match=r"^classifier-free guidance needs the null condition$"):
        Condition(class_labels=torch.tensor([1])).for_guidance()
    lambdas = make_lambdas(FRAMES, 0.5)
    model = VideoFusionModel(LabelledOracleResidual(targets(), None, lambdas),
                             LabelledOracleBase(targets(), None))
    with pytest.raises(ValueError, match=r"^num_inference_steps must be >= 1, got 0$"):
        sample(model, DDIMScheduler(), (1, 2, FRAMES, 4, 4), lambdas,
               num_inference_steps=0)
    with pytest.raises(ValueError, match=r"shape \(2,\), got \(3,\)"):
        sample(model, DDIMScheduler(), (1, 2, FRAMES, 4, 4), lambdas,
               signal_leak=torch.zeros(3))
    baseline = VideoFusionModel(LabelledOracleResidual(targets(), None, lambdas))
    with pytest.raises(ValueError, match=r"^image-to-video needs a base generator: the VDM "
                                         r"baseline has no base noise for the key frame to "
                                         r"carry$"):
        check_key_frame(baseline, lambdas)
    with pytest.raises(ValueError, match=r"^image-to-video needs lambda = 1 on the key frame"):
        check_key_frame(model, torch.full((FRAMES,), 0.5))
