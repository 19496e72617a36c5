"""Spec §1: statistics of the decomposed noise."""

import pytest
import torch

from videofusion import decomposed_noise, make_lambdas
from videofusion.noise import key_frame_index


def frame_correlations(noise: torch.Tensor) -> torch.Tensor:
    """Empirical (frames x frames) correlation over batch, channels and pixels."""
    frames = noise.transpose(0, 2).reshape(noise.shape[2], -1).double()
    return torch.corrcoef(frames)


@pytest.mark.parametrize(
    "lambda_",
    [0.5, 0.25, 0.9, 0.0, [0.1, 0.3, 1.0, 0.6, 0.0]],
)
def test_unit_variance_and_pairwise_correlation(lambda_, generator):
    frames = 5
    lambdas = make_lambdas(frames, lambda_).double()
    noise = decomposed_noise((400, 2, frames, 8, 8), lambdas, generator)  # 51,200 per frame
    var = noise.transpose(0, 2).reshape(frames, -1).var(dim=1)
    assert torch.allclose(var.double(), torch.ones(frames, dtype=torch.float64), atol=0.03)
    expected = (lambdas[:, None] * lambdas[None, :]).sqrt()
    expected.fill_diagonal_(1.0)
    # standard error of a correlation estimate with n = 51,200 is < 0.005
    assert torch.allclose(frame_correlations(noise), expected, atol=0.02)


def test_default_lambdas_put_key_frame_at_one():
    lambdas = make_lambdas(16, 0.5)
    assert lambdas[key_frame_index(16)] == 1.0 == lambdas[8]
    assert (lambdas[torch.arange(16) != 8] == 0.5).all()


def test_lambda_zero_is_independent(generator):
    noise = decomposed_noise((400, 2, 4, 8, 8), torch.zeros(4), generator)
    off_diagonal = frame_correlations(noise) - torch.eye(4, dtype=torch.float64)
    assert off_diagonal.abs().max() < 0.02


def test_parts_fix_one_and_resample_the_other(generator):
    shape = (2, 3, 6, 4, 4)
    first = decomposed_noise(shape, 0.5, generator, return_parts=True)
    same_base = decomposed_noise(shape, 0.5, generator, base_noise=first.base_noise,
                                 return_parts=True)
    assert torch.equal(same_base.base_noise, first.base_noise)
    assert not torch.equal(same_base.residual_noise, first.residual_noise)
    rebuilt = decomposed_noise(shape, 0.5, base_noise=first.base_noise,
                               residual_noise=first.residual_noise)
    assert torch.equal(rebuilt, first.noise)
    # the key frame (lambda = 1) is the base noise itself
    assert torch.allclose(first.noise[:, :, 3], first.base_noise)


def test_same_seed_same_noise():
    a = decomposed_noise((1, 3, 4, 8, 8), 0.5, torch.Generator().manual_seed(3))
    b = decomposed_noise((1, 3, 4, 8, 8), 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("frames", "lambda_", "match"),
    [
        (1, 0.5, "num_frames"),
        (4, 1.5, r"\[0, 1\]"),
        (4, -0.1, r"\[0, 1\]"),
        (4, [0.5, 0.5, 1.0], "3 values but num_frames is 4"),
        (4, float("nan"), r"\[0, 1\]"),
    ],
)
def test_bad_lambdas_raise_naming_the_argument(frames, lambda_, match):
    with pytest.raises(ValueError, match=match):
        make_lambdas(frames, lambda_)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="shape must be"):
        decomposed_noise((2, 3, 8, 8), 0.5)
    with pytest.raises(ValueError, match="base_noise must have shape"):
        decomposed_noise((2, 3, 4, 8, 8), 0.5, base_noise=torch.zeros(2, 3, 4, 8, 8))


def test_seeded_draw_is_one_draw_per_seed_shared_by_the_batch():
    from videofusion.noise import seeded_draw

    shape = (3, 4, 8, 8)
    draw = seeded_draw(shape, seed=7, batch=3)
    assert draw.shape == (3, *shape)
    # the same standard normal draw for every video of the batch, a copy each (writable)
    expected = torch.randn((1, *shape), generator=torch.Generator().manual_seed(7))[0]
    for row in draw:
        assert torch.equal(row, expected)
    draw[0].zero_()
    assert torch.equal(draw[1], expected)
    assert torch.equal(seeded_draw(shape, seed=7), expected[None])
    assert not torch.equal(seeded_draw(shape, seed=8)[0], expected)
