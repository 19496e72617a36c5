"""Write tests/fixtures/golden_videos.safetensors: videos of the shipped model for fixed seeds.

The golden test (tests/test_golden_videos.py) regenerates each case and compares, so a
refactoring of the sampler, the pipeline or the long-video and control code that changes what
a user gets for a seed fails it. Re-run this script only when a change of the videos is
intended (a new shipped model, a deliberate change of the sampler), and say so in the commit.

    python scripts/make_golden_videos.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from golden_cases import CASES, run_case  # noqa: E402

from videofusion.assets import DEFAULT_MODEL_DIR  # noqa: E402
from videofusion.pipeline import VideoFusionPipeline  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    pipe = VideoFusionPipeline.from_pretrained(DEFAULT_MODEL_DIR)
    videos = {name: np.ascontiguousarray(run_case(pipe, name), dtype=np.float32)
              for name in CASES}
    out = ROOT / "tests" / "fixtures" / "golden_videos.safetensors"
    tmp = out.with_suffix(".tmp")
    save_file(videos, str(tmp))
    tmp.replace(out)
    for name, video in videos.items():
        print(f"{name}: {video.shape}, mean {video.mean():.4f}")


if __name__ == "__main__":
    main()
