"""`make demo`: the smallest honest end-to-end run of the library.

Builds a small, *untrained* VideoFusion pipeline (image UNet base generator + space-time residual
generator), samples two clips with the two-step decomposed sampler, and writes mp4, GIF and a
contact sheet. Untrained networks produce structured noise, not digits: this shows the
mechanics (shared base noise -> frames that resemble each other), nothing more.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler

from videofusion.models.factory import build_model, count_parameters
from videofusion.pipeline import VideoFusionPipeline
from videofusion.video_io import contact_sheet, write_gif, write_mp4


def main(out: Path = Path("outputs/demo")) -> None:
    torch.manual_seed(0)
    model = build_model("videofusion", sample_size=32, channels=3, condition="none")
    pipe = VideoFusionPipeline(residual=model.residual, base=model.base.unet,
                               scheduler=DDIMScheduler(), sample_size=32)
    start = time.perf_counter()
    frames = pipe(num_videos=2, num_frames=16, num_inference_steps=25,
                  generator=torch.Generator().manual_seed(0)).frames
    seconds = time.perf_counter() - start
    written = [contact_sheet(frames, out / "contact_sheet.png", scale=2)]
    for i, video in enumerate(frames):
        written += [write_mp4(video, out / f"video_{i}.mp4", scale=4),
                    write_gif(video, out / f"video_{i}.gif", scale=4)]
    print(f"untrained VideoFusion pipeline: base {count_parameters(model.base):,} + residual "
          f"{count_parameters(model.residual):,} parameters")
    print(f"sampled 2 clips of 16 frames at 32x32 with 25 DDIM steps in {seconds:.1f} s")
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
