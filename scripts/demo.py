"""`make demo`: train a small VideoFusion model on moving digits for a few minutes, then sample.

Runs `videofusion train --config configs/moving_digits_tiny.yaml` (resumable: a second
`make demo` reuses the trained model) and `videofusion sample` with four class prompts, writing
mp4 + GIF per video and a contact sheet under outputs/demo/. A few hundred CPU steps lower the
loss a lot but are far too few for recognisable digits: expect moving coloured noise. The
bundled trained model (a later milestone) replaces this with real samples.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from videofusion.cli import main as videofusion

OUT = Path("outputs/demo")


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run = OUT / "run"
    started = time.perf_counter()
    if not (run / "pipeline" / "model_index.json").is_file():
        check(videofusion(["train", "--config", "configs/moving_digits_tiny.yaml",
                           "--output-dir", str(run), "--resume"]))
    trained = time.perf_counter()
    check(videofusion(["sample", "--model-dir", str(run / "pipeline"), "--class-label", "0", "3",
                       "5", "7", "--frames", "8", "--steps", "25", "--guidance", "2",
                       "--seed", "0", "--out", str(OUT / "samples")]))
    sampled = time.perf_counter()
    print(f"demo: training {trained - started:.0f} s, sampling {sampled - trained:.0f} s; "
          f"loss curve {run / 'loss_curve.png'}, TensorBoard logs {run / 'tensorboard'}")


def check(code: int) -> None:
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
