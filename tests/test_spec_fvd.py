"""FVD's preprocessing against the protocol, written out independently (Unterthiner et al. 2018:
frames resized bilinearly to 224x224, pixels to [-1, 1]).

The resize is the one TensorFlow's ``tf.image.resize`` (and ``jax.image.resize`` when upsampling)
does: half-pixel centres, source coordinate ``(o + 0.5) * in / out - 0.5`` clamped to the image,
i.e. PyTorch's ``align_corners=False``. ``align_corners=True`` stretches the image by up to half
an input pixel at the borders and changes every feature.
"""

import numpy as np
import torch

from videofusion.metrics.fvd import _to_i3d_input
from videofusion.metrics.i3d import INPUT_SIZE


def half_pixel_weights(size_in: int, size_out: int) -> np.ndarray:
    """``(size_out, size_in)`` linear-interpolation matrix with half-pixel centres."""
    weights = np.zeros((size_out, size_in))
    for o in range(size_out):
        src = min(max((o + 0.5) * size_in / size_out - 0.5, 0.0), size_in - 1.0)
        lo = int(np.floor(src))
        hi = min(lo + 1, size_in - 1)
        frac = src - lo
        weights[o, lo] += 1.0 - frac
        weights[o, hi] += frac
    return weights


def reference_input(videos_uint8: np.ndarray) -> np.ndarray:
    """``(N, T, H, W, 3)`` uint8 -> ``(N, 3, T, 224, 224)`` float64 in [-1, 1]."""
    x = videos_uint8.astype(np.float64) / 127.5 - 1.0
    rows = half_pixel_weights(x.shape[2], INPUT_SIZE)
    cols = half_pixel_weights(x.shape[3], INPUT_SIZE)
    resized = np.einsum("oh,nthwc,pw->nctop", rows, x, cols)
    return resized


def test_the_interpolation_matrix_is_half_pixel_bilinear():
    w = half_pixel_weights(2, 4)  # each input pixel covers two outputs; borders clamp
    np.testing.assert_allclose(w, [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    np.testing.assert_allclose(half_pixel_weights(3, 3), np.eye(3))


def test_resize_and_pixel_mapping_follow_the_protocol():
    rng = np.random.default_rng(0)
    videos = rng.integers(0, 256, size=(2, 3, 20, 36, 3), dtype=np.uint8)  # non-square
    ours = _to_i3d_input(videos).double().numpy()
    assert ours.shape == (2, 3, 3, INPUT_SIZE, INPUT_SIZE)
    np.testing.assert_allclose(ours, reference_input(videos), rtol=0, atol=2e-5)


def test_a_torch_video_is_resized_the_same_way():
    rng = np.random.default_rng(1)
    videos = rng.integers(0, 256, size=(1, 2, 28, 28, 3), dtype=np.uint8)
    tensor = torch.from_numpy(videos).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    np.testing.assert_allclose(_to_i3d_input(tensor).double().numpy(), reference_input(videos),
                               rtol=0, atol=2e-5)
