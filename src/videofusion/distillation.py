"""Distillation of the guided decomposed sampler into a cheaper student (spec §7): progressive
(fewer steps) or guidance (one pass per step instead of two, the sampler kept).

Salimans & Ho ("Progressive Distillation for Fast Sampling of Diffusion Models", ICLR 2022)
halve a deterministic sampler's step count round after round: a student, started as a copy of
its teacher, learns to take in one DDIM step what the teacher takes in two. Meng et al. ("On
Distillation of Guided Diffusion Models", CVPR 2023) fold classifier-free guidance in: the first
teacher is the model guided at a fixed w (a conditional and an unconditional pass of each
network per step, spec §4), and the student predicts the guided epsilon in one conditional
pass. An N-step student then costs N passes of each network, its first teacher 2 x 2N.

For a training clip x, a timestep t of the student's N-step grid and decomposed noise eps
(spec §1), z_t = alpha_t x + sigma_t eps (alpha = sqrt(abar), sigma = sqrt(1 - abar)). The
teacher takes two DDIM steps t -> t' -> t'' with its per-frame epsilon; the target is the clean
clip for which one DDIM step of the student from z_t lands on the teacher's z'':

    xtilde   = (z'' - (sigma''/sigma_t) z_t) / (alpha'' - (sigma''/sigma_t) alpha_t)
    epstilde = (z_t - alpha_t xtilde) / sigma_t

and the student's per-frame epsilon regresses on epstilde as the drawn noise does in spec §3
(``objective.noise_regression``: the base generator keeps learning as an image model). The
grids are diffusers' DDIM ``trailing`` timesteps, which nest (every other point of the 2N grid
is the N grid) and end in a step to abar = 1.

Guidance distillation (``distill_kind: guidance``) is Meng et al.'s first stage alone: at any of
the T timesteps the student's one conditional pass regresses on the teacher's guided epsilon
(spec §4) at the same z_t. It keeps the teacher's sampler, stochastic ones included, and its step
count, at half the passes: what matters where deterministic sampling loses content
(``docs/results.md``, "Few-step sampling"), so that halving steps needs an ODE teacher that is
already below the bar.

Ancestral progressive distillation (``distill_kind: ancestral``, beyond Salimans & Ho, whose
teacher is deterministic) halves a stochastic teacher instead: DDPM, whose fresh noise is what
holds the content where deterministic sampling loses it. The teacher takes two ancestral steps
t -> s -> u of its 2N-step grid, drawing the fresh noise of the first as spec §1 does; the
student, sampled with DDPM at N steps, takes t -> u in one. DDPM's posteriors given x compose
(the reverse process given x is Markov), so with the clean estimate held fixed the teacher's two
steps are the student's one, its fresh noise the two draws combined; the student's clean
estimate that makes the mean of its step land where the teacher's two steps go is

    xtilde = w x2 + (1 - w) x1,   w = c_x(s -> u) / c_x(t -> u)

with x1, x2 the teacher's (clipped) clean estimates at t and at its state after the first step,
and c_x(a -> b) the coefficient of x in the mean of q(z_b | z_a, x) (Ho et al., eq. 7). It is a
weighted mean of the teacher's two estimates, so it stays in the clip range; the student's
epsilon regresses on the epsilon that gives it, (z_t - alpha_t xtilde) / sigma_t. Its grids are
the teacher's own DDPM ``leading`` timesteps, which nest when T // N = 2 (T // 2N).

Sampler states (``distill_sampler_states``, beyond Meng et al.): noised training clips are not
where a guided sampler goes. Guidance pushes its states off the data, so a student that only
ever saw noised clips meets, at sampling, z_t it was never trained on, and that is where the
class-prompted students lost content (``docs/results.md``). The teacher samples the conditions
of ``distill_sampler_clips`` training clips once, with its own sampler and guidance, and every
state z_t it visits is kept (``SamplerStates``); a share of the optimizer steps then regresses
the student on the teacher's guided epsilon at those states instead of at noised clips.

Layout: ``(batch, channels, frames, height, width)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .checkpoint import atomic_directory
from .condition import Condition, Conditioning
from .config import TrainConfig
from .models.videofusion import VideoFusionModel
from .noise import decomposed_noise
from .objective import Loss, noise_regression, noised_clips
from .pipeline import SamplingPlan, VideoFusionPipeline, load_pipeline
from .sampling import guided_noise_prediction
from .sharding import shard_like

# The DDIM every grid and every distilled folder uses: nested timesteps, the last step to x_0.
DDIM_GRID = {"timestep_spacing": "trailing", "set_alpha_to_one": True, "steps_offset": 0}
ROUNDS_DIR = "rounds"  # output_dir/rounds/round-R: round R's student, round R + 1's teacher
SAMPLER_STATES = "sampler_states/states.safetensors"  # in output_dir: the recorded states

# The teacher's epsilon of clips z_t at per-clip timesteps and abar: (z_t, t, abar) -> eps.
Teacher = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def step_grid(num_train_timesteps: int, steps: int) -> torch.Tensor:
    """The timesteps an N-step DDIM sampler visits and its clean end, ``(steps + 1,)``: diffusers'
    ``trailing`` spacing (999, 749, 499, 249 for 4 steps of 1000), then -1 (abar = 1)."""
    scheduler = DDIMScheduler(num_train_timesteps=num_train_timesteps, **DDIM_GRID)
    scheduler.set_timesteps(steps)
    return torch.cat([scheduler.timesteps, torch.tensor([-1])])


def alpha_bar_at(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """abar at ``timesteps`` (any shape), 1 at the grid's clean end -1."""
    alpha_bar = alphas_cumprod.to(timesteps.device)[timesteps.clamp(min=0)]
    return torch.where(timesteps >= 0, alpha_bar, torch.ones_like(alpha_bar))


def clean_estimate(z: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor,
                   clip: float | None) -> torch.Tensor:
    """x = (z - sigma eps) / alpha for clips ``z`` ``(B, C, F, H, W)``, clamped to [-clip, clip]
    as DDPM's ``clip_sample`` does (``None``: unclamped)."""
    a = per_clip(alpha_bar, z)
    x = (z - (1 - a).sqrt() * eps) / a.sqrt()
    return x if clip is None else x.clamp(-clip, clip)


def ddim_step(z: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor,
              alpha_bar_next: torch.Tensor, clip: float | None = None) -> torch.Tensor:
    """One deterministic DDIM step (eta 0) of clips ``z`` ``(B, C, F, H, W)`` from abar to
    abar_next, each ``(B,)``: x0 = (z - sigma eps) / alpha, clamped to [-clip, clip] with eps
    re-derived from it, as the sampler's DDIM does with ``clip_sample``
    (``sampling.noise_injecting_step``), then z_next = alpha_next x0 + sigma_next eps."""
    x0 = clean_estimate(z, eps, alpha_bar, clip)
    if clip is not None:
        a = per_clip(alpha_bar, z)
        eps = (z - a.sqrt() * x0) / (1 - a).sqrt()
    a_next = per_clip(alpha_bar_next, z)
    return a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps


def teacher_two_steps(teacher: Teacher, z_t: torch.Tensor, timesteps: torch.Tensor,
                      alpha_bars: torch.Tensor, clip: float | None = None) -> torch.Tensor:
    """The teacher's z'' from z_t: two DDIM steps through ``timesteps`` and their ``alpha_bars``,
    each ``(3, B)`` (t, t', t'' per clip), with the teacher's epsilon at t and at t'."""
    z = z_t
    for i in range(2):
        eps = teacher(z, timesteps[i], alpha_bars[i])
        z = ddim_step(z, eps, alpha_bars[i], alpha_bars[i + 1], clip)
    return z


def distillation_target(z_t: torch.Tensor, z_teacher: torch.Tensor, alpha_bar: torch.Tensor,
                        alpha_bar_teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(xtilde, epstilde)``: the clean clips and the noise for which one DDIM step from z_t at
    abar lands on the teacher's z'' at abar'' (Salimans & Ho, Algorithm 2); abar, abar'' ``(B,)``.

    At the clean end (abar'' = 1) xtilde is the teacher's z'' itself."""
    a, s = per_clip(alpha_bar, z_t).sqrt(), (1 - per_clip(alpha_bar, z_t)).sqrt()
    a2 = per_clip(alpha_bar_teacher, z_t).sqrt()
    s2 = (1 - per_clip(alpha_bar_teacher, z_t)).sqrt()
    x = (z_teacher - (s2 / s) * z_t) / (a2 - (s2 / s) * a)
    return x, (z_t - a * x) / s


def distillation_loss(
    student,
    teacher: Teacher,
    video: torch.Tensor,
    grid: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    lambdas: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    clip: float | None = None,
    weighting: str = "truncated-snr",
    snr_gamma: float = 5.0,
    **student_kwargs,
) -> Loss:
    """The student's loss on clips ``video`` ``(B, C, F, H, W)`` in the model's space.

    ``grid`` ``(2N + 1,)`` is the teacher's (``step_grid`` of 2N steps); each clip gets one of
    its N student points, the teacher's two steps from there (without gradients) and the student
    regressed on epstilde, weighted by ``weighting`` (``objective.loss_weights``). The student
    is a ``VideoFusionModel`` (or its wrapper); ``student_kwargs`` (its condition,
    ``stop_gradient``, ``freeze_base``) go to it as in ``diffusion_loss``.
    """
    batch = video.shape[0]
    start = 2 * torch.randint(0, (grid.numel() - 1) // 2, (batch,), generator=generator,
                              device=grid.device)
    timesteps = torch.stack([grid[start], grid[start + 1], grid[start + 2]]).to(video.device)
    alpha_bars = alpha_bar_at(alphas_cumprod, timesteps).to(video.dtype)  # (3, B): t, t', t''
    noise = decomposed_noise(video.shape, lambdas, generator, device=video.device,
                             dtype=video.dtype)
    a = per_clip(alpha_bars[0], video)
    z_t = a.sqrt() * video + (1 - a).sqrt() * noise
    with torch.no_grad():
        z_teacher = teacher_two_steps(teacher, z_t, timesteps, alpha_bars, clip)
        _, target = distillation_target(z_t, z_teacher, alpha_bars[0], alpha_bars[2])
    prediction = student(z_t, timesteps[0], alpha_bars[0], lambdas, **student_kwargs)
    return noise_regression(prediction, target, alpha_bars[0], weighting, snr_gamma)


def ddpm_posterior(alpha_bar: torch.Tensor, alpha_bar_next: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DDPM's posterior q(z_s | z_t, x) from abar_t to abar_s >= abar_t, each ``(B,)``: the
    coefficients of x and of z_t in its mean, and its variance (Ho et al., eq. 7, between any
    two levels; the variance diffusers' DDPM calls ``fixed_small``)."""
    beta = 1 - alpha_bar / alpha_bar_next
    c_x = alpha_bar_next.sqrt() * beta / (1 - alpha_bar)
    c_z = (alpha_bar / alpha_bar_next).sqrt() * (1 - alpha_bar_next) / (1 - alpha_bar)
    return c_x, c_z, (1 - alpha_bar_next) / (1 - alpha_bar) * beta


def ancestral_target(teacher: Teacher, z_t: torch.Tensor, timesteps: torch.Tensor,
                     alpha_bars: torch.Tensor, fresh_noise: torch.Tensor,
                     clip: float | None = None) -> torch.Tensor:
    """xtilde of clips ``z_t`` ``(B, C, F, H, W)``: the student's clean estimate for which one
    DDPM step t -> u has the mean of the teacher's two, t -> s -> u (module docstring).

    ``timesteps`` and ``alpha_bars`` ``(3, B)`` hold t, s, u per clip, -1 and 1 for the clean
    end; ``fresh_noise`` is the decomposed draw of the teacher's first step (spec §1). A clip
    whose first step already ends clean (s = -1) takes the teacher's one estimate."""
    x1 = clean_estimate(z_t, teacher(z_t, timesteps[0], alpha_bars[0]), alpha_bars[0], clip)
    c_x, c_z, variance = ddpm_posterior(alpha_bars[0], alpha_bars[1])
    z_s = (per_clip(c_x, z_t) * x1 + per_clip(c_z, z_t) * z_t
           + per_clip(variance.sqrt(), z_t) * fresh_noise)
    ends = alpha_bars[1] == 1  # the teacher's first step reached x: no second one
    t_s = torch.where(ends, timesteps[0], timesteps[1])  # a level the teacher knows, unused
    a_s = torch.where(ends, alpha_bars[0], alpha_bars[1])
    x2 = clean_estimate(z_s, teacher(z_s, t_s, a_s), a_s, clip)
    w = ddpm_posterior(a_s, alpha_bars[2])[0] / ddpm_posterior(alpha_bars[0], alpha_bars[2])[0]
    w = torch.where(ends, torch.zeros_like(w), w)
    return per_clip(w, z_t) * x2 + per_clip(1 - w, z_t) * x1


def ancestral_grid(scheduler_config, num_train_timesteps: int, steps: int) -> torch.Tensor:
    """The N-step grid of a DDPM ``leading`` sampler, ``(steps,)``, which the student is sampled
    on and the teacher's 2N-step grid nests (``TrainConfig`` checks T // N = 2 (T // 2N))."""
    scheduler = DDPMScheduler.from_config(scheduler_config,
                                          num_train_timesteps=num_train_timesteps)
    scheduler.set_timesteps(steps)
    return scheduler.timesteps.clone()


def ancestral_path(timesteps: torch.Tensor, half_step: int) -> torch.Tensor:
    """t, s, u ``(3, B)`` of student timesteps ``(B,)``: the teacher's two steps of
    ``half_step`` (T // 2N) timesteps each, -1 (abar = 1) once they pass 0."""
    path = torch.stack([timesteps, timesteps - half_step, timesteps - 2 * half_step])
    return torch.where(path < 0, torch.full_like(path, -1), path)


def ancestral_loss(student, teacher: Teacher, z_t: torch.Tensor, timesteps: torch.Tensor,
                   half_step: int, alphas_cumprod: torch.Tensor, lambdas: torch.Tensor, *,
                   generator: torch.Generator | None, clip: float | None, weighting: str,
                   snr_gamma: float, **student_kwargs) -> Loss:
    """The student's loss at clips ``z_t`` ``(B, C, F, H, W)`` of student ``timesteps`` ``(B,)``:
    its epsilon regressed on the one whose clean estimate is :func:`ancestral_target`'s."""
    path = ancestral_path(timesteps, half_step)
    alpha_bars = alpha_bar_at(alphas_cumprod, path).to(z_t.dtype)  # (3, B)
    fresh = decomposed_noise(z_t.shape, lambdas, generator, device=z_t.device,
                             dtype=z_t.dtype)
    with torch.no_grad():
        x = ancestral_target(teacher, z_t, path, alpha_bars, fresh, clip)
        a = per_clip(alpha_bars[0], z_t)
        target = (z_t - a.sqrt() * x) / (1 - a).sqrt()
    prediction = student(z_t, path[0], alpha_bars[0], lambdas, **student_kwargs)
    return noise_regression(prediction, target, alpha_bars[0], weighting, snr_gamma)


def ancestral_distillation_loss(student, teacher: Teacher, video: torch.Tensor,
                                grid: torch.Tensor, half_step: int,
                                alphas_cumprod: torch.Tensor, lambdas: torch.Tensor, *,
                                generator: torch.Generator | None, clip: float | None,
                                weighting: str, snr_gamma: float, **student_kwargs) -> Loss:
    """:func:`ancestral_loss` at training clips ``video`` ``(B, C, F, H, W)`` noised (spec §1) to
    a point of the student's ``grid`` ``(N,)`` drawn per clip."""
    pick = torch.randint(0, grid.numel(), (video.shape[0],), generator=generator,
                         device=grid.device)
    timesteps = grid[pick].to(video.device)
    a = per_clip(alpha_bar_at(alphas_cumprod, timesteps).to(video.dtype), video)
    noise = decomposed_noise(video.shape, lambdas, generator, device=video.device,
                             dtype=video.dtype)
    z_t = a.sqrt() * video + (1 - a).sqrt() * noise
    return ancestral_loss(student, teacher, z_t, timesteps, half_step, alphas_cumprod, lambdas,
                          generator=generator, clip=clip, weighting=weighting,
                          snr_gamma=snr_gamma, **student_kwargs)


def guidance_distillation_loss(
    student,
    teacher: Teacher,
    video: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    lambdas: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    weighting: str = "epsilon",
    snr_gamma: float = 5.0,
    temporal_weight: float = 0.0,
    **student_kwargs,
) -> Loss:
    """The student's loss on clips ``video`` ``(B, C, F, H, W)``: at a timestep drawn from all T
    per clip, its epsilon regresses on the (guided) teacher's at the same decomposed z_t,
    weighted by ``weighting``; ``student_kwargs`` as in :func:`distillation_loss`."""
    z_t, timesteps, alpha_bar, _ = noised_clips(video, alphas_cumprod, lambdas, generator)
    return guidance_regression(student, teacher, z_t, timesteps, alpha_bar, lambdas,
                               weighting=weighting, snr_gamma=snr_gamma,
                               temporal_weight=temporal_weight, **student_kwargs)


def guidance_regression(student, teacher: Teacher, z_t: torch.Tensor, timesteps: torch.Tensor,
                        alpha_bar: torch.Tensor, lambdas: torch.Tensor, *, weighting: str,
                        snr_gamma: float, temporal_weight: float, **student_kwargs) -> Loss:
    """The student's epsilon at states ``z_t`` ``(B, C, F, H, W)`` (timesteps and abar ``(B,)``)
    regressed on the (guided) teacher's there: noised clips or a sampler's own states, with
    ``temporal_weight`` on its error in each frame-to-frame change (``noise_regression``)."""
    with torch.no_grad():
        target = teacher(z_t, timesteps, alpha_bar)
    prediction = student(z_t, timesteps, alpha_bar, lambdas, **student_kwargs)
    return noise_regression(prediction, target, alpha_bar, weighting, snr_gamma, temporal_weight)


@dataclasses.dataclass
class SamplerStates:
    """The states z_t a guided teacher's sampler visited, with the conditions it sampled:
    ``states`` ``(N, S, C, F, H, W)`` (float16: read only as training inputs), ``timesteps``
    ``(S,)`` of the sampler's S steps, ``class_labels`` ``(N,)`` and / or ``text_states``
    ``(N, tokens, dim)``, null where the training clip's condition was dropped."""

    states: torch.Tensor
    timesteps: torch.Tensor
    class_labels: torch.Tensor | None = None
    text_states: torch.Tensor | None = None

    def draw(self, batch: int, generator: torch.Generator, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor, Condition]:
        """``batch`` states drawn uniformly over clips and steps: ``(z_t (B, C, F, H, W),
        timesteps (B,), their conditions)``."""
        clips, steps = self.states.shape[:2]
        clip = torch.randint(0, clips, (batch,), generator=generator, device=generator.device)
        step = torch.randint(0, steps, (batch,), generator=generator, device=generator.device)
        clip, step = clip.cpu(), step.cpu()

        def pick(values):
            return None if values is None else values[clip].to(device)

        z_t = self.states[clip, step].to(device, torch.float32)
        return z_t, self.timesteps[step].to(device), Condition(pick(self.class_labels),
                                                               pick(self.text_states))

    def at(self, timesteps: torch.Tensor) -> SamplerStates:
        """The states at those of the recorded steps whose timestep is in ``timesteps``."""
        keep = torch.isin(self.timesteps, timesteps.to(self.timesteps.device))
        if not keep.any():
            raise ValueError(f"no recorded state is at the timesteps {timesteps.tolist()}")
        return dataclasses.replace(self, states=self.states[:, keep],
                                   timesteps=self.timesteps[keep])

    def save(self, path: Path, about: dict[str, str]) -> None:
        """Written whole or not at all, ``about`` (what recorded them) as the file's metadata."""
        tensors = {"states": self.states, "timesteps": self.timesteps}
        tensors.update({name: value for name, value in (("class_labels", self.class_labels),
                                                        ("text_states", self.text_states))
                        if value is not None})
        with atomic_directory(path.parent) as folder:
            save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, folder / path.name,
                      metadata=about)

    @classmethod
    def load(cls, path: Path, about: dict[str, str]) -> SamplerStates | None:
        """The states at ``path`` if ``about`` says they were recorded as now; ``None`` if there
        are none or others (a safetensors file: no pickle is read)."""
        if not path.is_file():
            return None
        with safe_open(path, framework="pt") as handle:
            if handle.metadata() != about:
                return None
            found = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        return cls(found["states"], found["timesteps"], found.get("class_labels"),
                   found.get("text_states"))


@torch.no_grad()
def record_sampler_states(pipe: VideoFusionPipeline, condition: Condition, lambdas: torch.Tensor,
                          guidance_scale: float, seed: int, steps: int, chunk: int = 16,
                          progress: bool = False) -> SamplerStates:
    """Sample one video per clip of ``condition`` (its null values filled in, as
    ``Distillation.with_null`` does) with ``pipe``'s own sampler and signal leak at ``steps``
    and ``guidance_scale``, keeping every state z_t the sampler denoises. Chunk c draws its
    noise from seed ``seed + c``."""
    count = len(next(v for v in (condition.class_labels, condition.encoder_hidden_states)
                     if v is not None))
    height, width = pipe.check_inputs()
    factor = pipe.vae_scale_factor
    recorded = []
    starts = range(0, count, chunk)
    for c, start in enumerate(tqdm(starts, desc="recording the teacher's sampler states",
                                   disable=not progress)):  # pragma: no mutate
        part = Condition(*(None if v is None else v[start:start + chunk].to(pipe.device)
                           for v in (getattr(condition, f.name)
                                     for f in dataclasses.fields(condition))))
        batch = len(part.class_labels if part.class_labels is not None
                    else part.encoder_hidden_states)
        shape = (batch, pipe.residual.config.out_channels, len(lambdas), height // factor,
                 width // factor)
        plan = SamplingPlan(height, width, shape, lambdas, part, guidance_scale, steps,
                            signal_leak=pipe.signal_leak())
        latents, fresh_noise = pipe.prepare_latents(plan, torch.Generator().manual_seed(seed + c))
        visited: list[torch.Tensor] = []  # S x (B, C, F, H, W)
        pipe.denoise(plan, latents, fresh_noise, before_step=partial(kept, visited),
                     progress=False)
        recorded.append(torch.stack(visited, dim=1))  # (B, S, C, F, H, W)
    return SamplerStates(torch.cat(recorded), pipe.scheduler.timesteps.cpu().clone(),
                         None if condition.class_labels is None else condition.class_labels.cpu(),
                         None if condition.encoder_hidden_states is None
                         else condition.encoder_hidden_states.cpu().float())


def kept(visited: list[torch.Tensor], _: int, z_t: torch.Tensor) -> torch.Tensor:
    """A sampler's ``before_step`` hook that keeps each state it is shown, unchanged."""
    visited.append(z_t.to("cpu", torch.float16))
    return z_t


def condition_digest(condition: Condition) -> str:
    """A short fingerprint of a condition's values, to tell recorded states apart."""
    digest = hashlib.sha256()
    for value in condition.plain().values():
        if value is not None:
            digest.update(value.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()[:16]


def per_clip(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B,)`` reshaped to broadcast against ``(B, C, F, H, W)``."""
    return values.to(like).view(-1, 1, 1, 1, 1)


class Distillation:
    """The rounds of a distillation run (``TrainConfig.distill_*``): each round's teacher, the
    student's loss at an optimizer step, and the settings a round's student is saved with.

    Round r trains optimizer steps [r S, (r + 1) S), S = ``distill_steps_per_round``, for a
    student of ``distill_rounds[r]`` steps. Round 0's teacher is ``distill_from`` guided at w;
    round r's is round r - 1's student, saved in ``round_dir(r - 1)`` when that round ended and
    read back from there, so a run resumed anywhere rebuilds it exactly. That student already
    holds the guidance: it teaches with one conditional pass. Guidance distillation has one
    round, whose student keeps ``distill_from``'s scheduler and step count.
    """

    def __init__(self, config: TrainConfig, output: Path, student: VideoFusionModel,
                 alphas_cumprod: torch.Tensor, lambdas: torch.Tensor, captions=None):
        self.config, self.output = config, output
        self.alphas_cumprod, self.lambdas, self.captions = alphas_cumprod, lambdas, captions
        self.device = alphas_cumprod.device
        first = load_pipeline(config.distill_from)
        check_teacher(first, config)
        self.guidance = (first.default_guidance if config.distill_guidance is None
                         else config.distill_guidance)
        # what every round samples and is saved with: the teacher's schedule and clipping
        self.scheduler = DDIMScheduler.from_config(first.scheduler.config, **DDIM_GRID)
        clips = self.scheduler.config.clip_sample
        self.clip = self.scheduler.config.clip_sample_range if clips else None
        self.progressive = config.distill_kind == "progressive"
        self.ancestral = config.distill_kind == "ancestral"
        timesteps = config.num_train_timesteps
        if self.progressive:  # the teacher's 2N-step DDIM grids
            self.grids = [step_grid(timesteps, 2 * n).to(self.device)
                          for n in config.distill_rounds]
        elif self.ancestral:  # the student's N-step DDPM grids
            self.grids = [ancestral_grid(first.scheduler.config, timesteps, n).to(self.device)
                          for n in config.distill_rounds]
        else:
            self.grids = []
        # what a guidance student keeps of its teacher: the sampler and its step count
        self.own_scheduler = type(first.scheduler).from_config(first.scheduler.config)
        self.own_steps = first.config.get("default_inference_steps")
        self.conditioning = Conditioning.of(student.residual)
        self._teacher = (0, frozen(first, self.device))
        self.first = first
        self.sampler_states: SamplerStates | None = None

    def round_of(self, step: int) -> int:
        """The round that trains optimizer step ``step`` (0-based)."""
        return min(step // self.config.distill_steps_per_round,
                   self.config.distill_round_count - 1)

    def round_ends(self, step: int) -> bool:
        """Whether ``step`` optimizer steps finish a round that another one follows."""
        return step % self.config.distill_steps_per_round == 0 and \
            0 < step < self.config.total_steps

    def round_dir(self, round_: int) -> Path:
        return self.output / ROUNDS_DIR / f"round-{round_}"

    def teacher(self, round_: int) -> VideoFusionModel:
        """Round ``round_``'s teacher, frozen, read once per round."""
        if self._teacher[0] != round_:
            folder = self.round_dir(round_ - 1)
            if not (folder / "model_index.json").is_file():
                raise FileNotFoundError(f"the teacher of distillation round {round_}, {folder}, "
                                        "is missing: resume from a checkpoint before round "
                                        f"{round_ - 1} ended")
            self._teacher = (round_, frozen(load_pipeline(folder), self.device))
        return self._teacher[1]

    @torch.no_grad()
    def start_round(self, student: VideoFusionModel, step: int) -> None:
        """The student of the round that starts at ``step`` begins as its teacher's copy (each
        weight cut as the student's is: this process's slice where FSDP2 sharded it)."""
        weights = self.teacher(self.round_of(step)).state_dict()
        for name, tensor in (*student.named_parameters(), *student.named_buffers()):
            tensor.copy_(shard_like(weights[name], tensor))

    def loss(self, student, video: torch.Tensor, condition: Condition, step: int,
             generator: torch.Generator) -> Loss:
        """The loss of optimizer step ``step`` on clips ``video`` ``(B, C, F, H, W)`` with the
        batch's (dropped as configured) ``condition``: the student learns the paths it is
        sampled with, the teacher guides each clip's condition against the null one."""
        config, round_ = self.config, self.round_of(step)
        at_states = self.uses_sampler_states(generator)
        if at_states:  # the clips and their conditions are recorded states instead
            z_t, timesteps, condition = self.sampler_states.draw(video.shape[0], generator,
                                                                 video.device)
        teacher = partial(guided_noise_prediction, self.teacher(round_), lambdas=self.lambdas,
                          condition=self.with_null(condition),
                          guidance_scale=self.guidance if round_ == 0 else 1.0)
        student_kwargs = {"stop_gradient": config.stop_gradient,
                          "freeze_base": config.freeze_base, **condition.plain()}
        if at_states:
            return guidance_regression(
                student, teacher, z_t, timesteps,
                alpha_bar_at(self.alphas_cumprod, timesteps).to(z_t), self.lambdas,
                weighting=config.distill_weighting, snr_gamma=config.snr_gamma,
                temporal_weight=config.distill_temporal_weight, **student_kwargs)
        if self.ancestral:
            settings = {"generator": generator, "clip": self.clip,
                        "weighting": config.distill_weighting, "snr_gamma": config.snr_gamma,
                        **student_kwargs}
            half_step = config.num_train_timesteps // (2 * config.distill_rounds[round_])
            if at_states:
                return ancestral_loss(student, teacher, z_t, timesteps, half_step,
                                      self.alphas_cumprod, self.lambdas, **settings)
            return ancestral_distillation_loss(student, teacher, video, self.grids[round_],
                                               half_step, self.alphas_cumprod, self.lambdas,
                                               **settings)
        if not self.progressive:
            return guidance_distillation_loss(
                student, teacher, video, self.alphas_cumprod, self.lambdas, generator=generator,
                weighting=config.distill_weighting, snr_gamma=config.snr_gamma,
                temporal_weight=config.distill_temporal_weight, **student_kwargs)
        return distillation_loss(
            student, teacher, video, self.grids[round_], self.alphas_cumprod, self.lambdas,
            generator=generator, clip=self.clip, weighting=config.distill_weighting,
            snr_gamma=config.snr_gamma, **student_kwargs)

    def uses_sampler_states(self, generator: torch.Generator) -> bool:
        """Whether this shard trains on recorded sampler states (odds
        ``distill_sampler_states``); draws from ``generator`` only when they are on."""
        share = self.config.distill_sampler_states
        if not share:
            return False
        if self.sampler_states is None:
            raise RuntimeError("distill_sampler_states is on but no states were prepared "
                               "(Distillation.prepare_sampler_states)")
        return bool(torch.rand((), generator=generator, device=generator.device) < share)

    def prepare_sampler_states(self, condition: Condition, write: bool = True) -> None:
        """The states the teacher's sampler visits for ``condition`` (one per training clip,
        dropped as configured): read back from the run folder if recorded there for the same
        teacher, guidance and conditions, else recorded now (minutes) and, with ``write``,
        saved, so that a resumed run trains on the same states."""
        path = self.output / SAMPLER_STATES
        # an ancestral student learns the teacher's sampler at twice its steps
        steps = 2 * self.config.distill_rounds[0] if self.ancestral else self.first.default_steps
        about = {"teacher": str(Path(self.config.distill_from).resolve()),
                 "guidance_scale": repr(self.guidance),
                 "scheduler": type(self.first.scheduler).__name__,
                 "steps": str(steps), "seed": str(self.config.seed),
                 "conditions": condition_digest(condition)}
        states = SamplerStates.load(path, about)
        if states is None:
            states = record_sampler_states(self.first, self.with_null(condition), self.lambdas,
                                           self.guidance, self.config.seed, steps=steps,
                                           progress=write)
            if write:
                states.save(path, about)
        if self.ancestral:  # the states at the student's own timesteps
            states = states.at(self.grids[0])
        self.sampler_states = states

    def with_null(self, condition: Condition) -> Condition:
        """``condition`` with the null label and the empty prompt's states that guidance pairs
        it with (spec §4), as the pipeline samples."""
        labels, states = condition.class_labels, condition.encoder_hidden_states
        null_labels = None if labels is None else torch.full_like(
            labels, self.conditioning.null_class_label)
        null_states = None if states is None else self.captions([""]).expand_as(states)
        return Condition(labels, states, null_labels, null_states)

    def pipeline_settings(self, step: int) -> dict:
        """What the student after ``step`` optimizer steps is saved with: its round's DDIM, N
        steps and guidance 1 by default, the folded-in guidance recorded; a guidance student
        its teacher's scheduler and step count (no ``distilled_steps``)."""
        own = type(self.own_scheduler).from_config(self.own_scheduler.config)
        if not (self.progressive or self.ancestral):
            return {"scheduler": own,
                    "default_inference_steps": self.own_steps, "default_guidance_scale": 1.0,
                    "distilled_guidance_scale": self.guidance, "distilled_steps": None}
        steps = self.config.distill_rounds[self.round_of(max(step - 1, 0))]
        return {"scheduler": own if self.ancestral else DDIMScheduler.from_config(
                    self.scheduler.config),
                "default_inference_steps": steps, "default_guidance_scale": 1.0,
                "distilled_guidance_scale": self.guidance, "distilled_steps": steps}

    def preview_config(self, step: int) -> TrainConfig:
        """The run's config with the preview samples' settings of the student at ``step``."""
        steps = self.pipeline_settings(step)["default_inference_steps"] or self.config.sample_steps
        return dataclasses.replace(self.config, sample_steps=steps, sample_guidance=1.0)


def frozen(pipe: VideoFusionPipeline, device: torch.device) -> VideoFusionModel:
    """A pipeline's noise predictor as a teacher: on ``device``, evaluation mode, no gradients."""
    return pipe.model.to(device).eval().requires_grad_(False)


def check_teacher(pipe: VideoFusionPipeline, config: TrainConfig) -> None:
    """Refuse a ``distill_from`` folder that the config's student cannot copy or sample like."""
    folder, recorded = config.distill_from, pipe.config
    lambda_ = 0.0 if config.model == "vdm" else config.lambda_
    residual_input, key_frame_correction = config.key_frame_settings
    for name, theirs, ours in (
            ("residual_input", recorded.residual_input, residual_input),
            ("key_frame_correction", recorded.key_frame_correction, key_frame_correction),
            ("lambda", recorded.default_lambda, lambda_),
            ("resolution", recorded.sample_size, config.resolution),
            ("vae", pipe.vae is not None, config.vae is not None)):
        if theirs != ours:
            raise ValueError(f"--distill-from: {folder} has {name} {theirs!r}, the config "
                             f"{ours!r}: the student is the teacher's copy")
    scheduler = pipe.scheduler.config
    if scheduler.get("prediction_type", "epsilon") != "epsilon" or scheduler.get("thresholding"):
        raise ValueError(f"--distill-from: {folder}'s scheduler must predict epsilon without "
                         "dynamic thresholding (the teacher's DDIM steps do neither otherwise)")
    if config.distill_kind == "ancestral" and not (
            isinstance(pipe.scheduler, DDPMScheduler)
            and scheduler.get("timestep_spacing") == "leading"
            and scheduler.get("variance_type") == "fixed_small"):
        raise ValueError(f"--distill-kind ancestral: {folder}'s scheduler must be DDPM with "
                         "'leading' timesteps and 'fixed_small' variance (the posterior whose "
                         "steps compose), got " + type(pipe.scheduler).__name__)
