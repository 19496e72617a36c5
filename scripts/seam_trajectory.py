"""When does the key-frame seam appear during sampling? The seam of the clean estimate x̂0 at
every denoising step (issue: coherent videos).

    python scripts/seam_trajectory.py [MODEL_DIR] [--num-videos 16] [--steps 25] [--out FILE]

Runs the decomposed sampler's loop (``videofusion.sampling``'s public pieces) on class-prompted
videos and, at each step, turns the combined noise prediction into x̂0 = (z_t - sqrt(1 - abar_t)
epshat) / sqrt(abar_t) for every frame, then measures ``key_frame_seam`` on it. A seam that is
already there at high noise is decided early (layout, colour); one that appears only in the last
steps is a fine-detail mismatch between the base and residual generators.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import torch

from videofusion.assets import DEFAULT_MODEL_DIR
from videofusion.metrics.coherence import key_frame_seam
from videofusion.pipeline import VideoFusionPipeline
from videofusion.sampling import alpha_bar_at, guided_noise_prediction, noise_injecting_step

ROOT = Path(__file__).resolve().parents[1]


def as_frames(x: torch.Tensor):
    """Model space ``(B, C, F, H, W)`` in [-1, 1] -> numpy ``(B, F, H, W, C)`` in [0, 1]."""
    return ((x + 1) / 2).permute(0, 2, 3, 4, 1).numpy()


def shown_path(path: str) -> str:
    """The model folder as recorded in the report: relative to the repository when inside it."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", nargs="?", default=str(DEFAULT_MODEL_DIR),
                   help="a VideoFusionPipeline folder (default: the shipped model)")
    p.add_argument("--num-videos", type=int, default=16)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float)
    p.add_argument("--scheduler", default="ddpm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    args = p.parse_args()
    pipe = VideoFusionPipeline.from_pretrained(args.model_dir).use_scheduler(args.scheduler)
    guidance = pipe.default_guidance if args.guidance is None else args.guidance
    labels = [i % pipe.num_classes for i in range(args.num_videos)]
    plan = pipe.plan(class_labels=labels, num_inference_steps=args.steps,
                     guidance_scale=guidance)
    generator = torch.Generator().manual_seed(args.seed)
    z, fresh_noise = pipe.prepare_latents(plan, generator)
    predict = partial(guided_noise_prediction, pipe.model, lambdas=plan.lambdas,
                      condition=plan.condition, guidance_scale=guidance)
    step = noise_injecting_step(pipe.scheduler, plan.eta)
    rows = []
    with torch.inference_mode():
        for i, t in enumerate(pipe.scheduler.timesteps):
            alpha_bar = alpha_bar_at(pipe.scheduler, t, i)
            batch = z.shape[0]
            eps = predict(pipe.scheduler.scale_model_input(z, t), t.expand(batch),
                          alpha_bar.expand(batch))  # (B, C, F, H, W)
            x0 = ((z - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()).clamp(-1, 1)
            rows.append({"step": i, "timestep": int(t), "alpha_bar": float(alpha_bar),
                         "seam_x0": key_frame_seam(as_frames(x0))})
            print(json.dumps(rows[-1]), flush=True)
            z = step(eps, t, z, fresh_noise)
    final = key_frame_seam(as_frames(z.clamp(-1, 1)))
    print(json.dumps({"final_seam": final}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": shown_path(args.model_dir), "guidance": guidance,
                       "scheduler": args.scheduler, "steps": rows, "final_seam": final},
                      f, indent=2)


if __name__ == "__main__":
    main()
