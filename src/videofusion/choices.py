"""The named choices of the library and the command line, each list defined once.

Torch-free and import-free, so ``videofusion --help`` can offer them without loading the
library; the modules that act on a choice import its list from here and validate against it.
"""

# Training (TrainConfig).
MODEL_KINDS = ("videofusion", "vdm")  # vdm: the baseline without a base generator
CONDITIONS = ("none", "class", "text", "class+text")  # what a model is trained to accept
RESIDUAL_INPUTS = ("paper", "with_key_frame", "key_frame_difference", "key_frame_estimate")
LOSS_WEIGHTINGS = ("epsilon", "min-snr", "v", "truncated-snr")
# Distillation (videofusion.distillation): halve the step count round after round (Salimans &
# Ho), or fold the guidance alone into a student that keeps its teacher's sampler (Meng et al.)
DISTILL_KINDS = ("progressive", "guidance", "ancestral")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
BETA_SCHEDULES = ("linear", "scaled_linear")
MIXED_PRECISION = ("no", "fp16", "bf16")

# Sampling: name -> the diffusers scheduler class that samples with it.
SCHEDULERS = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler",
              "dpm": "DPMSolverMultistepScheduler", "dpm_sde": "DPMSolverMultistepScheduler",
              "ddpm_karras": "DPMSolverMultistepScheduler",
              "euler": "EulerDiscreteScheduler", "unipc": "UniPCMultistepScheduler"}
# Settings a name fixes over the folder's scheduler config: DPM-Solver++ as an ODE ("dpm") or
# as the stochastic SDE solver ("dpm_sde", few steps that still inject fresh noise, which
# keeps what deterministic sampling loses on these models, docs/results.md). The SDE solver
# steps on Karras's noise levels, from the schedule's noisiest level down to 0 and dense at
# low noise; a DDPM folder's "leading" grid gave it t = 900..90 at 10 steps (the digits model:
# class FVD 384 against 315, docs/results.md, "Few-step sampling"). "ddpm_karras" is the same
# solver at first order, which is DDPM's ancestral step between Karras's levels: the
# second-order update extrapolates each frame's clean estimate from the last step's and made
# digits jump between frames (class jerk 0.071 against 0.058 at first order, 0.054 at DDPM 25),
# while first order leaves fainter digits (class FVD 338 against 315).
SCHEDULER_SETTINGS = {"dpm": {"algorithm_type": "dpmsolver++"},
                      "dpm_sde": {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
                      "ddpm_karras": {"algorithm_type": "sde-dpmsolver++",
                                      "use_karras_sigmas": True, "solver_order": 1}}

# Where and in what precision sampling and evaluation run (``videofusion.devices``): "auto" is
# CUDA when present, else the CPU; "cuda:N" names one GPU. The dtype is that of the networks'
# forward passes (autocast); latents and the scheduler's arithmetic stay fp32.
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("fp32", "fp16", "bf16")
DEFAULT_DEVICE = "auto"
DEFAULT_DTYPE = "fp32"

# Pipeline outputs: numpy, PIL images, a tensor, or the raw latent.
OUTPUT_TYPES = ("np", "pil", "pt", "latent")

# Evaluation.
METRICS = ("fvd", "kvd", "is", "content", "motion", "fvd_digits", "coherence")
I3D_METRICS = frozenset({"fvd", "kvd", "is"})  # on Kinetics-400 I3D features (metrics.fvd)
# What a model conditioned on both class and text is sampled with (auto: captions).
EVAL_CONDITIONS = ("auto", "class", "text")
MOVING_DIGITS = "moving-digits"  # the real set that is the moving-digits test split
# Which videos of a folder an evaluation reads: round-robin over its class folders, or the first
# ones in sorted order (what reports before the field existed used).
FOLDER_ORDERS = ("balanced", "natural")
DEFAULT_FOLDER_ORDER = "balanced"
# What a sampling request gets when it names no length or step count (pipeline, CLI, evaluation).
DEFAULT_NUM_FRAMES = 16
DEFAULT_INFERENCE_STEPS = 50
PROTOCOL_FRAMES = 16  # FVD's clip length (Unterthiner et al., 2018); I3D metrics warn otherwise

# Data: scripted actions of rendered dm-control clips.
DMC_POLICIES = ("auto", "random", "gait")
