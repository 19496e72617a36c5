"""Measure the bundled model and draw the README gallery.

    python scripts/bundle_eval.py [--model-dir DIR] [--num-videos 128] [--scheduler ddpm] \
        [--guidance G]

Writes docs/results/bundled/ (``--results``, to measure a candidate before shipping it):
- ``eval_class.json`` / ``eval_text.json``: `videofusion eval` against the moving-digits test
  split, the model prompted by class label alone and by caption alone (I3D FVD / KVD, content
  consistency, prompt adherence, motion error, FVD-digits);
- ``image_to_video.json``: key frames of held-out clips given as the image: the output's key
  frame against the input, whether the other frames keep the image's digit, how much the
  frames next to the key frame change, and the coherence numbers (colour, motion), generated
  vs the real clips; ``image_to_video.png``: the first four clips, each above what was generated
  around its key frame;
and docs/gallery/: a GIF per class label 0-9 and a few captions (64 px), and the content/motion
contact sheet (rows share the base noise, columns the residual noise).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "bundled"
GALLERY = ROOT / "docs" / "gallery"
CAPTIONS = ["a red digit 3 moving down and to the left", "a green digit 7 moving right",
            "a blue digit 0 moving up"]
SHEET_CLIPS = 4


def evaluations(args) -> None:
    from videofusion.evaluation import evaluate

    for condition in args.conditions.split(","):
        started = time.perf_counter()
        report = evaluate("moving-digits", args.model_dir,
                          metrics="fvd,kvd,is,content,motion,fvd_digits",
                          num_videos=args.num_videos, num_inference_steps=args.steps,
                          seed=args.seed, condition=condition, scheduler=args.scheduler,
                          guidance_scale=args.guidance,
                          colour_anchoring=args.colour_anchoring, progress=True)
        report["seconds"] = round(time.perf_counter() - started, 1)
        (args.results / f"eval_{condition}.json").write_text(json.dumps(report, indent=2) + "\n")
        print(condition, json.dumps(report["metrics"], indent=1))


def image_to_video(args, pipe) -> None:
    """Condition on the key frames of held-out clips; measure the key frame and the content."""
    from videofusion.data import MovingDigits
    from videofusion.metrics.coherence import coherence_metrics
    from videofusion.metrics.digits import content_consistency, predict_digits, prompt_adherence
    from videofusion.noise import key_frame_index
    from videofusion.video_io import contact_sheet

    n, frames = args.i2v_videos, 16
    k = key_frame_index(frames)
    digits = MovingDigits(split="test", num_frames=frames, resolution=pipe.config.sample_size,
                          length=n, seed=args.seed + 1)
    clips = [digits[i] for i in range(n)]
    images = [((c["video"][:, k].permute(1, 2, 0).numpy() + 1) / 2) for c in clips]
    labels = [int(c["class_label"]) for c in clips]
    out = []
    for image, label in zip(images, labels, strict=True):
        out.append(pipe(image=image, class_labels=[label], num_frames=frames,
                        num_inference_steps=args.steps, guidance_scale=args.guidance,
                        reconstruction_guidance_scale=args.reconstruction_guidance,
                        colour_anchoring=args.colour_anchoring,
                        generator=torch.Generator().manual_seed(args.seed), progress=False
                        ).frames[0])
    videos = np.stack(out)  # (n, frames, H, W, C) in [0, 1]
    real = np.stack([(c["video"].permute(1, 2, 3, 0).numpy() + 1) / 2 for c in clips])
    others = np.delete(predict_digits(videos), k, axis=1)  # digits of the non-key frames
    neighbours = [k - 1, k + 1]

    def step_change(v: np.ndarray) -> float:  # mean |frame k+-1 - key frame|
        return float(np.abs(v[:, neighbours] - v[:, k:k + 1]).mean())

    plan = pipe.plan(class_labels=[labels[0]], image=images[0],
                     reconstruction_guidance_scale=args.reconstruction_guidance,
                     colour_anchoring=args.colour_anchoring)  # the settings as sampled
    report = {"videos": n, "num_inference_steps": args.steps, "guidance_scale": args.guidance,
              "reconstruction_guidance_scale": plan.reconstruction_guidance_scale,
              "colour_anchoring": plan.colour_anchoring,
              "key_frame_max_abs_error": float(np.abs(videos[:, k] - np.stack(images)).max()),
              "non_key_frames_showing_the_image_digit": float(
                  (others == np.array(labels)[:, None]).mean()),
              "content_consistency": float(content_consistency(others).mean()),
              "prompt_adherence": prompt_adherence(others, labels),
              "neighbour_change_generated": step_change(videos),
              "neighbour_change_real": step_change(real)}
    for name, v in (("generated", videos), ("real", real)):  # a frozen clip must not pass
        metrics = coherence_metrics((v * 255).round().astype(np.uint8), digits=True)
        report.update({f"{key}_{name}": metrics[key] for key in
                       ("colour_deviation", "colour_spread", "key_frame_seam", "mean_speed",
                        "jerk", "worst_jerk", "background_grain", "neighbour_grain")})
    report["scheduler"] = type(pipe.scheduler).__name__
    (args.results / "image_to_video.json").write_text(json.dumps(report, indent=2) + "\n")
    # to look at: each of the first clips as it is (above) and generated around its key frame
    pairs = np.stack([real[:SHEET_CLIPS], videos[:SHEET_CLIPS]], axis=1)
    contact_sheet(pairs.reshape(-1, *videos.shape[1:]), args.results / "image_to_video.png",
                  scale=2)
    print("image-to-video", json.dumps(report, indent=1))


def gallery(args, pipe) -> None:
    from videofusion.control import content_motion_grid
    from videofusion.video_io import contact_sheet, write_gif

    GALLERY.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(args.seed)
    videos = pipe(class_labels=list(range(10)), num_frames=16, num_inference_steps=args.steps,
                  guidance_scale=args.guidance, colour_anchoring=args.colour_anchoring,
                  generator=generator, progress=False).frames
    for label, video in enumerate(videos):
        write_gif(video, GALLERY / f"class_{label}.gif", scale=2)
    contact_sheet(videos, GALLERY / "classes.png", scale=2)
    videos = pipe(prompt=CAPTIONS, num_frames=16, num_inference_steps=args.steps,
                  guidance_scale=args.guidance, colour_anchoring=args.colour_anchoring,
                  generator=generator, progress=False).frames
    for i, video in enumerate(videos):
        write_gif(video, GALLERY / f"caption_{i}.gif", scale=2)
    grid = content_motion_grid(pipe, rows=3, cols=3, class_labels=5,
                               num_inference_steps=args.steps, guidance_scale=args.guidance,
                               colour_anchoring=args.colour_anchoring, seed=args.seed,
                               progress=False)
    print(grid.save(GALLERY, scale=2))


def main() -> None:
    from videofusion.assets import DEFAULT_MODEL_DIR
    from videofusion.choices import SCHEDULERS
    from videofusion.pipeline import VideoFusionPipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--num-videos", type=int, default=128)
    parser.add_argument("--i2v-videos", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--conditions", default="class,text",
                        help="prompting of the eval part: class, text or class,text")
    parser.add_argument("--scheduler", choices=SCHEDULERS,
                        help="sampler of every part (default: the model folder's own)")
    parser.add_argument("--guidance", type=float,
                        help="guidance scale of every part (default: the folder's "
                             "default_guidance)")
    parser.add_argument("--reconstruction-guidance", type=float,
                        help="of image-to-video (default: the folder's)")
    parser.add_argument("--colour-anchoring", type=float,
                        help="of every part (default: the folder's)")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help=f"where the JSON reports go (default {RESULTS.relative_to(ROOT)})")
    parser.add_argument("--only", default="gallery,i2v,eval",
                        help="comma-separated subset of gallery,i2v,eval")
    args = parser.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    parts = set(args.only.split(","))
    pipe = VideoFusionPipeline.from_pretrained(args.model_dir).use_scheduler(args.scheduler)
    pipe.set_progress_bar_config(disable=True)
    if args.guidance is None:
        args.guidance = pipe.default_guidance
    if "gallery" in parts:
        gallery(args, pipe)
    if "i2v" in parts:
        image_to_video(args, pipe)
    if "eval" in parts:
        evaluations(args)


if __name__ == "__main__":
    main()
