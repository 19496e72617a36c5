"""``TrainConfig``: every setting of a training run, from defaults, a YAML file and flags.

Precedence, lowest first: the defaults below, the run's saved ``config.yaml`` (only with
``resume``), a ``--config`` YAML file, command-line flags. The resolved config is written next to
the checkpoints so that a run can be resumed or reproduced from its folder alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field, fields
from itertools import pairwise
from pathlib import Path
from typing import Any

import yaml

from .choices import (
    BETA_SCHEDULES,
    CONDITIONS,
    DISTILL_KINDS,
    LOSS_WEIGHTINGS,
    LR_SCHEDULERS,
    MIXED_PRECISION,
    MODEL_KINDS,
    RESIDUAL_INPUTS,
)
from .safety import finite_float

# Settings of one invocation, not of the run: never saved, never read back on resume.
RUNTIME_FIELDS = ("resume", "stop_at_step", "raw_weights", "overwrite")
# Settings that may change when a run is resumed: how long, how often, how visibly and with how
# much memory it runs, never the model, the data or the objective (docs/training.md, "Safety").
# ema_decay may change only from 0, which turns the EMA on; the one round of a guidance
# distillation may lengthen (distill_steps_per_round: its max_steps).
RESUMABLE = ("max_steps", "output_dir", "num_workers", "vae_slice", "latent_cache",
             "gradient_checkpointing", "mixed_precision", "checkpoint_every",
             "checkpoints_total_limit", "sample_every", "sample_num", "sample_steps",
             "sample_guidance", "log_every", "max_nonfinite_steps")
# Upper bounds that keep a typo from asking the allocator for terabytes.
MAX_FRAMES, MAX_RESOLUTION, MAX_BATCH = 1024, 4096, 4096
# YAML keys that are Python keywords.
ALIASES = {"lambda": "lambda_"}


def setting(default: Any = dataclasses.MISSING, help: str | None = None, *,
            factory: Any = dataclasses.MISSING, choices: tuple[str, ...] | None = None,
            group: str | None = None, flags: tuple[str, ...] | None = None,
            flag: bool = True) -> Any:
    """A ``TrainConfig`` field and how ``videofusion train`` offers it: ``help``, ``choices``,
    ``flags`` (default ``--field-name``), ``group`` (this field starts a ``--help`` section that
    runs to the next one), or ``flag=False`` for a setting of YAML files only."""
    metadata = {"help": help, "choices": choices, "group": group, "flags": flags, "flag": flag}
    return field(default=default, default_factory=factory, metadata=metadata)



@dataclass
class TrainConfig:
    """One training run (spec §3). Step counts are optimizer steps; ``batch_size`` is per
    process, so the global batch is ``batch_size * processes * gradient_accumulation_steps``.

    Each field is a ``videofusion train`` flag (:func:`add_config_arguments`); its ``setting``
    carries the flag's help, choices and ``--help`` section."""

    # data
    data: str = setting("moving-digits", "'moving-digits' or a folder of videos", group="data")
    frames: int = setting(16, "frames per clip (>= 2)")
    resolution: int = setting(32, "clip side in pixels")
    channels: int = setting(3, "1 (grey) or 3 (colour)")
    data_options: dict[str, Any] = setting(factory=dict, flag=False)  # YAML only
    num_workers: int = setting(0, "DataLoader worker processes")
    # latent space: an AutoencoderKL folder (or a pipeline folder with vae/); None = pixels
    vae: str | None = setting(None, "train in latent space: an AutoencoderKL folder or a folder "
                                    "with vae/ (Stable Diffusion, 'videofusion train-vae' output)")
    vae_slice: int = setting(8, "frames per VAE encode call (memory bound)")
    # the VAE's latents of the training set, encoded once (videofusion.latent_cache)
    latent_cache: str | None = setting(None, "with --vae: read the clips' latents from this "
                                             "folder, each encoded once (missing, stale or "
                                             "corrupt entries are encoded before the first "
                                             "step; 'videofusion data cache-latents' builds it "
                                             "ahead)")
    # model
    model: str = setting("videofusion", choices=MODEL_KINDS, group="model")
    lambda_: float = setting(0.5, "share of each frame's noise common to the clip (spec §1), "
                                  "in [0, 1]")
    condition: str = setting("none", "class+text: both, each dropped independently (either "
                                     "alone at sampling)", choices=CONDITIONS)
    # With model vdm these two describe the VideoFusion model the baseline is matched to
    # (key_frame_settings): the baseline has no key frame to see or correct
    residual_input: str = setting("paper", "what the residual generator sees (spec §2); model "
                                           "vdm: only sizes the VideoFusion model it is "
                                           "matched to", choices=RESIDUAL_INPUTS)
    key_frame_correction: bool = setting(False, "beyond the paper: the key frame's prediction "
                                                "adds the residual generator's correction, "
                                                "learnt from the whole clip (spec §7); "
                                                "ignored by model vdm (no key frame)")
    base_channels: list[int] = setting(factory=lambda: [32, 64, 64], help="e.g. 32,64,64")
    residual_channels: list[int] = setting(factory=lambda: [16, 32, 64], help="e.g. 16,32,64")
    layers_per_block: int = setting(1)
    gradient_checkpointing: bool = setting(False)
    # None = the offline MiniLM encoder
    text_encoder: str | None = setting(None, "a CLIP text encoder folder (or one with "
                                             "text_encoder/ + tokenizer/) for text conditioning; "
                                             "default: the offline MiniLM encoder")
    # the two stages (spec §3)
    base_pretrain_steps: int = setting(0, "stage 1: image-diffusion steps of the base generator "
                                          "on single frames", group="stages (spec §3)")
    image_frames_per_clip: int = setting(1, "stage 1: frames per clip in the image batch "
                                            "(default 1)")
    # objective.loss_weights
    loss_weighting: str = setting("epsilon", "weighting over timesteps, both stages (default "
                                             "epsilon: spec §3)", choices=LOSS_WEIGHTINGS)
    snr_gamma: float = setting(5.0, "the cap of min-snr and v weighting (default 5)")
    base_from: str | None = setting(None, "stage 1 instead: a pretrained diffusers image UNet "
                                          "folder")
    base_from_scratch: bool = setting(False, "ablation: no stage 1, the base generator starts "
                                             "random")
    init_from: str | None = setting(None, "fine-tune: a VideoFusionPipeline folder (e.g. a run's "
                                          "pipeline/) whose networks start the run; the config "
                                          "must build the same networks")
    freeze_base: bool = setting(False, "ablation: the base generator gets no gradient in stage 2")
    stop_gradient: bool = setting(True, "ablation: non-key frames also train the base generator")
    base_teacher_forcing: float = setting(0.0, "beyond the paper: the share of clips whose "
                                               "residual generator sees the true base noise "
                                               "instead of bhat, as in image-to-video "
                                               "(default 0)")
    max_steps: int = setting(10_000, "stage 2 (joint training) optimizer steps")
    # videofusion.distillation: progressive distillation instead of the two stages
    distill_from: str | None = setting(None, "distil this VideoFusionPipeline folder into a "
                                             "few-step student instead of training (the "
                                             "student starts as its copy; no stages, "
                                             "max_steps unused)",
                                       group="distillation (docs/training.md)")
    distill_kind: str = setting("progressive", "progressive: students of distill_rounds steps, "
                                               "each halving its teacher's DDIM; ancestral: "
                                               "the same, halving a DDPM teacher's ancestral "
                                               "sampler; guidance: one student that folds the "
                                               "guidance in and keeps the teacher's sampler "
                                               "and step count",
                                choices=DISTILL_KINDS)
    distill_guidance: float | None = setting(None, "the classifier-free guidance folded into "
                                                   "the student (default: the teacher folder's "
                                                   "own default guidance)")
    distill_rounds: list[int] = setting(factory=lambda: [16, 8, 4],
                                        help="the student's step count in each round, halving "
                                             "(its first teacher takes twice the first), e.g. "
                                             "16,8,4 (progressive and ancestral)")
    distill_steps_per_round: int = setting(1000, "optimizer steps per round (guidance: of the "
                                                 "one round)")
    distill_weighting: str = setting("truncated-snr", "weighting of the student's loss over "
                                                      "timesteps (default truncated-snr: "
                                                      "max(SNR, 1) on the clean estimate)",
                                     choices=LOSS_WEIGHTINGS)
    distill_sampler_states: float = setting(0.0, "guidance and one-round ancestral "
                                                 "distillation: the share of optimizer steps "
                                                 "trained on the states z_t the teacher's own "
                                                 "guided sampler visits instead of noised "
                                                 "training clips (default 0)")
    distill_temporal_weight: float = setting(0.0, "guidance distillation: the weight of a "
                                                  "temporal term, the student's error in each "
                                                  "frame-to-frame change of epsilon (default "
                                                  "0: the per-frame regression alone)")
    distill_sampler_clips: int = setting(128, "with distill_sampler_states: how many training "
                                              "clips' conditions the teacher samples once, "
                                              "at the run's start, to record those states")
    # optimisation
    batch_size: int = setting(8, "clips per process per micro-step", group="optimisation")
    gradient_accumulation_steps: int = setting(1)
    learning_rate: float = setting(2e-4, flags=("--learning-rate", "--lr"))
    weight_decay: float = setting(0.01)
    adam_beta1: float = setting(0.9, flag=False)
    adam_beta2: float = setting(0.999, flag=False)
    adam_epsilon: float = setting(1e-8, flag=False)
    lr_scheduler: str = setting("constant_with_warmup", choices=LR_SCHEDULERS)
    lr_warmup_steps: int = setting(500)
    max_grad_norm: float = setting(1.0)
    ema_decay: float = setting(0.9999, "0 turns EMA off")
    cond_drop: float = setting(0.1, "odds of the null condition, for classifier-free guidance")
    # a high value leaves the caption alone in more of the steps
    class_drop: float | None = setting(None, "class+text: odds of the null class label "
                                             "(default: --cond-drop)")
    num_train_timesteps: int = setting(1000, flag=False)
    beta_schedule: str = setting("linear", "DDPM noise schedule (Stable Diffusion: scaled_linear "
                                           "0.00085 .. 0.012)", choices=BETA_SCHEDULES)
    beta_start: float = setting(0.0001)
    beta_end: float = setting(0.02)
    mixed_precision: str = setting("no", "GPU only; CPU runs stay fp32", choices=MIXED_PRECISION)
    seed: int = setting(0)
    # outputs
    output_dir: str = setting("runs/videofusion", group="outputs")
    checkpoint_every: int = setting(1000)
    checkpoints_total_limit: int = setting(3)
    sample_every: int = setting(1000)
    sample_num: int = setting(4)
    sample_steps: int = setting(25)
    sample_guidance: float = setting(1.0)
    log_every: int = setting(10)
    # NaN guard: a skipped step is no update; a run stopped by it saves nothing, so that the
    # last good checkpoints stay
    max_nonfinite_steps: int = setting(5, "stop after this many steps in a row with a "
                                          "non-finite loss or gradient norm, each skipped "
                                          "(default 5); 0: no guard and no wait for the device "
                                          "per step, a non-finite loss stops the run at the "
                                          "next log, before any checkpoint")
    # this invocation only (RUNTIME_FIELDS)
    resume: bool = setting(False, "continue from the latest checkpoint in OUTPUT/checkpoints "
                                  "(settings that change the model, data or objective may not "
                                  "change)")
    stop_at_step: int | None = setting(None, "checkpoint and exit at this global step (continue "
                                             "with --resume)")
    raw_weights: bool = setting(False, "the pipeline written now holds the raw weights, not the "
                                       "EMA; unlike --ema-decay 0 the run keeps its EMA")
    # set aside until this run's first checkpoint
    overwrite: bool = setting(False, "replace the run in OUTPUT; it is deleted once this run has "
                                     "written its first checkpoint")

    @property
    def key_frame_settings(self) -> tuple[str, bool]:
        """``(residual_input, key_frame_correction)`` of the network this config trains.

        The VDM baseline has no base generator and so no key frame: ``("paper", False)``. Its
        config's own values are accepted and describe the VideoFusion model it is
        parameter-matched to (``build_model``), so that ``--model vdm`` over any VideoFusion
        config (``configs/physics_64.yaml``: ``with_key_frame``, corrected) trains the baseline
        of exactly the model that config trains, with nothing else to switch off."""
        if self.model == "vdm":
            return "paper", False
        return self.residual_input, self.key_frame_correction

    @property
    def label_drop(self) -> float:
        """The class label's classifier-free dropout odds: ``class_drop``, else ``cond_drop``."""
        return self.cond_drop if self.class_drop is None else self.class_drop

    @property
    def total_steps(self) -> int:
        """Stage 1 plus stage 2 optimizer steps, or all rounds of a distillation: the global
        step runs from 0 to this."""
        if self.distill_from is not None:
            return self.distill_round_count * self.distill_steps_per_round
        return self.base_pretrain_steps + self.max_steps

    @property
    def distill_round_count(self) -> int:
        """Rounds of a distillation: one per ``distill_rounds`` entry, one to fold guidance."""
        return 1 if self.distill_kind == "guidance" else len(self.distill_rounds)

    def validate(self) -> TrainConfig:
        """Refuse settings that cannot train, with one line naming the setting."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        for f in fields(self):
            value = getattr(self, f.name)
            need(not isinstance(value, float) or math.isfinite(value),
                 f"{f.name} must be a finite number, got {value}")
        need(self.frames >= 2, f"frames must be >= 2, got {self.frames}")
        need(self.resolution >= 8, f"resolution must be >= 8, got {self.resolution}")
        for name, value, limit in (("frames", self.frames, MAX_FRAMES),
                                   ("resolution", self.resolution, MAX_RESOLUTION),
                                   ("batch_size", self.batch_size, MAX_BATCH)):
            size = 4 * self.batch_size * self.channels * self.frames * self.resolution ** 2
            need(value <= limit, f"{name} must be <= {limit}, got {value} (one batch of clips "
                 f"alone would need {size / 1e9:,.1f} GB)")
        need(self.channels in (1, 3), f"channels must be 1 or 3, got {self.channels}")
        need(0.0 <= self.lambda_ <= 1.0, f"lambda must lie in [0, 1], got {self.lambda_}")
        for name, value, choices in (
            ("model", self.model, MODEL_KINDS),
            ("condition", self.condition, CONDITIONS),
            ("residual_input", self.residual_input, RESIDUAL_INPUTS),
            ("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS),
            ("mixed_precision", self.mixed_precision, MIXED_PRECISION),
            ("beta_schedule", self.beta_schedule, BETA_SCHEDULES),
            ("loss_weighting", self.loss_weighting, LOSS_WEIGHTINGS),
            ("distill_weighting", self.distill_weighting, LOSS_WEIGHTINGS),
            ("distill_kind", self.distill_kind, DISTILL_KINDS),
        ):
            need(value in choices, f"{name} must be one of {choices}, got {value!r}")
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "checkpoint_every",
                     "checkpoints_total_limit", "sample_every", "sample_num", "sample_steps",
                     "log_every", "num_train_timesteps", "layers_per_block", "vae_slice",
                     "image_frames_per_clip"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("base_pretrain_steps", "lr_warmup_steps", "num_workers",
                     "max_nonfinite_steps"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        need(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        need(0 <= self.seed < 2 ** 32, f"seed must lie in [0, 2**32), got {self.seed}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("adam_beta1", "adam_beta2"):
            need(0 <= getattr(self, name) < 1,
                 f"{name} must lie in [0, 1), got {getattr(self, name)}")
        need(self.adam_epsilon > 0, f"adam_epsilon must be > 0, got {self.adam_epsilon}")
        need(self.sample_guidance >= 0,
             f"sample_guidance must be >= 0, got {self.sample_guidance}")
        need(not (self.resume and self.overwrite),
             "--resume continues the run in output_dir, --overwrite replaces it: pass one")
        need(0.0 <= self.cond_drop < 1.0, f"cond_drop must lie in [0, 1), got {self.cond_drop}")
        need(self.class_drop is None or 0.0 <= self.class_drop < 1.0,
             f"class_drop must lie in [0, 1), got {self.class_drop}")
        need(self.class_drop is None or "class" in self.condition,
             f"class_drop needs condition class or class+text, got {self.condition!r}")
        need(0.0 <= self.ema_decay < 1.0, f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        need(self.snr_gamma > 0, f"snr_gamma must be > 0, got {self.snr_gamma}")
        need(self.image_frames_per_clip <= self.frames,
             f"image_frames_per_clip must be <= frames ({self.frames}), "
             f"got {self.image_frames_per_clip}")
        need(self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        need(0 < self.beta_start < self.beta_end < 1,
             f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")
        need(self.latent_cache is None or self.vae is not None,
             "latent_cache needs vae: the cache holds the VAE's latents")
        need(self.latent_cache is None or
             Path(self.latent_cache).resolve() != Path(self.output_dir).resolve(),
             "latent_cache must be a folder of its own, not output_dir")
        need(self.text_encoder is None or "text" in self.condition,
             f"text_encoder needs condition text or class+text, got {self.condition!r}")
        for name in ("base_channels", "residual_channels"):
            widths = getattr(self, name)
            need(len(widths) >= 1 and all(w >= 8 and w % 8 == 0 for w in widths),
                 f"{name} must be multiples of 8, got {widths}")
        if self.model == "vdm":
            need(self.base_pretrain_steps == 0 and self.base_from is None
                 and not self.freeze_base,
                 "the VDM baseline has no base generator: drop --base-pretrain-steps, "
                 "--base-from and --freeze-base")
        need(0 <= self.base_teacher_forcing <= 1,
             f"base_teacher_forcing must be in [0, 1], got {self.base_teacher_forcing}")
        need(self.base_teacher_forcing == 0 or self.model != "vdm",
             "the VDM baseline has no base noise to force: drop --base-teacher-forcing")
        if self.base_from_scratch:
            need(self.base_pretrain_steps == 0 and self.base_from is None,
                 "--base-from-scratch skips stage 1: it cannot go with --base-pretrain-steps "
                 "or --base-from")
        if self.init_from is not None:
            need(self.base_from is None and not self.base_from_scratch,
                 "--init-from already holds the base generator: drop --base-from and "
                 "--base-from-scratch")
        if self.distill_from is not None:
            self._validate_distillation(need)
        if self.stop_at_step is not None:
            need(self.stop_at_step >= 1, f"stop_at_step must be >= 1, got {self.stop_at_step}")
        return self

    def _validate_distillation(self, need) -> None:
        need(self.base_pretrain_steps == 0 and self.base_from is None
             and not self.base_from_scratch,
             "--distill-from: the student starts as the teacher's copy: drop "
             "--base-pretrain-steps, --base-from and --base-from-scratch")
        need(self.init_from is None
             or Path(self.init_from).resolve() == Path(self.distill_from).resolve(),
             "--init-from and --distill-from name different folders: the student starts as "
             "the teacher's copy")
        if self.distill_kind != "guidance":
            self._validate_rounds(need)
        need(self.distill_steps_per_round >= 1,
             f"distill_steps_per_round must be >= 1, got {self.distill_steps_per_round}")
        need(self.distill_guidance is None or self.distill_guidance >= 0,
             f"distill_guidance must be >= 0, got {self.distill_guidance}")
        need(self.distill_guidance in (None, 1.0) or self.condition != "none",
             "distill_guidance needs a class- or text-conditioned model")
        need(0 <= self.distill_sampler_states <= 1,
             f"distill_sampler_states is a share in [0, 1], got {self.distill_sampler_states}")
        need(self.distill_sampler_states == 0 or self.distill_kind == "guidance"
             or (self.distill_kind == "ancestral" and len(self.distill_rounds) == 1),
             "distill_sampler_states needs --distill-kind guidance, or ancestral with one round "
             "(the states are the first teacher's): a progressive student learns two DDIM "
             "steps from noised clips")
        need(self.distill_temporal_weight >= 0,
             f"distill_temporal_weight must be >= 0, got {self.distill_temporal_weight}")
        need(self.distill_temporal_weight == 0 or self.distill_kind == "guidance",
             "distill_temporal_weight needs --distill-kind guidance")
        need(self.distill_sampler_clips >= 1,
             f"distill_sampler_clips must be >= 1, got {self.distill_sampler_clips}")

    def _validate_rounds(self, need) -> None:
        rounds, timesteps = self.distill_rounds, self.num_train_timesteps
        need(len(rounds) >= 1 and all(n >= 1 for n in rounds)
             and all(a == 2 * b for a, b in pairwise(rounds)),
             f"distill_rounds must be step counts that halve from round to round, e.g. 16,8,4, "
             f"got {rounds}")
        need(2 * rounds[0] <= timesteps,
             f"distill_rounds: the first teacher takes {2 * rounds[0]} steps, more than the "
             f"{timesteps} timesteps")
        if self.distill_kind == "ancestral":
            # every student is sampled by diffusers' DDPM, whose step goes to t - T // N: two
            # of its teacher's steps of T // 2N only when these agree
            need(all(timesteps // n == 2 * (timesteps // (2 * n)) for n in rounds),
                 f"distill_rounds: with --distill-kind ancestral each step count N needs "
                 f"T // N = 2 (T // 2N) for T = {timesteps} (e.g. 25, 20, 15 or 10), got {rounds}")
            return
        # the last student is sampled by diffusers' DDIM, whose step goes to t - T // N: the
        # next grid point only when N divides T
        need(timesteps % rounds[-1] == 0,
             f"the last of distill_rounds must divide num_train_timesteps ({timesteps}) so "
             f"that DDIM samples the student's grid, got {rounds[-1]}")

    def resume_changes(self, saved: TrainConfig) -> list[str]:
        """``"name old -> new"`` for every setting that differs from the ``saved`` run's and
        may not change on resume (``RESUMABLE``)."""
        changes = []
        for f in fields(self):
            old, new = getattr(saved, f.name), getattr(self, f.name)
            if f.name in RUNTIME_FIELDS or f.name in RESUMABLE or old == new or (
                    f.name == "ema_decay" and old == 0) or (
                    f.name == "distill_steps_per_round" and self.distill_kind == "guidance"
                    and saved.distill_kind == "guidance"):
                continue
            changes.append(f"{f.name} {old!r} -> {new!r}")
        return changes

    def to_dict(self) -> dict[str, Any]:
        """The run's settings as saved to ``config.yaml`` (runtime fields left out)."""
        out = {}
        for f in fields(self):
            if f.name in RUNTIME_FIELDS:
                continue
            key = next((k for k, v in ALIASES.items() if v == f.name), f.name)
            out[key] = getattr(self, f.name)
        return out

    def save(self, path: str | Path) -> Path:
        from .checkpoint import atomic_write_text

        return atomic_write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))

    def replace(self, overrides: dict[str, Any]) -> TrainConfig:
        """A copy with ``overrides`` applied (YAML spellings accepted; unknown keys refused)."""
        known = {f.name: f for f in fields(self)}
        values = {}
        for key, value in overrides.items():
            name = ALIASES.get(key, key).replace("-", "_")
            if name not in known:
                raise ValueError(f"unknown config key {key!r}")
            values[name] = _coerce(known[name], value)
        return dataclasses.replace(self, **values)

    @classmethod
    def from_yaml(cls, path: str | Path, base: TrainConfig | None = None) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path} is not valid YAML ({' '.join(str(err).split())})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{path} must hold a mapping of settings")
        return (base or cls()).replace(loaded)

    @classmethod
    def resolve(cls, config_file: str | Path | None = None,
                flags: dict[str, Any] | None = None) -> TrainConfig:
        """Defaults < saved run config (on resume) < ``config_file`` < ``flags``."""
        flags = flags or {}
        pending = (cls.from_yaml(config_file) if config_file else cls()).replace(flags)
        saved = Path(pending.output_dir) / "config.yaml"
        config = cls.from_yaml(saved) if pending.resume and saved.is_file() else cls()
        if config_file:
            config = cls.from_yaml(config_file, base=config)
        return config.replace(flags).validate()


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """YAML and flag values to the field's type (``"32,64"`` -> ``[32, 64]`` for widths)."""
    kind = str(f.type)
    if value is None:
        return None
    if kind.startswith("list[int]"):
        if isinstance(value, str):
            value = [v for v in value.replace(" ", "").split(",") if v]
        try:
            return [int(v) for v in value]
        except (TypeError, ValueError) as err:
            raise ValueError(f"{f.name} must be a list of integers, got {value!r}") from err
    casters = {"int": int, "float": float, "str": str, "int | None": int, "str | None": str,
               "float | None": float}
    caster = casters.get(kind)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{f.name} must be true or false, got {value!r}")
        return value
    if kind.startswith("dict"):
        if not isinstance(value, dict):
            raise ValueError(f"{f.name} must be a mapping, got {value!r}")
        return value
    try:
        return caster(value) if caster else value
    except (TypeError, ValueError) as err:
        raise ValueError(f"{f.name} must be {kind}, got {value!r}") from err


def widths(text: str) -> list[int]:
    """A ``--base-channels``-style option: ``"16,32,64"`` -> ``[16, 32, 64]``."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected integers like 16,32,64, got {text!r}") from err


def add_config_arguments(parser: argparse.ArgumentParser, config: type = TrainConfig) -> None:
    """One flag per field of ``config`` (see :func:`setting`), in ``--help`` sections.

    Every flag defaults to "not given" (the parser's ``argument_default=SUPPRESS``), so that
    only the flags on the command line override a ``--config`` file; validation stays with
    ``TrainConfig.validate``. Booleans are switches: ``--name`` for a field that defaults to
    false, ``--no-name`` for one that defaults to true."""
    group = parser
    for f in fields(config):
        meta = f.metadata
        if meta.get("group"):
            group = parser.add_argument_group(meta["group"])
        if not meta.get("flag", True):
            continue
        name = next((k for k, v in ALIASES.items() if v == f.name), f.name).replace("_", "-")
        options = {"dest": f.name}
        if meta.get("help"):
            options["help"] = meta["help"]
        if f.type == "bool":
            switch_on = f.default is False
            flags = [f"--{name}" if switch_on else f"--no-{name}"]
            options["action"] = "store_true" if switch_on else "store_false"
        else:
            flags = list(meta.get("flags") or [f"--{name}"])
            parse = _FLAG_TYPES.get(f.type.replace(" | None", ""))  # None: the text itself
            if parse is not None:
                options["type"] = parse
            if meta.get("choices"):
                options["choices"] = meta["choices"]
            else:
                options["metavar"] = name.replace("-", "_").upper()
        group.add_argument(*flags, **options)


# a field's type -> how its flag parses (floats must be finite; ranges are validate()'s)
_FLAG_TYPES = {"int": int, "float": finite_float, "list[int]": widths}
