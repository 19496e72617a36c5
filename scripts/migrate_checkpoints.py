"""Convert a run's checkpoints from the pickled trainer state of older videofusion versions.

Before checkpoints held no code, the EMA and the LR schedule were saved by accelerate as
``custom_checkpoint_0.pkl``, which ``--resume`` now refuses (docs/training.md, "Safety"). This
rewrites that file as ``ema.safetensors`` + ``training_state.json``, the current layout. The
pickle is read with torch's ``weights_only=True`` unpickler, which builds tensors, numbers, lists
and dicts only: a planted payload is refused, never run.

    python scripts/migrate_checkpoints.py RUN_DIR     # every RUN_DIR/checkpoints/step-*
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

OLD_FILE = "custom_checkpoint_0.pkl"


def migrate(folder: Path) -> bool:
    """Convert one checkpoint folder in place; False if it holds no old trainer state."""
    import torch
    from safetensors.torch import save_file

    from videofusion.checkpoint import verify_checkpoint
    from videofusion.train import EMA_FILE, TRAINING_STATE_FILE

    old = folder / OLD_FILE
    if not old.is_file():
        return False
    try:
        state = torch.load(old, map_location="cpu", weights_only=True)
        meta = {"lr_scheduler": state["lr_scheduler"], "nonfinite_steps": 0, "ema": None}
        if state["ema"] is not None:
            ema = dict(state["ema"])
            shadow = ema.pop("shadow_params")
            save_file({str(i): t.contiguous() for i, t in enumerate(shadow)},
                      str(folder / EMA_FILE))
            meta["ema"] = ema
    except pickle.UnpicklingError:
        raise ValueError(f"{old} holds more than tensors: not converted") from None
    except (KeyError, TypeError, RuntimeError) as err:
        raise ValueError(f"{old} is not videofusion's trainer state ({err})") from None
    (folder / TRAINING_STATE_FILE).write_text(json.dumps(meta, indent=2))
    old.unlink()  # last: a kill before this leaves the pickle, and a rerun converts again
    verify_checkpoint(folder)
    return True


def main(argv: list[str] | None = None) -> int:
    from videofusion.checkpoint import list_checkpoints

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a training output folder")
    args = parser.parse_args(argv)
    found = list_checkpoints(args.run_dir / "checkpoints")
    if not found:
        parser.exit(2, f"migrate_checkpoints: error: no checkpoints in {args.run_dir}\n")
    try:
        for _, folder in found:
            print(f"{folder}: {'converted' if migrate(folder) else 'already current'}")
    except ValueError as err:
        parser.exit(2, f"migrate_checkpoints: error: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
