"""`make demo`: generate prompted videos with every model shipped in the package, no training.

Samples each installed model of ``videofusion.assets.SHIPPED_MODELS`` (see their README.md model
cards) by class label and by caption, the example prompts the registry gives it. Each run
writes mp4 + GIF per video and a PNG contact sheet under outputs/demo/<model>/; the script says
in one line which shipped models are not installed, then prints the files and the generation
time.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from videofusion.assets import SHIPPED_MODELS, ShippedModel
from videofusion.cli import main as videofusion

OUT = Path("outputs/demo")
STEPS = "25"


def main(models: dict[str, ShippedModel] | None = None, out: Path = OUT) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    models = SHIPPED_MODELS if models is None else models
    missing = [f"{name} (built by {model.recipe})" for name, model in models.items()
               if not model.installed]
    if missing:
        print(f"demo: not installed, left out: {'; '.join(missing)}")
    present = [model for model in models.values() if model.installed]
    if not present:
        sys.exit("demo: no shipped model is installed")
    started = time.perf_counter()
    for model in present:
        common = ["--model-dir", str(model.folder), "--steps", STEPS, "--seed", "0"]
        if model.example_labels:
            check(videofusion(["sample", *common, "--num-videos", "1", "--class-label",
                               *map(str, model.example_labels),
                               "--out", str(out / model.name / "by_class")]))
        if model.example_caption:
            check(videofusion(["sample", *common, "--num-videos", "2", "--prompt",
                               model.example_caption,
                               "--out", str(out / model.name / "by_caption")]))
    seconds = time.perf_counter() - started
    files = sorted(p for p in out.rglob("*") if p.suffix in (".mp4", ".gif", ".png"))
    print(f"demo: {len(files)} files from {', '.join(m.name for m in present)} in "
          f"{seconds:.0f} s (model loading included):")
    for path in files:
        print(f"  {path}")


def check(code: int) -> None:
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
