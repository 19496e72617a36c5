"""``EvalProtocol``: every setting an evaluation's numbers depend on, in one record.

FVD, KVD and IS change with the number of videos, their length and size, and how the model
was sampled, so the protocol travels whole from the command line to the report, where it is
written next to the numbers. Torch-free: ``videofusion eval --help`` reads its defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from videofusion.choices import (
    DEFAULT_DTYPE,
    DEFAULT_FOLDER_ORDER,
    DTYPES,
    EVAL_CONDITIONS,
    FOLDER_ORDERS,
    METRICS,
    PROTOCOL_FRAMES,
    SCHEDULERS,
)
from videofusion.guidance_interval import check_guidance_interval

SET_METRICS = frozenset({"fvd", "kvd", "fvd_digits"})  # need a covariance: >= 2 videos per set


def parse_metrics(metrics: str | Sequence[str]) -> tuple[str, ...]:
    """``"fvd,kvd"`` or a sequence -> validated names in :data:`~videofusion.choices.METRICS`
    order."""
    names = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else list(metrics)
    names = [m for m in names if m]
    unknown = sorted(set(names) - set(METRICS))
    if unknown or not names:
        raise ValueError(f"metrics: choose from {','.join(METRICS)}, got {metrics!r}")
    return tuple(m for m in METRICS if m in names)


@dataclass(frozen=True)
class EvalProtocol:
    """What is measured and how the videos are made.

    ``resolution`` ``None`` is the native size: a model's sample size, else the fake folder's own
    frame size; the real set is brought to the fake set's size. Sampling settings (``seed`` to
    ``batch_size``) apply when the fake side is a model folder; ``None`` means the model's own
    (guidance: ``default_guidance_scale``; lambda: the trained value; scheduler: the folder's;
    steps: ``default_inference_steps`` with the folder's scheduler, else
    ``DEFAULT_INFERENCE_STEPS``).
    ``class_labels``: for a model, labels to cycle through; for a folder, one per video.
    ``condition``: what a model conditioned on class and text is sampled with (auto: captions).
    ``dtype``: the precision of a model's forward passes while sampling; it changes the videos,
    so it is recorded (the device is not: it changes them only up to float rounding).
    ``real_options`` go to ``MovingDigits`` when the real set is the moving-digits test split.
    ``folder_order``: which videos of a folder are read. ``balanced`` takes them round-robin over
    the class folders, so that any ``num_videos`` covers every class as evenly as it can (a
    sorted folder's first 128 videos may hold three of its six classes); ``natural`` takes the
    first ones in sorted order.
    """

    metrics: tuple[str, ...] = METRICS
    num_videos: int = 256
    num_frames: int = PROTOCOL_FRAMES
    resolution: tuple[int, int] | None = None
    seed: int = 0
    class_labels: tuple[int, ...] | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    residual_guidance_scale: float | None = None  # None: guidance_scale
    lambda_: float | None = None
    colour_anchoring: float | None = None  # None: the folder's default
    guidance_interval: tuple[float, float] | None = None  # sigma_t of guided steps; None: all
    scheduler: str | None = None
    eta: float = 0.0  # DDIM's share of fresh noise (0: deterministic, 1: DDPM-like)
    signal_leak: bool = True
    condition: str = "auto"
    dtype: str = DEFAULT_DTYPE  # the sampling networks' forward passes (autocast)
    batch_size: int = 8  # videos per sampling batch; a stochastic sampler's noise follows it
    real_options: dict = field(default_factory=dict)
    folder_order: str = DEFAULT_FOLDER_ORDER

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "metrics", parse_metrics(self.metrics))
        for name in ("num_videos", "num_frames", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.resolution is not None:
            side = self.resolution
            set_(self, "resolution", (side, side) if isinstance(side, int)
                 else tuple(int(v) for v in side))
        if self.class_labels is not None:
            set_(self, "class_labels", tuple(int(c) for c in self.class_labels))
        set_(self, "guidance_interval", check_guidance_interval(self.guidance_interval))
        if self.condition not in EVAL_CONDITIONS:
            raise ValueError(f"condition must be one of {EVAL_CONDITIONS}, got {self.condition!r}")
        if self.folder_order not in FOLDER_ORDERS:
            raise ValueError(f"folder_order must be one of {FOLDER_ORDERS}, "
                             f"got {self.folder_order!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {tuple(SCHEDULERS)}, "
                             f"got {self.scheduler!r}")
        set_(self, "real_options", dict(self.real_options or {}))

    def replace(self, **changes) -> EvalProtocol:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready, as recorded in reports (``lambda_`` is written ``lambda``)."""
        out = dataclasses.asdict(self)
        out["lambda"] = out.pop("lambda_")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
