"""Video generation metrics: FVD, KVD and IS on Kinetics-400 I3D features (see docs/metrics.md)."""

from videofusion.metrics.fvd import (
    I3DFeatureExtractor,
    classifier_inception_score,
    classifier_probabilities,
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
from videofusion.metrics.i3d import InceptionI3d, load_i3d_kinetics400

__all__ = [
    "I3DFeatureExtractor",
    "InceptionI3d",
    "classifier_inception_score",
    "classifier_probabilities",
    "compute_fvd",
    "compute_kvd",
    "compute_video_metrics",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_bootstrap_std",
    "inception_score",
    "kernel_distance",
    "load_i3d_kinetics400",
    "metrics_from_features",
]
