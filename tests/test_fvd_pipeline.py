"""FVD's pipeline around the network, with a stand-in network so that it runs in a second: what
reaches the I3D (value range, clamping, channel order, frame count, 224x224, batches), which
videos are refused, and that ``compute_fvd`` / ``compute_kvd`` / ``compute_video_metrics`` equal
the Fréchet distance, KVD and IS computed here independently (numpy/scipy) on the same features.

The real I3D against the JAX reference is in ``tests/test_metrics_fvd.py``."""

import os
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.special import softmax

from videofusion.metrics import (
    I3DFeatureExtractor,
    classifier_inception_score,
    compute_fvd,
    compute_kvd,
    compute_video_metrics,
    feature_statistics,
    frechet_distance,
    frechet_distance_bootstrap_std,
    inception_score,
    kernel_distance,
    metrics_from_features,
)
from videofusion.metrics.fvd import _to_i3d_input


class Recorder(torch.nn.Module):
    """Stand-in I3D: records its inputs; features = per-channel, per-frame-half means (6-d)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.clone())
        t = x.shape[2] // 2
        first, second = x[:, :, :t].mean(dim=(2, 3, 4)), x[:, :, t:].mean(dim=(2, 3, 4))
        return torch.cat([first, second], dim=1) * self.weight


def clips(n, frames=16, seed=0, shift=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.integers(0, 200, size=(n, frames, 4, 5, 3)) + shift, 0, 255).astype(
        np.uint8)


def features_of(videos_uint8) -> np.ndarray:
    """The stand-in's features, computed independently from the protocol: resize does not change
    a frame's mean only approximately, so resize first with the protocol's own resize."""
    x = _to_i3d_input(videos_uint8).double()
    t = x.shape[2] // 2
    return torch.cat([x[:, :, :t].mean(dim=(2, 3, 4)), x[:, :, t:].mean(dim=(2, 3, 4))],
                     dim=1).numpy()


def scipy_fvd(a, b):
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


# ---- what reaches the network -----------------------------------------------------------------

def test_the_network_gets_float_rgb_in_minus_one_to_one_at_224_with_all_frames():
    network = Recorder()
    extractor = I3DFeatureExtractor(network)
    videos = np.zeros((3, 5, 4, 5, 3), np.uint8)
    videos[..., 0] = 255  # red: channel 0 at +1, the others at -1
    videos[:, 3] = 0  # frame 3 black
    features, frames = extractor.embed(videos, batch_size=2, progress=False)
    assert frames == 5 and features.shape == (3, 6) and features.dtype == np.float64
    assert [x.shape for x in network.inputs] == [(2, 3, 5, 224, 224), (1, 3, 5, 224, 224)]
    x = torch.cat(network.inputs)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x[:, 0, 3], torch.full((3, 224, 224), -1.0))
    torch.testing.assert_close(x[:, 0, :3], torch.ones(3, 3, 224, 224))
    torch.testing.assert_close(x[:, 1:], torch.full((3, 2, 5, 224, 224), -1.0))


def test_uint8_floats_and_tensors_map_to_the_same_input_and_overshoots_are_clamped():
    u8 = np.array([0, 51, 255], np.uint8).reshape(1, 1, 1, 3, 1).repeat(3, axis=4)
    u8 = np.repeat(u8, 2, axis=3)  # (1, 1, 1, 6, 3)
    expected = torch.tensor([-1.0, 51 / 127.5 - 1, 1.0])
    for video in (u8, u8.astype(np.float32) / 255, u8.astype(np.float64) / 255):
        x = _to_i3d_input(video)
        assert x.shape == (1, 3, 1, 224, 224) and x.dtype == torch.float32
        torch.testing.assert_close(x[0, :, 0, 0, 0], expected[[0, 0, 0]], rtol=0, atol=1e-6)
        torch.testing.assert_close(x[0, :, 0, -1, -1], expected[[2, 2, 2]], rtol=0, atol=1e-6)
    # unclamped samples a little off [0, 1] / [-1, 1] are clamped, channel by channel
    over = np.full((1, 1, 224, 224, 3), [1.2, -0.2, 0.5])
    torch.testing.assert_close(_to_i3d_input(over)[0, :, 0, 0, 0], torch.tensor([1.0, -1.0, 0.0]))
    tensor = torch.tensor([1.9, -1.9, 0.25]).view(1, 3, 1, 1, 1).expand(1, 3, 1, 224, 224)
    torch.testing.assert_close(_to_i3d_input(tensor)[0, :, 0, 0, 0],
                               torch.tensor([1.0, -1.0, 0.25]))
    # already 224x224: passed through as it is
    exact = torch.rand(1, 3, 2, 224, 224) * 2 - 1
    assert torch.equal(_to_i3d_input(exact.double()), exact)


@pytest.mark.parametrize("video, message", [
    (np.zeros((2, 4, 8, 8)), "videos: numpy input must be (batch, frames, H, W, 3), got "
                             "(2, 4, 8, 8)"),
    (np.zeros((2, 4, 8, 8, 4)), "videos: numpy input must be (batch, frames, H, W, 3), got "
                                "(2, 4, 8, 8, 4)"),
    (np.zeros((1, 4, 8, 8, 3), np.int32), "videos: numpy input must be uint8 or float, got int32"),
    (torch.zeros(1, 4, 3, 8, 8), "videos: tensor input must be float (batch, 3, frames, H, W) in "
                                 "[-1, 1], got torch.float32 (1, 4, 3, 8, 8)"),
    (torch.zeros(1, 3, 4, 8), "videos: tensor input must be float (batch, 3, frames, H, W) in "
                              "[-1, 1], got torch.float32 (1, 3, 4, 8)"),
    (torch.zeros(1, 3, 4, 8, 8, dtype=torch.uint8), "videos: tensor input must be float (batch, "
                                                    "3, frames, H, W) in [-1, 1], got torch.uint8 "
                                                    "(1, 3, 4, 8, 8)"),
    ([[1.0]], "videos: expected a torch.Tensor or numpy array, got <class 'list'>"),
    (torch.full((1, 3, 1, 8, 8), 2.01), "videos: pixel values far outside the expected range"),
    (np.full((1, 1, 8, 8, 3), -0.51), "videos: pixel values far outside the expected range"),
])
def test_videos_off_the_documented_layouts_are_refused(video, message):
    with pytest.raises(ValueError) as err:
        _to_i3d_input(video)
    assert str(err.value).startswith(message), err.value


def test_values_at_the_edge_of_the_tolerated_range_are_clamped_not_refused():
    x = _to_i3d_input(torch.full((1, 3, 1, 224, 224), -2.0))
    assert torch.equal(x, torch.full_like(x, -1.0))
    assert _to_i3d_input(np.zeros((0, 1, 8, 8, 3), np.uint8)).shape == (0, 3, 1, 224, 224)


def test_streamed_batches_and_set_errors():
    network = Recorder()
    extractor = I3DFeatureExtractor(network)
    a, b = clips(3, frames=4, seed=0), clips(2, frames=4, seed=1)
    streamed, frames = extractor.embed([a, b], batch_size=2, progress=False)
    assert frames == 4 and [x.shape[0] for x in network.inputs] == [2, 1, 2]
    whole = extractor.extract(np.concatenate([a, b]), batch_size=5, progress=False)
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-6)
    np.testing.assert_allclose(whole, features_of(np.concatenate([a, b])), rtol=0, atol=1e-6)
    logits, probs = extractor.extract(a, return_probs=True, progress=False)
    np.testing.assert_allclose(probs, softmax(logits, axis=1), rtol=1e-12)
    tensor = torch.from_numpy(a).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    features, frames = extractor.embed(tensor, progress=False)
    assert frames == 4
    np.testing.assert_allclose(features, features_of(a), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="batch_size: must be >= 1, got 0"):
        extractor.embed(a, batch_size=0)
    with pytest.raises(ValueError, match="videos: the set is empty"):
        extractor.embed([], progress=False)
    with pytest.raises(ValueError, match="same frame count, got 4 and 6"):
        extractor.embed([a, clips(1, frames=6)], progress=False)


def test_the_network_is_loaded_lazily_once(monkeypatch):
    from videofusion.metrics import fvd

    loads = []

    def load(directory=None):
        loads.append(directory)
        return Recorder()

    monkeypatch.setattr(fvd, "load_i3d_kinetics400", load)
    extractor = I3DFeatureExtractor()
    assert loads == [] and extractor.network is None
    extractor.embed(clips(2, frames=2), progress=False)
    extractor.embed(clips(2, frames=2), progress=False)
    assert loads == [None]
    assert isinstance(I3DFeatureExtractor.from_cache("somewhere").network, Recorder)
    assert loads == [None, "somewhere"]
    # without an extractor, the metrics load the I3D themselves
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for metric in (compute_fvd, compute_kvd, compute_video_metrics):
            metric(clips(3, frames=2), clips(3, frames=2, seed=1), progress=False)
    assert loads == [None, "somewhere", None, None, None]


# ---- the metrics of two sets, against independent computations --------------------------------

def test_compute_fvd_kvd_and_all_metrics_equal_independent_computations():
    real, fake = clips(8, seed=0), clips(7, seed=1, shift=30)
    extractor = I3DFeatureExtractor(Recorder())
    a, b = features_of(real), features_of(fake)
    expected_fvd = scipy_fvd(a, b)
    assert expected_fvd > 0.01
    assert compute_fvd(real, fake, extractor, progress=False) == pytest.approx(expected_fvd,
                                                                               rel=1e-6)
    kvd = compute_kvd(real, fake, extractor, batch_size=3, progress=False)
    assert kvd == pytest.approx(1000.0 * kernel_distance(a, b), rel=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 16 frames, 8 and 7 videos for 6-d features: no warning
        metrics = compute_video_metrics(real, fake, extractor, batch_size=4, progress=False)
    assert metrics["fvd"] == pytest.approx(expected_fvd, rel=1e-6)
    assert metrics["kvd_x1000"] == pytest.approx(kvd, rel=1e-6)
    assert (metrics["num_real"], metrics["num_fake"], metrics["num_frames"]) == (8, 7, 16)
    p = softmax(b, axis=1)
    marginal = p.mean(axis=0)
    expected_is = np.exp(np.mean(np.sum(p * (np.log(p) - np.log(marginal)), axis=1)))
    assert metrics["is_i3d_k400"] == pytest.approx(expected_is, rel=1e-6)


def test_sets_of_other_lengths_warn_and_sets_of_two_lengths_are_refused():
    extractor = I3DFeatureExtractor(Recorder())
    real, fake = clips(8, frames=4, seed=0), clips(8, frames=4, seed=1)
    with pytest.warns(UserWarning, match="^FVD is defined on 16-frame clips, got 4: numbers are "
                                         "not comparable with published ones$") as record:
        compute_fvd(real, fake, extractor, progress=False)
    if "MUTANT_UNDER_TEST" not in os.environ:  # mutmut's trampoline adds a stack frame
        assert record[0].filename == __file__  # points at the caller
    with pytest.raises(ValueError, match="fake_videos: 6 frames per video but real_videos have 4"):
        compute_kvd([real], [clips(8, frames=6)], extractor, progress=False)  # found late
    with pytest.raises(ValueError, match="fake_videos: 6 frames per video but real_videos have 4"):
        compute_video_metrics(real, clips(8, frames=6), extractor, progress=False)
    tensor = torch.zeros(2, 3, 6, 4, 4)
    with pytest.raises(ValueError, match="fake_videos: 6 frames per video but real_videos have 4"):
        compute_fvd(real, tensor, I3DFeatureExtractor(torch.nn.Identity()), progress=False)


# ---- the statistics -----------------------------------------------------------------------------

def test_statistics_are_the_mean_and_unbiased_covariance_and_warn_up_to_the_dimension():
    x = np.random.default_rng(0).normal(size=(7, 3))
    mu, sigma = feature_statistics(x.tolist())
    np.testing.assert_allclose(mu, x.mean(axis=0))
    np.testing.assert_allclose(sigma, (x - mu).T @ (x - mu) / 6)
    with pytest.warns(UserWarning, match="only 3 videos for 3-d features"):
        feature_statistics(x[:3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feature_statistics(x[:4])
    mu, sigma = feature_statistics(x[:, :1])  # one feature: a 1x1 covariance
    assert sigma.shape == (1, 1)
    with pytest.raises(ValueError, match=r"features: expected a \(num_videos, feature_dim\) "
                                         r"array, got \(7,\)"):
        feature_statistics(x[:, 0])
    with pytest.raises(ValueError, match="features: need at least 2 videos for a covariance, "
                                         "got 1"):
        feature_statistics(x[:1])
    with pytest.raises(ValueError, match="features: contains NaN or infinite values"):
        feature_statistics(np.array([[0.0], [np.inf]]))


def test_frechet_distance_of_singular_covariances_against_scipy_and_its_input_checks():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 6)), rng.normal(size=(5, 6)) + 0.5  # rank 3 and 4 of 6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats_a, stats_b = feature_statistics(a), feature_statistics(b)
    expected = scipy_fvd(a, b)
    assert frechet_distance(*stats_a, *stats_b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(*stats_b, *stats_a) == pytest.approx(expected, rel=1e-6)
    # a covariance with a round-off negative eigenvalue gives no NaN
    sigma = np.diag([1.0, -1e-12])
    assert frechet_distance(np.zeros(2), sigma, np.zeros(2), sigma) == pytest.approx(0, abs=1e-9)
    assert frechet_distance(np.zeros(2), sigma, np.ones(2), sigma) == pytest.approx(2.0)
    # its square root takes that eigenvalue as 0: tr(s1) + tr(s2) - 2 (sqrt(1 * 1) + sqrt(0 * 1))
    sigma = np.diag([1.0, -1e-6])
    assert frechet_distance(np.zeros(2), sigma, np.zeros(2), np.eye(2)) == pytest.approx(
        1 - 1e-6, rel=1e-9)
    mu, s = np.zeros(2), np.eye(2)
    for args, message in [((np.zeros(3), s, mu, s), r"mu1, mu2: expected two vectors of one "
                           r"length, got \(3,\), \(2,\)"),
                          ((mu, s, np.zeros(3), s), r"mu1, mu2"),
                          ((np.zeros((2, 1)), s, mu, s), r"mu1, mu2"),
                          ((0.0, s, mu, s), r"mu1, mu2"),
                          ((mu, np.eye(3), mu, s), r"sigma1, sigma2: expected \(2, 2\), got "
                           r"\(3, 3\), \(2, 2\)"),
                          ((mu, s, mu, np.eye(3)), r"sigma1, sigma2"),
                          ((mu + np.nan, s, mu, s), "mu1: contains NaN or infinite values"),
                          ((mu, s, mu + np.inf, s), "mu2: contains NaN"),
                          ((mu, s * np.nan, mu, s), "sigma1: contains NaN"),
                          ((mu, s, mu, np.full((2, 2), np.inf)), "sigma2: contains NaN")]:
        with pytest.raises(ValueError, match=message):
            frechet_distance(*args)


def test_the_bootstrap_spread_resamples_the_fake_set_with_replacement():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(30, 3)), rng.normal(size=(12, 3)) + 0.3
    mu, sigma = real.mean(axis=0), np.cov(real, rowvar=False)
    draws = np.random.default_rng(5)
    expected = np.std([frechet_distance(mu, sigma, *feature_statistics(
        fake[draws.integers(0, 12, 12)])) for _ in range(20)], ddof=1)
    assert frechet_distance_bootstrap_std(real, fake, num_resamples=20, seed=5) == \
        pytest.approx(expected, rel=1e-12)
    assert frechet_distance_bootstrap_std(real, fake, num_resamples=2) > 0
    with pytest.raises(ValueError, match="num_resamples: need at least 2, got 1"):
        frechet_distance_bootstrap_std(real, fake, num_resamples=1)
    with pytest.raises(ValueError, match="real_features: need at least 2"):
        frechet_distance_bootstrap_std(real[:1], fake)
    with pytest.raises(ValueError, match="fake_features: need at least 2"):
        frechet_distance_bootstrap_std(real, fake[:1])


def test_kvd_on_subsets_draws_subsets_without_replacement():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 3)), rng.normal(size=(7, 3)) + 0.5
    draws = np.random.default_rng(4)
    expected = np.mean([kernel_distance(x[draws.choice(9, 5, replace=False)],
                                        y[draws.choice(7, 5, replace=False)]) for _ in range(6)])
    assert kernel_distance(x, y, subset_size=5, num_subsets=6, seed=4) == pytest.approx(
        expected, rel=1e-12)
    # a set no larger than the subset size on one side: subsets of the smaller size
    draws = np.random.default_rng(0)
    expected = np.mean([kernel_distance(x[draws.choice(9, 7, replace=False)],
                                        y[draws.choice(7, 7, replace=False)]) for _ in range(3)])
    assert kernel_distance(x, y, subset_size=8, num_subsets=3) == pytest.approx(expected,
                                                                                rel=1e-12)
    assert kernel_distance(x, y, subset_size=9) == kernel_distance(x, y)
    with pytest.raises(ValueError, match="features2: dimension 2 differs from features1 3"):
        kernel_distance(x, y[:, :2])
    with pytest.raises(ValueError, match="subset_size, num_subsets: need subset_size >= 2"):
        kernel_distance(x, y, subset_size=1)
    with pytest.raises(ValueError, match="subset_size, num_subsets"):
        kernel_distance(x, y, num_subsets=0)
    kernel_distance(x, y, subset_size=2, num_subsets=1)
    with pytest.raises(ValueError, match="features1: need at least 2"):
        kernel_distance(x[:1], y)


def test_inception_score_splits_and_input_checks():
    p = softmax(np.random.default_rng(0).normal(size=(6, 4)) * 3, axis=1)
    scores = []
    for part in (p[:3], p[3:]):
        marginal = part.mean(axis=0)
        scores.append(np.exp(np.mean(np.sum(part * np.log(part / marginal), axis=1))))
    mean, std = inception_score(p, num_splits=2)
    assert (mean, std) == (pytest.approx(np.mean(scores)), pytest.approx(np.std(scores)))
    assert inception_score(p)[1] == 0.0
    assert inception_score(p, num_splits=6)[0] == pytest.approx(1.0)
    inception_score(p + 5e-5 / 4)  # rows summing to 1 within 1e-4 pass
    for probs, message in [(p[0], "probs: expected finite non-negative"),
                           (p * np.nan, "probs: expected finite"),
                           (p - p.max(), "probs: expected finite non-negative"),
                           (p * 1.001, "rows must sum to 1")]:
        with pytest.raises(ValueError, match=message):
            inception_score(probs)
    for splits in (0, 7):
        with pytest.raises(ValueError, match=rf"num_splits: must be in \[1, 6\], got {splits}"):
            inception_score(p, num_splits=splits)


def test_metrics_from_features_refuses_features_of_two_sizes():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="fake_features: dimension 3 differs from 4"):
        metrics_from_features(rng.normal(size=(5, 4)), rng.normal(size=(5, 3)))


def test_a_user_classifier_is_evaluated_in_eval_mode_and_left_as_it_was():
    class Mode(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))
            self.modes, self.sizes = [], []

        def forward(self, x):
            self.modes.append(self.training)
            self.sizes.append(len(x))
            return torch.stack([x.flatten(1).mean(1), -x.flatten(1).mean(1)], dim=1) * 50

    classifier = Mode()
    videos = np.concatenate([np.ones((3, 2, 2)), -np.ones((2, 2, 2))])
    assert classifier_inception_score(classifier, videos, batch_size=2)[0] == pytest.approx(
        5 / (3 ** 0.6 * 2 ** 0.4), rel=1e-6)
    assert classifier.modes == [False] * 3 and classifier.sizes == [2, 2, 1]
    assert classifier.training is True
    classifier.eval()
    classifier_inception_score(classifier, videos, batch_size=5)
    assert classifier.training is False


def test_the_documented_defaults_batches_of_8_a_progress_bar_and_the_given_is_splits(capsys):
    network = Recorder()
    extractor = I3DFeatureExtractor(network)
    real, fake = clips(9, frames=2, seed=0), clips(9, frames=2, seed=1, shift=30)
    calls = [lambda: compute_fvd(real, fake, extractor),
             lambda: compute_kvd(real, fake, extractor),
             lambda: compute_video_metrics(real, fake, extractor),
             lambda: extractor.embed(np.concatenate([real, fake])),
             lambda: extractor.extract(np.concatenate([real, fake]))]
    for call in calls:
        network.inputs.clear()
        capsys.readouterr()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 2 frames, 9 videos for 6-d features: on purpose
            call()
        assert [len(x) for x in network.inputs] in ([8, 1, 8, 1], [8, 8, 2])
        bar = capsys.readouterr().err  # the bar, set by set, counting videos
        assert "I3D: 100%" in bar and ("video/s" in bar or "s/video" in bar), bar
        assert "| 9/9 [" in bar or "| 18/18 [" in bar, bar
    network.inputs.clear()
    extractor.embed(real[:2], batch_size=1, progress=False)  # one video at a time is fine
    assert [len(x) for x in network.inputs] == [1, 1]
    capsys.readouterr()
    extractor.extract(real, progress=False)
    assert capsys.readouterr().err == ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for quiet in (lambda: compute_fvd(real, fake, extractor, progress=False),
                      lambda: compute_kvd(real, fake, extractor, progress=False),
                      lambda: compute_video_metrics(real, fake, extractor, progress=False)):
            capsys.readouterr()
            quiet()
            assert capsys.readouterr().err == ""
        metrics = compute_video_metrics(real, fake, extractor, is_splits=3, progress=False)
        expected = metrics_from_features(features_of(real), features_of(fake), is_splits=3)
    assert metrics["is_i3d_k400_std"] == pytest.approx(expected["is_i3d_k400_std"], rel=1e-6)
    assert metrics["is_i3d_k400_std"] > 0
