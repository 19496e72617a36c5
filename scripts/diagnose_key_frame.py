"""Does the residual generator follow the key frame? Two probes of one model folder.

    python scripts/diagnose_key_frame.py [MODEL_DIR] [--guidance 4]

1. Image-to-video with the key frames of 8 real clips (7 colours): the mean |colour(frame) -
   colour(key frame)| of the other frames (real clips: 0), and how much the other frames'
   colour moves when the 8 key frames are swapped between clips (same noise and labels).
2. Teacher-forced: 16 real clips noised to several levels; the colour error of the clean
   estimate of the key frame (base generator) and of the other frames, against the real colour.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from videofusion.evaluation import load_moving_digits
from videofusion.metrics.coherence import digit_colours
from videofusion.noise import decomposed_noise
from videofusion.pipeline import load_pipeline

OTHERS = [0, 4, 7, 9, 12, 15]  # frames compared with the key frame (8)


def follow(pipe, guidance: float) -> None:
    real = load_moving_digits(8, 16, (32, 32), progress=False)
    v = real.videos.astype(np.float32) / 255.0  # (B, F, H, W, C)
    runs = []
    for shift in (0, 1):
        keys = [v[(i + shift) % 8, 8] for i in range(8)]
        out = pipe(class_labels=real.class_labels, image=keys, num_inference_steps=25,
                   guidance_scale=guidance, generator=torch.Generator().manual_seed(0),
                   progress=False)
        runs.append(digit_colours(out.frames))
    c, swapped = runs
    apart = np.nanmean(np.abs(c[:, OTHERS] - c[:, 8:9]))
    moved = np.nanmean(np.abs(swapped[:, OTHERS] - c[:, OTHERS]))
    print(f"image-to-video: mean |colour(frame) - colour(key)| {apart:.3f} (real 0); other "
          f"frames' colour change when the key frames are swapped {moved:.3f}")


def teacher_forced(pipe) -> None:
    model = pipe.model.eval()
    real = load_moving_digits(16, 16, (32, 32), progress=False)
    v = torch.from_numpy(real.videos.astype(np.float32) / 255.0).permute(0, 4, 1, 2, 3) * 2 - 1
    labels = torch.tensor(real.class_labels)
    text = pipe.encode_prompt([""] * 16) if pipe.conditioning.text else None
    lambdas = model.lambdas(16, pipe.config.default_lambda)
    truth = digit_colours((v.permute(0, 2, 3, 4, 1).numpy() + 1) / 2)
    for t in (900, 800, 700, 600, 500, 300, 100):
        a = pipe.scheduler.alphas_cumprod[t]
        noise = decomposed_noise(v.shape, lambdas, torch.Generator().manual_seed(t))
        z = a.sqrt() * v + (1 - a).sqrt() * noise
        with torch.no_grad():
            eps = model(z, torch.full((16,), t), a.expand(16), lambdas, class_labels=labels,
                        encoder_hidden_states=text).noise
        x0 = ((z - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
        c = digit_colours((x0.permute(0, 2, 3, 4, 1).numpy() + 1) / 2)
        others = np.nanmean(np.abs(c[:, OTHERS] - truth[:, OTHERS]))
        key = np.nanmean(np.abs(c[:, 8] - truth[:, 8]))
        print(f"abar {a:.3f}: colour error, other frames {others:.3f}, key frame {key:.3f}")


def main() -> None:
    from videofusion import DEFAULT_MODEL_DIR

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", nargs="?", default=DEFAULT_MODEL_DIR)
    p.add_argument("--guidance", type=float, default=4.0)
    args = p.parse_args()
    pipe = load_pipeline(args.model_dir)
    follow(pipe, args.guidance)
    teacher_forced(pipe)


if __name__ == "__main__":
    main()
