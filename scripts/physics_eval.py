"""Measure the shipped physics model against held-out renders and draw its README gallery.

    python scripts/physics_eval.py [--model-dir DIR] [--recipe-dir runs/physics] \
        [--num-videos 256] [--only gallery,eval,floor,domains,pilot]

The real clips are those of ``scripts/train_physics.py``'s held-out render (other seeds than
the training clips, never trained on); the floor set is its third render. Writes
docs/results/physics/ (``--results``):
- ``eval_class.json`` / ``eval_text.json``: `videofusion eval` of the model prompted by the
  held-out clips' domains alone and by their captions alone: FVD / KVD on the Kinetics-400 I3D
  and the coherence metrics (key-frame seam, flicker), each beside the real clips' values;
- ``floor.json``: the same metrics between the held-out and the floor renders (real vs real, at
  the same number of videos): the value a perfect model would reach;
- ``domains.json``: the coherence metrics of ``--domain-videos`` class-prompted videos per
  domain, each beside that domain's held-out clips;
- ``pilot_protocol.json``: FVD / KVD under the protocol of the first pilot on these renders
  (``docs/results/dmc/``: 64 class-prompted videos against 64 held-out clips, both at 32x32,
  DDPM 25 steps, guidance 2, seed 0), and the floor renders under it: where the shipped model
  stands against that pilot's FVD of 2682;
and docs/gallery/physics/: a GIF per domain (class prompt; the renders' captions name the domain
and little more), the domains' contact sheet and the content/motion grid of one domain (rows
share the base noise, columns the residual noise).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "physics"
GALLERY = ROOT / "docs" / "gallery" / "physics"
METRICS = "fvd,kvd,coherence"


# The order the held-out folder was read in for the published reports, the first N sorted; at 256
# of 258 clips it holds every domain (docs/metrics.md, `--folder-order`).
NATURAL = {"folder_order": "natural"}


def write_report(report: dict, path: Path, started: float) -> None:
    report["seconds"] = round(time.perf_counter() - started, 1)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(path.name, json.dumps(report["metrics"], indent=1), flush=True)


def evaluations(args) -> None:
    from videofusion.evaluation import evaluate

    for condition in ("class", "text"):
        started = time.perf_counter()
        report = evaluate(args.held_out, args.model_dir, metrics=METRICS,
                          num_videos=args.num_videos, seed=args.seed, condition=condition,
                          progress=True, **NATURAL)
        write_report(report, args.results / f"eval_{condition}.json", started)


def floor(args) -> None:
    from videofusion.evaluation import evaluate

    started = time.perf_counter()
    report = evaluate(args.held_out, args.recipe_dir / "data" / "floor", metrics=METRICS,
                      num_videos=args.num_videos, progress=True, **NATURAL)
    write_report(report, args.results / "floor.json", started)


def pilot_protocol(args) -> None:
    from videofusion.evaluation import evaluate

    started, rows = time.perf_counter(), {}
    # the pilot read its held-out folder's first 64 clips
    pilot = {"metrics": "fvd,kvd", "num_videos": 64, "resolution": 32, "seed": 0, **NATURAL}
    for name, fake, sampling in (
            ("model", args.model_dir, {"condition": "class", "num_inference_steps": 25,
                                       "guidance_scale": 2.0, "scheduler": "ddpm"}),
            ("floor", args.recipe_dir / "data" / "floor", {})):
        report = evaluate(args.held_out, fake, progress=True, **pilot, **sampling)
        rows[name] = {"protocol": report["protocol"], "metrics": report["metrics"]}
    write_report({"metrics": {k: v["metrics"] for k, v in rows.items()},
                  "protocols": {k: v["protocol"] for k, v in rows.items()}},
                 args.results / "pilot_protocol.json", started)


def domains(args, names: list[str]) -> None:
    """The coherence metrics domain by domain, each beside that domain's held-out clips: where
    the aggregate hides a domain whose bodies flicker or smear."""
    from videofusion.evaluation import evaluate

    started, rows = time.perf_counter(), {}
    for label, name in enumerate(names):
        report = evaluate(args.held_out / name, args.model_dir, metrics="coherence",
                          num_videos=args.domain_videos, seed=args.seed, condition="class",
                          class_labels=(label,), progress=False)
        rows[name] = report["metrics"]
        print(name, json.dumps(report["metrics"]), flush=True)
    write_report({"protocol": report["protocol"], "metrics": rows},
                 args.results / "domains.json", started)


def gallery(args, pipe) -> None:
    from videofusion.control import content_motion_grid
    from videofusion.video_io import contact_sheet, write_gif

    GALLERY.mkdir(parents=True, exist_ok=True)
    names = list(pipe.class_names)
    own = {"num_inference_steps": pipe.default_steps, "guidance_scale": pipe.default_guidance}
    generator = torch.Generator().manual_seed(args.seed)
    videos = pipe(class_labels=list(range(len(names))), num_frames=16, generator=generator,
                  progress=False, **own).frames
    for name, video in zip(names, videos, strict=True):
        write_gif(video, GALLERY / f"{name}.gif")
    contact_sheet(videos, GALLERY / "domains.png")
    grid = content_motion_grid(pipe, rows=3, cols=3, class_labels=args.grid_domain,
                               seed=args.seed, progress=False, **own)
    print(grid.save(GALLERY))


def main() -> None:
    from videofusion.assets import SHIPPED_MODELS
    from videofusion.pipeline import VideoFusionPipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # repository-relative, like --recipe-dir, so that the reports name no local path
    parser.add_argument("--model-dir", type=Path,
                        default=SHIPPED_MODELS["physics"].folder.relative_to(ROOT))
    parser.add_argument("--recipe-dir", type=Path, default=Path("runs/physics"),
                        help="scripts/train_physics.py's --out: its data/held_out and data/floor")
    parser.add_argument("--num-videos", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid-domain", default="cheetah", help="the content/motion grid's")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help=f"where the JSON reports go (default {RESULTS.relative_to(ROOT)})")
    parser.add_argument("--domain-videos", type=int, default=16,
                        help="videos per domain of the domains part")
    parser.add_argument("--only", default="gallery,eval,floor,domains,pilot",
                        help="comma-separated subset of gallery,eval,floor,domains,pilot")
    args = parser.parse_args()
    args.held_out = args.recipe_dir / "data" / "held_out"
    args.results.mkdir(parents=True, exist_ok=True)
    parts = set(args.only.split(","))
    pipe = (VideoFusionPipeline.from_pretrained(args.model_dir)
            if parts & {"gallery", "domains"} else None)
    if "gallery" in parts:
        pipe.set_progress_bar_config(disable=True)
        gallery(args, pipe)
    if "eval" in parts:
        evaluations(args)
    if "floor" in parts:
        floor(args)
    if "domains" in parts:
        domains(args, pipe.class_names)
    if "pilot" in parts:
        pilot_protocol(args)


if __name__ == "__main__":
    main()
