import numpy as np
import pytest

from videofusion.metrics import bootstrap


def test_the_spread_of_a_mean_is_the_standard_error():
    values = np.random.default_rng(1).normal(0.0, 2.0, 400)  # standard error 0.1
    assert bootstrap.mean_std(values, num_resamples=400) == pytest.approx(0.1, rel=0.12)


def test_a_constant_has_no_spread_and_the_seed_fixes_the_draw():
    assert bootstrap.mean_std(np.full(10, 3.0)) == 0.0
    values = np.arange(20.0)
    assert bootstrap.mean_std(values, seed=3) == bootstrap.mean_std(values, seed=3)
    assert bootstrap.mean_std(values, seed=3) != bootstrap.mean_std(values, seed=4)


def test_undefined_items_and_resamples_are_left_out():
    values = np.array([1.0, np.nan, 3.0, np.nan])
    spread = bootstrap.mean_std(values, num_resamples=200)
    assert spread is not None and 0 < spread < 1.0
    assert bootstrap.mean_std(np.full(5, np.nan)) is None
    results = iter([None, 1.0, float("nan"), 3.0])  # two of four resamples defined
    assert bootstrap.bootstrap_std(lambda i: next(results), 3, num_resamples=4) == pytest.approx(
        np.std([1.0, 3.0], ddof=1))
    assert bootstrap.bootstrap_std(lambda i: None, 3) is None


def test_the_statistic_sees_indices_drawn_with_replacement():
    seen = []
    bootstrap.bootstrap_std(lambda i: seen.append(i) or 0.0, 5, num_resamples=50)
    assert all(len(i) == 5 and i.min() >= 0 and i.max() < 5 for i in seen)
    assert any(len(set(i.tolist())) < 5 for i in seen)  # some index repeats


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="num_items"):
        bootstrap.bootstrap_std(lambda i: 0.0, 0)
    with pytest.raises(ValueError, match="num_resamples"):
        bootstrap.bootstrap_std(lambda i: 0.0, 3, num_resamples=1)


def test_the_default_draw_is_seed_zero_and_two_resamples_are_enough():
    values = np.arange(20.0)
    assert bootstrap.mean_std(values) == bootstrap.mean_std(values, seed=0)
    assert bootstrap.bootstrap_std(lambda i: values[i].mean(), 20) == bootstrap.bootstrap_std(
        lambda i: values[i].mean(), 20, seed=0)
    assert bootstrap.bootstrap_std(lambda i: values[i].mean(), 20, num_resamples=2) is not None
