"""``videofusion eval``: metrics of generated videos; a JSON report and a short table.

Flags left unset keep :class:`~videofusion.evaluation.protocol.EvalProtocol`'s defaults, the
one place they are decided.
"""

from __future__ import annotations

import argparse

from videofusion.assets import SHIPPED_MODELS, shipped_model
from videofusion.choices import (
    DEFAULT_DEVICE,
    DEFAULT_INFERENCE_STEPS,
    DTYPES,
    EVAL_CONDITIONS,
    FOLDER_ORDERS,
    METRICS,
    MOVING_DIGITS,
    SCHEDULERS,
)
from videofusion.class_names import class_indices, folder_class_names
from videofusion.evaluation.protocol import EvalProtocol
from videofusion.safety import float_range, int_range

from .arguments import SEED, device

DEFAULT = EvalProtocol()


def _labels(text: str) -> list[str]:
    """``--class-labels``: comma-separated names or indices, read once the fake side is known
    (``class_labels``)."""
    return [v.strip() for v in text.split(",") if v.strip()]


def class_labels(labels: list[str], fake: str) -> list[int]:
    """``--class-labels`` as label indices: a model folder's class names or indices; a folder
    of videos' indices (the digit each video shows, for prompt adherence)."""
    from pathlib import Path

    if (Path(fake) / "model_index.json").is_file():
        return class_indices(labels, folder_class_names(fake), "--class-labels")
    try:
        return [int(v) for v in labels]
    except ValueError:
        raise ValueError(f"--class-labels: a folder of videos takes label indices (the digit "
                         f"each video shows), got {','.join(labels)!r}") from None


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval", help="evaluate generated videos (FVD, KVD, IS, moving-digits metrics)",
        description="Compare generated videos (a folder, a model folder or a shipped model to "
                    "sample) with real ones (moving-digits test split or a folder); "
                    "docs/metrics.md.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--real", default=MOVING_DIGITS,
                   help=f"'{MOVING_DIGITS}' (test split) or a folder of videos")
    fake = p.add_mutually_exclusive_group(required=True)
    fake.add_argument("--fake",
                      help="a folder of videos, or a model folder (with model_index.json) to "
                           "sample")
    fake.add_argument("--model", choices=tuple(SHIPPED_MODELS),
                      help="instead of --fake: sample this model shipped with the package")
    p.add_argument("--metrics", help=f"comma-separated subset of {','.join(METRICS)} "
                                     f"(default: all)")
    p.add_argument("--num-videos", type=int_range(1),
                   help=f"videos per set (default: {DEFAULT.num_videos})")
    p.add_argument("--num-frames", "--frames", type=int_range(1),
                   help=f"frames per clip (default: {DEFAULT.num_frames})")
    p.add_argument("--resolution", type=int_range(8),
                   help="clip side in pixels (default: native, the model's sample size or the "
                        "fake folder's own frame size; the real set is brought to it)")
    p.add_argument("--seed", type=SEED, help=f"sampling seed (default: {DEFAULT.seed})")
    p.add_argument("--class-labels", type=_labels, metavar="CLASSES",
                   help="model: classes to cycle through, by name or index (e.g. "
                        "cheetah,walker or 1,5); folder: one label index per video, in the order "
                        "read (--folder-order)")
    p.add_argument("--steps", dest="num_inference_steps", type=int_range(1, 10_000),
                   help="sampling steps; default: the model's own (default_inference_steps), "
                        f"else {DEFAULT_INFERENCE_STEPS}")
    p.add_argument("--guidance-scale", "--guidance", type=float_range(0),
                   help="classifier-free guidance; default: the model's own "
                        "(default_guidance_scale), else 2 for conditional models, else 1")
    p.add_argument("--residual-guidance-scale", "--residual-guidance", type=float_range(0),
                   help="model: guidance of the residual generator alone; default: the same "
                        "as --guidance-scale")
    p.add_argument("--guidance-interval", type=float_range(0), nargs=2, metavar=("LOW", "HIGH"),
                   help="model: guide only the steps whose noise level sigma_t lies in [LOW, "
                        "HIGH] (docs/method.md, §7); default: every step")
    p.add_argument("--lambda", dest="lambda_", type=float_range(0, 1), metavar="LAMBDA",
                   help="model: share of the noise common to the clip; default: the trained "
                        "value")
    p.add_argument("--colour-anchoring", type=float_range(0), metavar="S",
                   help="model: move every frame's foreground colour towards the key frame's "
                        "(docs/method.md, §7); default: the model's own, else 0 (off)")
    p.add_argument("--scheduler", choices=SCHEDULERS,
                   help="model: sample with this scheduler (default: the folder's own)")
    p.add_argument("--eta", type=float_range(0, 1),
                   help="model: DDIM's share of fresh noise per step (0: deterministic; "
                        f"default: {DEFAULT.eta}); schedulers without eta ignore it")
    p.add_argument("--no-signal-leak", dest="signal_leak", action="store_false",
                   help="model: start from pure noise, not from the noised mean of the "
                        "training data that the folder may hold (docs/training.md, "
                        "'Signal leak')")
    p.add_argument("--batch-size", type=int_range(1),
                   help=f"videos per sampling/I3D batch (default: {DEFAULT.batch_size})")
    p.add_argument("--device", type=device, default=DEFAULT_DEVICE,
                   help="auto (CUDA when present, else cpu), cpu, cuda or cuda:N; under "
                        "'accelerate launch' each process takes its own GPU")
    p.add_argument("--dtype", choices=DTYPES,
                   help="precision of the sampling networks' forward passes (autocast; I3D and "
                        f"the metrics stay fp32); default: {DEFAULT.dtype}")
    p.add_argument("--condition", choices=EVAL_CONDITIONS,
                   help="a model conditioned on class and text: sample with captions (auto, "
                        "text) or class labels alone (class); default: auto")
    p.add_argument("--folder-order", choices=FOLDER_ORDERS,
                   help="which videos of a folder are read: round-robin over its class folders "
                        "(balanced) or the first ones in sorted order (natural); default: "
                        f"{DEFAULT.folder_order}")
    p.add_argument("--out", default="eval_report.json", help="JSON report path")
    p.set_defaults(handler=run_eval)
    return p


def run_eval(args: argparse.Namespace) -> int:
    fake = args.fake if "fake" in args else shipped_model(args.model).folder
    if "class_labels" in args:
        args.class_labels = class_labels(args.class_labels, fake)
    from videofusion.evaluation import evaluate, format_table, shards

    settings = {k: v for k, v in vars(args).items()
                if k not in ("command", "handler", "real", "fake", "model", "device", "out")}
    report = evaluate(args.real, fake, EvalProtocol(**settings), out=args.out,
                      device=args.device)
    if not shards.is_main_process():
        return 0
    print(format_table(report))
    for note in report["warnings"]:
        print(f"note: {note}")
    print(f"wrote {args.out}")
    return 0
