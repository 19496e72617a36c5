"""`make demo`: generate prompted videos with the bundled model, no training.

Samples the model shipped in the package (``videofusion.DEFAULT_MODEL_DIR``, see its
README.md model card) twice: by class label (digits 0, 3, 5, 7) and by caption. Each run writes
mp4 + GIF per video and a PNG contact sheet under outputs/demo/; the script prints the files and
the generation time.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from videofusion.cli import main as videofusion

OUT = Path("outputs/demo")
CAPTION = "a red digit 3 moving down and to the left"


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    started = time.perf_counter()
    check(videofusion(["sample", "--class-label", "0", "3", "5", "7", "--num-videos", "1",
                       "--steps", "25", "--seed", "0", "--out", str(OUT / "by_class")]))
    check(videofusion(["sample", "--prompt", CAPTION, "--num-videos", "2", "--steps", "25",
                       "--seed", "0", "--out", str(OUT / "by_caption")]))
    seconds = time.perf_counter() - started
    files = sorted(p for p in OUT.rglob("*") if p.suffix in (".mp4", ".gif", ".png"))
    print(f"demo: {len(files)} files in {seconds:.0f} s (model loading included):")
    for path in files:
        print(f"  {path}")


def check(code: int) -> None:
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
