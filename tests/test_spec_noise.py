"""Spec §1: what must be independent in the decomposed noise.

The base noise b is one N(0, I) frame per clip: independent across channels, pixels and clips
(only the frames of one clip share it). The residual noises r^i are independent across frames,
channels, pixels and clips. So eps^i and eps^j of one clip correlate only at the same channel
and pixel, with sqrt(lambda^i lambda^j); everything else is uncorrelated.
"""

import pytest
import torch

from videofusion import decomposed_noise, make_lambdas
from videofusion.noise import FreshNoise

SHAPE = (64, 3, 4, 8, 8)  # batch, channels, frames, height, width
LAMBDAS = [0.5, 0.8, 1.0, 0.3]  # key frame 2 at 1
TOL = 0.06  # n >= 3 * 64 * 16 = 3072 pairs per estimate: standard error < 0.02


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


@pytest.fixture(scope="module")
def parts():
    return decomposed_noise(SHAPE, make_lambdas(4, LAMBDAS), torch.Generator().manual_seed(0),
                            return_parts=True)


def test_base_noise_is_standard_normal_and_independent_across_channels_pixels_clips(parts):
    b = parts.base_noise  # (B, C, H, W)
    assert abs(b.mean()) < 0.03 and abs(b.std() - 1) < 0.03
    assert abs(corr(b[:, 0], b[:, 1])) < TOL and abs(corr(b[:, 1], b[:, 2])) < TOL  # channels
    assert abs(corr(b[:, :, :, :-1], b[:, :, :, 1:])) < TOL  # horizontal neighbours
    assert abs(corr(b[:, :, :-1], b[:, :, 1:])) < TOL  # vertical neighbours
    assert abs(corr(b[:-1], b[1:])) < TOL  # clips


def test_residual_noise_is_independent_across_frames(parts):
    r = parts.residual_noise  # (B, C, F, H, W)
    assert abs(r.std() - 1) < 0.03
    for i in range(4):
        for j in range(i + 1, 4):
            assert abs(corr(r[:, :, i], r[:, :, j])) < TOL, (i, j)
    assert abs(corr(r[:, 0], r[:, 1])) < TOL and abs(corr(r[:-1], r[1:])) < TOL
    assert abs(corr(r[..., :-1], r[..., 1:])) < TOL
    # and independent of the base noise
    assert abs(corr(r[:, :, 0], parts.base_noise)) < TOL


def test_combined_noise_correlates_only_at_the_same_channel_pixel_and_clip(parts):
    eps, lam = parts.noise, torch.tensor(LAMBDAS).double()
    for i in range(4):
        assert abs(eps[:, :, i].std() - 1) < 0.04
        for j in range(4):
            if i != j:
                expected = float((lam[i] * lam[j]).sqrt())
                assert abs(corr(eps[:, :, i], eps[:, :, j]) - expected) < TOL, (i, j)
                # another channel, another pixel, another clip: no correlation
                assert abs(corr(eps[:, 0, i], eps[:, 1, j])) < TOL
                assert abs(corr(eps[:, :, i, :, :-1], eps[:, :, j, :, 1:])) < TOL
                assert abs(corr(eps[:-1, :, i], eps[1:, :, j])) < TOL


def test_fresh_noise_of_the_sampler_has_the_same_independence():
    lambdas = make_lambdas(4, LAMBDAS)
    fresh = FreshNoise(lambdas, torch.Generator().manual_seed(1))
    first, second = fresh(SHAPE), fresh(SHAPE)
    # a new draw every step, and decomposed like spec §1 within each
    assert abs(corr(first, second)) < TOL
    assert abs(corr(first[:, :, 0], first[:, :, 1]) - (0.5 * 0.8) ** 0.5) < TOL
    assert abs(corr(first[:, :, 0], first[:, :, 3]) - (0.5 * 0.3) ** 0.5) < TOL
    assert abs(corr(first[:-1], first[1:])) < TOL
    assert abs(corr(first[:, 0], first[:, 1])) < TOL
    assert abs(first[:, :, 2].std() - 1) < 0.04


def test_fresh_noise_with_a_fixed_base_keeps_residuals_independent_across_frames():
    lambdas = make_lambdas(4, LAMBDAS)
    base = torch.randn(SHAPE[0], 3, 8, 8, generator=torch.Generator().manual_seed(5))
    draw = FreshNoise(lambdas, torch.Generator().manual_seed(2), base_noise=base)(SHAPE)
    key = draw[:, :, 2]  # all base: the clip's own base stream
    residual = (draw - lambdas.sqrt().view(1, 1, -1, 1, 1) * key.unsqueeze(2)) \
        / (1 - lambdas).clamp_min(1e-12).sqrt().view(1, 1, -1, 1, 1)
    assert abs(corr(residual[:, :, 0], residual[:, :, 1])) < TOL
    assert abs(corr(residual[:, :, 0], residual[:, :, 3])) < TOL
    assert abs(residual[:, :, 0].std() - 1) < 0.04
    assert abs(corr(key[:-1], key[1:])) < TOL  # each clip's base stream is its own


# ---- defaults, dtypes and devices: what the draw promises beyond its statistics -------------


def test_the_default_lambda_is_one_half_with_the_key_frame_at_one():
    assert make_lambdas(4).tolist() == [0.5, 0.5, 1.0, 0.5]
    assert make_lambdas(2, 0.3).tolist() == pytest.approx([0.3, 1.0])  # the shortest clip
    parts = decomposed_noise((2, 1, 3, 2, 2), generator=torch.Generator().manual_seed(0),
                             return_parts=True)
    expected = 0.5 ** 0.5 * parts.base_noise + 0.5 ** 0.5 * parts.residual_noise[:, :, 0]
    torch.testing.assert_close(parts.noise[:, :, 0], expected)


@pytest.mark.parametrize("bad", [1 + 1e-12, [1.0, 1 + 1e-12, 1.0], -1e-12])
def test_lambdas_just_outside_the_unit_interval_are_refused(bad):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_lambdas(3, bad)


def test_the_requested_dtype_and_device_are_honoured():
    shape = (2, 1, 3, 2, 2)
    given = torch.randn(2, 1, 2, 2)  # float32 parts are cast to the requested dtype
    parts = decomposed_noise(shape, 0.5, torch.Generator().manual_seed(0), dtype=torch.float64,
                             base_noise=given, return_parts=True)
    assert parts.noise.dtype == parts.base_noise.dtype == parts.residual_noise.dtype \
        == torch.float64
    # float64 all the way: the combination is exact to float64 precision
    exact = 0.5 ** 0.5 * given.double() + 0.5 ** 0.5 * parts.residual_noise[:, :, 0]
    torch.testing.assert_close(parts.noise[:, :, 0], exact, rtol=1e-14, atol=1e-14)
    drawn = decomposed_noise(shape, 0.5, torch.Generator().manual_seed(0), dtype=torch.float64,
                             residual_noise=torch.randn(shape), return_parts=True)
    assert drawn.base_noise.dtype == drawn.residual_noise.dtype == torch.float64
    meta = decomposed_noise(shape, 0.5, device="meta", return_parts=True)
    assert {t.device.type for t in meta} == {"meta"}
    meta = decomposed_noise(shape, 0.5, device="meta", base_noise=given,
                            residual_noise=torch.randn(shape), return_parts=True)
    assert {t.device.type for t in meta} == {"meta"}
    fresh = FreshNoise(make_lambdas(3), None, base_noise=given)
    assert fresh(shape, dtype=torch.float64).dtype == torch.float64
    assert fresh(shape, device="meta").device.type == "meta"
    assert FreshNoise(make_lambdas(3), None, residual_noise=torch.randn(shape))(
        shape, device="meta", dtype=torch.float16).dtype == torch.float16


def test_a_wrongly_shaped_residual_noise_is_refused_naming_both_shapes():
    with pytest.raises(ValueError, match=r"residual_noise must have shape \(2, 1, 3, 2, 2\), "
                                         r"got \(2, 1, 4, 2, 2\)"):
        decomposed_noise((2, 1, 3, 2, 2), 0.5, residual_noise=torch.zeros(2, 1, 4, 2, 2))


def test_fixed_noise_streams_do_not_depend_on_the_dtype_it_was_given_in():
    from videofusion.noise import seeded_by

    noise = torch.randn(1, 2, 3)
    a = torch.randn(4, generator=seeded_by(noise))
    b = torch.randn(4, generator=seeded_by(noise.double()))
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.randn(4, generator=seeded_by(noise + 1)))
