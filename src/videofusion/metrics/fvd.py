"""FVD, KVD and IS of generated videos, on Kinetics-400 I3D logits.

Protocol (Unterthiner et al., 2018, "Towards accurate generative models of video"): 16-frame
clips, every frame resized bilinearly to 224x224 (no crop), pixels in [-1, 1], embedded by the
Kinetics-400 I3D as its 400 logits averaged over time. Statistics are computed in float64.

* FVD: Fréchet distance between Gaussians fitted to the real and the generated embeddings.
* KVD: unbiased MMD^2 with the polynomial kernel ``(x.y / d + 1)^3`` (as KID), reported x1000.
* IS (I3D-K400): Inception Score from the I3D's Kinetics-400 softmax. VideoFusion's paper reports
  IS from a C3D trained on UCF101, whose weights are not available offline; use
  :func:`classifier_inception_score` with such a classifier to reproduce that number.

All three depend on the number of videos, which must be reported with them.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import softmax, xlogy
from torch import nn
from tqdm.auto import tqdm

from videofusion.choices import I3D_METRICS, PROTOCOL_FRAMES
from videofusion.metrics.i3d import INPUT_SIZE, InceptionI3d, load_i3d_kinetics400

# After mapping to [-1, 1], values beyond this mean the wrong pixel convention was passed
# (e.g. [0, 255] floats); smaller overshoots (unclamped samples) are clamped.
_MAX_ABS = 2.0

# A video set: one array/tensor of videos, or an iterable of such batches (to stream large sets).
# torch: (batch, channels, frames, H, W) float in [-1, 1], the library layout;
# numpy: (batch, frames, H, W, channels), uint8 in [0, 255] or float in [0, 1] (pipeline output).
Videos = torch.Tensor | np.ndarray | Iterable[torch.Tensor | np.ndarray]


def _to_i3d_input(batch: torch.Tensor | np.ndarray) -> torch.Tensor:
    """One batch in any accepted convention -> float32 (batch, 3, frames, 224, 224) in [-1, 1]."""
    if isinstance(batch, np.ndarray):
        if batch.ndim != 5 or batch.shape[-1] != 3:
            raise ValueError(
                f"videos: numpy input must be (batch, frames, H, W, 3), got {batch.shape}"
            )
        if batch.dtype == np.uint8:
            video = torch.from_numpy(batch).float() / 127.5 - 1.0
        elif np.issubdtype(batch.dtype, np.floating):
            video = torch.from_numpy(np.asarray(batch, dtype=np.float32)) * 2.0 - 1.0
        else:
            raise ValueError(f"videos: numpy input must be uint8 or float, got {batch.dtype}")
        video = video.permute(0, 4, 1, 2, 3)
    elif isinstance(batch, torch.Tensor):
        if batch.ndim != 5 or batch.shape[1] != 3 or not batch.is_floating_point():
            raise ValueError(
                "videos: tensor input must be float (batch, 3, frames, H, W) in [-1, 1], "
                f"got {batch.dtype} {tuple(batch.shape)}"
            )
        video = batch.float()
    else:
        raise ValueError(f"videos: expected a torch.Tensor or numpy array, got {type(batch)}")
    if video.numel() and video.abs().max() > _MAX_ABS:
        raise ValueError("videos: pixel values far outside the expected range (see layouts)")
    video = video.clamp(-1.0, 1.0)
    b, c, t, h, w = video.shape
    if (h, w) != (INPUT_SIZE, INPUT_SIZE):
        frames = video.transpose(1, 2).reshape(b * t, c, h, w)
        frames = F.interpolate(
            frames, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False
        )
        video = frames.reshape(b, t, c, INPUT_SIZE, INPUT_SIZE).transpose(1, 2)
    return video


def _num_videos(videos: Videos) -> int | None:
    return len(videos) if isinstance(videos, np.ndarray | torch.Tensor) else None


def _num_frames(videos: Videos) -> int | None:
    if isinstance(videos, np.ndarray) and videos.ndim == 5:
        return videos.shape[1]
    if isinstance(videos, torch.Tensor) and videos.ndim == 5:
        return videos.shape[2]
    return None


def _batches(videos: Videos, batch_size: int) -> Iterator[torch.Tensor | np.ndarray]:
    chunks = [videos] if isinstance(videos, np.ndarray | torch.Tensor) else videos
    for chunk in chunks:
        for start in range(0, len(chunk), batch_size):
            yield chunk[start : start + batch_size]


class I3DFeatureExtractor(nn.Module):
    """Kinetics-400 I3D embedding of videos for FVD/KVD/IS.

    The network loads lazily on first use (or eagerly with :meth:`from_cache`); move it with
    ``.to(device)`` after loading.
    """

    def __init__(self, network: InceptionI3d | None = None):
        super().__init__()
        self.network = network

    @classmethod
    def from_cache(cls, directory: str | None = None) -> I3DFeatureExtractor:
        """Load the weights now (see :func:`~videofusion.metrics.i3d.load_i3d_kinetics400`)."""
        return cls(load_i3d_kinetics400(directory))

    def _loaded_network(self) -> InceptionI3d:
        if self.network is None:
            self.network = load_i3d_kinetics400()
        return self.network

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        """``(batch, 3, frames, H, W)`` in [-1, 1] -> ``(batch, 400)`` time-averaged logits."""
        network = self._loaded_network()
        device = next(network.parameters()).device
        return network(_to_i3d_input(videos).to(device))

    def embed(
        self, videos: Videos, batch_size: int = 8, progress: bool = True
    ) -> tuple[np.ndarray, int]:
        """Logits ``(N, 400)`` float64 and the (common) frame count of the set."""
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        features, frames = [], None
        bar = tqdm(total=_num_videos(videos), unit="video", desc="I3D",  # pragma: no mutate
                   disable=not progress)  # pragma: no mutate
        with torch.inference_mode(), bar:
            for batch in _batches(videos, batch_size):
                batch_frames = _num_frames(batch)
                if frames is not None and batch_frames != frames:
                    raise ValueError(
                        f"videos: all videos of a set need the same frame count, "
                        f"got {frames} and {batch_frames}"
                    )
                frames = batch_frames
                features.append(self(batch).double().cpu().numpy())
                bar.update(len(batch))
        if not features:
            raise ValueError("videos: the set is empty")
        return np.concatenate(features), frames

    def extract(
        self,
        videos: Videos,
        batch_size: int = 8,
        return_probs: bool = False,
        progress: bool = True,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """I3D features ``(N, 400)`` float64; with ``return_probs`` also their softmax."""
        features, _ = self.embed(videos, batch_size, progress)
        return (features, softmax(features, axis=1)) if return_probs else features


def _as_features(features: np.ndarray, name: str, min_videos: int = 2) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a (num_videos, feature_dim) array, got {x.shape}")
    if x.shape[0] < min_videos:
        raise ValueError(f"{name}: need at least 2 videos for a covariance, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return x


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64) of ``(num_videos, feature_dim)`` features.

    Warns when there are no more videos than feature dimensions: the covariance is then
    rank-deficient and FVD is strongly biased upwards (FVD papers use thousands of videos).
    """
    x = _as_features(features, "features")
    n, dim = x.shape
    if n <= dim:
        warnings.warn(
            f"only {n} videos for {dim}-d features: the covariance is rank-deficient, so the "
            "Fréchet distance is biased; report the number of videos with it",
            stacklevel=2,
        )
    return _statistics(x)


def _statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root by eigendecomposition; round-off negative eigenvalues -> 0."""
    eigvals, eigvecs = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    ``|mu1 - mu2|^2 + tr(s1 + s2) - 2 tr((s1 s2)^1/2)``, with the last trace taken as the sum of
    square roots of the eigenvalues of the symmetric PSD ``s1^1/2 s2 s1^1/2`` (similar to
    ``s1 s2``): no complex parts, stable for singular covariances, never NaN.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    dim = mu1.shape[-1] if mu1.ndim else 0
    if mu1.shape != (dim,) or mu2.shape != (dim,):
        raise ValueError(
            f"mu1, mu2: expected two vectors of one length, got {mu1.shape}, {mu2.shape}"
        )
    if sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(
            f"sigma1, sigma2: expected ({dim}, {dim}), got {sigma1.shape}, {sigma2.shape}"
        )
    for name, value in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.isfinite(value).all():
            raise ValueError(f"{name}: contains NaN or infinite values")
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    eigvals = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigvals, 0.0, None)).sum()
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    return max(float(distance), 0.0)


def frechet_distance_bootstrap_std(
    real_features: np.ndarray,
    fake_features: np.ndarray,
    num_resamples: int = 100,
    seed: int = 0,
) -> float:
    """Spread of the Fréchet distance over fake sets resampled with replacement.

    Rows of an ablation table share one real set, so what separates them beyond chance is the
    sampling noise of each fake set; this estimates it. Resamples repeat videos, which lowers
    the covariance's rank, so their distances sit above the point estimate: use the spread, not
    their mean.
    """
    real = _as_features(real_features, "real_features")
    fake = _as_features(fake_features, "fake_features")
    if num_resamples < 2:
        raise ValueError(f"num_resamples: need at least 2, got {num_resamples}")
    rng = np.random.default_rng(seed)
    real_stats = _statistics(real)  # unwarned: the caller's FVD has warned already
    distances = [frechet_distance(*real_stats,
                                  *_statistics(fake[rng.integers(0, len(fake), len(fake))]))
                 for _ in range(num_resamples)]
    return float(np.std(distances, ddof=1))


def _polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    dim = x.shape[1]
    k_xx = (x @ x.T / dim + 1.0) ** 3
    k_yy = (y @ y.T / dim + 1.0) ** 3
    k_xy = (x @ y.T / dim + 1.0) ** 3
    m, n = len(x), len(y)
    xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * k_xy.mean())


def kernel_distance(
    features1: np.ndarray,
    features2: np.ndarray,
    subset_size: int = 1000,
    num_subsets: int = 100,
    seed: int = 0,
) -> float:
    """Unbiased MMD^2 with kernel ``(x.y / d + 1)^3`` (KID/KVD), raw scale (not x1000).

    Sets no larger than ``subset_size`` are compared whole (exact, deterministic); larger ones by
    the mean over ``num_subsets`` random subsets of ``subset_size`` each, as KID does. Unbiased:
    about 0 (and possibly slightly negative) for two samples of one distribution.
    """
    x = _as_features(features1, "features1")
    y = _as_features(features2, "features2")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"features2: dimension {y.shape[1]} differs from features1 {x.shape[1]}")
    if subset_size < 2 or num_subsets < 1:
        raise ValueError("subset_size, num_subsets: need subset_size >= 2 and num_subsets >= 1")
    if len(x) <= subset_size and len(y) <= subset_size:
        return _polynomial_mmd2(x, y)
    rng = np.random.default_rng(seed)
    m = min(len(x), len(y), subset_size)
    values = [
        _polynomial_mmd2(
            x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)]
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(values))


def inception_score(probs: np.ndarray, num_splits: int = 1) -> tuple[float, float]:
    """``exp(E_x KL(p(y|x) || p(y)))`` from class probabilities ``(N, classes)``; (mean, std).

    With ``num_splits > 1`` the score is computed per split and averaged (papers often use 10).
    Bounded by 1 (all predictions identical) and the number of classes.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("probs: expected finite non-negative (num_videos, num_classes) values")
    if not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("probs: rows must sum to 1 (pass softmax probabilities, not logits)")
    if not 1 <= num_splits <= len(p):
        raise ValueError(f"num_splits: must be in [1, {len(p)}], got {num_splits}")
    scores = []
    for part in np.array_split(p, num_splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = (xlogy(part, part) - xlogy(part, marginal)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def classifier_probabilities(
    classifier: nn.Module, videos: Videos, batch_size: int = 8, progress: bool = True
) -> np.ndarray:
    """Softmax ``(N, classes)`` float64 of any user classifier that maps a batch to logits.

    Batches are passed to ``classifier`` as given (apply its own preprocessing first); this is the
    hook for the paper's IS, e.g. with a C3D trained on UCF101 loaded from the user's disk.
    """
    device = next(classifier.parameters()).device
    outputs = []
    with torch.inference_mode():
        bar = tqdm(total=_num_videos(videos), unit="video", desc="IS",  # pragma: no mutate
                   disable=not progress)  # pragma: no mutate
        with bar:
            for batch in _batches(videos, batch_size):
                logits = classifier(torch.as_tensor(batch).to(device))
                outputs.append(logits.double().cpu().numpy())
                bar.update(len(batch))
    return softmax(np.concatenate(outputs), axis=1)


def classifier_inception_score(
    classifier: nn.Module, videos: Videos, batch_size: int = 8, num_splits: int = 1
) -> tuple[float, float]:
    """Inception Score (mean, std) under a user-supplied classifier; see
    :func:`classifier_probabilities`."""
    was_training = classifier.training
    classifier.eval()
    try:
        probs = classifier_probabilities(classifier, videos, batch_size)
    finally:
        classifier.train(was_training)
    return inception_score(probs, num_splits)


def metrics_from_features(
    real_features: np.ndarray,
    fake_features: np.ndarray,
    is_splits: int = 1,
    metrics: Iterable[str] = I3D_METRICS,
) -> dict[str, float | int]:
    """FVD (with its bootstrap spread), KVD x1000 and IS (I3D-K400) of the fake set, and the real
    set's IS as its yardstick, from precomputed I3D logits; ``metrics`` picks some of them.

    Evaluation's I3D metrics come from here, so the report and this module agree by
    construction.
    """
    metrics = set(metrics)
    unknown = metrics - I3D_METRICS
    if unknown:
        raise ValueError(f"metrics: choose from {sorted(I3D_METRICS)}, got {sorted(unknown)}")
    min_videos = 2 if metrics & {"fvd", "kvd"} else 1  # IS needs no covariance
    real = _as_features(real_features, "real_features", min_videos)
    fake = _as_features(fake_features, "fake_features", min_videos)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"fake_features: dimension {fake.shape[1]} differs from {real.shape[1]}")
    out: dict[str, float | int] = {}
    if "fvd" in metrics:
        out["fvd"] = frechet_distance(*feature_statistics(real), *feature_statistics(fake))
        out["fvd_bootstrap_std"] = frechet_distance_bootstrap_std(real, fake)
    if "kvd" in metrics:
        out["kvd_x1000"] = 1000.0 * kernel_distance(real, fake)
    if "is" in metrics:
        out["is_i3d_k400"], out["is_i3d_k400_std"] = inception_score(softmax(fake, axis=1),
                                                                     is_splits)
        out["is_i3d_k400_real"] = inception_score(softmax(real, axis=1), is_splits)[0]
    return {**out, "num_real": len(real), "num_fake": len(fake)}


def _embed_pair(
    real_videos: Videos,
    fake_videos: Videos,
    extractor: I3DFeatureExtractor | None,
    batch_size: int,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Embed both sets, refusing sets whose clips differ in length (checked early when possible)."""
    real_frames, fake_frames = _num_frames(real_videos), _num_frames(fake_videos)
    if None not in (real_frames, fake_frames) and real_frames != fake_frames:
        raise ValueError(
            f"fake_videos: {fake_frames} frames per video but real_videos have {real_frames}"
        )
    extractor = extractor if extractor is not None else I3DFeatureExtractor()
    real, real_frames = extractor.embed(real_videos, batch_size, progress)
    fake, fake_frames = extractor.embed(fake_videos, batch_size, progress)
    if real_frames != fake_frames:
        raise ValueError(
            f"fake_videos: {fake_frames} frames per video but real_videos have {real_frames}"
        )
    if real_frames != PROTOCOL_FRAMES:
        warnings.warn(
            f"FVD is defined on {PROTOCOL_FRAMES}-frame clips, got {real_frames}: "
            "numbers are not comparable with published ones",
            stacklevel=3,
        )
    return real, fake, real_frames


def compute_video_metrics(
    real_videos: Videos,
    fake_videos: Videos,
    extractor: I3DFeatureExtractor | None = None,
    batch_size: int = 8,
    is_splits: int = 1,
    progress: bool = True,
) -> dict[str, float | int]:
    """All metrics in one I3D pass per set: ``fvd``, ``kvd_x1000``, ``is_i3d_k400`` (+ ``_std``,
    ``_real``), ``num_real``, ``num_fake``, ``num_frames``."""
    real, fake, frames = _embed_pair(real_videos, fake_videos, extractor, batch_size, progress)
    return {**metrics_from_features(real, fake, is_splits), "num_frames": frames}


def compute_fvd(
    real_videos: Videos,
    fake_videos: Videos,
    extractor: I3DFeatureExtractor | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> float:
    """Fréchet Video Distance between two video sets (see module docstring for layouts)."""
    real, fake, _ = _embed_pair(real_videos, fake_videos, extractor, batch_size, progress)
    return frechet_distance(*feature_statistics(real), *feature_statistics(fake))


def compute_kvd(
    real_videos: Videos,
    fake_videos: Videos,
    extractor: I3DFeatureExtractor | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> float:
    """Kernel Video Distance x1000 (the scale papers report) between two video sets."""
    real, fake, _ = _embed_pair(real_videos, fake_videos, extractor, batch_size, progress)
    return 1000.0 * kernel_distance(real, fake)
