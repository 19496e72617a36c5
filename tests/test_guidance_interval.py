"""Guidance in a limited interval of noise levels: the noise level of a step and the check."""

import math

import pytest
import torch

from videofusion.guidance_interval import check_guidance_interval, guided_at, noise_level


@pytest.mark.parametrize("alpha_bar, sigma", [(0.2, 2.0), (0.5, 1.0), (0.8, 0.5), (1.0, 0.0),
                                              (0.0, math.inf)])
def test_the_noise_level_is_the_noise_to_signal_ratio(alpha_bar, sigma):
    """sigma_t = sqrt((1 - abar_t) / abar_t): the noise's scale over the signal's."""
    assert noise_level(alpha_bar) == pytest.approx(sigma)
    assert noise_level(torch.tensor([alpha_bar])) == pytest.approx(sigma)


def test_both_ends_of_the_interval_are_guided_and_nothing_outside():
    assert guided_at(0.3, (0.3, 5.0)) and guided_at(5.0, (0.3, 5.0)) and guided_at(1.0, (0.3, 5))
    assert not guided_at(0.29, (0.3, 5.0)) and not guided_at(5.01, (0.3, 5.0))
    assert guided_at(math.inf, (0.0, math.inf)) and guided_at(123.0, None)


@pytest.mark.parametrize("interval", [(0.0, 0.0), (0, 5), [0.3, math.inf], None])
def test_a_range_of_noise_levels_is_accepted(interval):
    checked = check_guidance_interval(interval)
    assert checked is None if interval is None else checked == tuple(map(float, interval))


@pytest.mark.parametrize("interval", [(2.0, 1.0), (-0.1, 1.0), (math.nan, 1.0), (0.0, math.nan),
                                      (1.0,), (0.0, 1.0, 2.0), "05", 3.0, (True, 2.0),
                                      ("0", "1")])
def test_anything_else_is_refused_naming_the_setting(interval):
    with pytest.raises(ValueError, match="guidance_interval"):
        check_guidance_interval(interval)
