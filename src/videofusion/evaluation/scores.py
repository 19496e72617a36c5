"""The metrics of a fake set against a real one: I3D metrics through ``metrics.fvd``, the
moving-digits metrics through ``metrics.digits``, coherence through ``metrics.coherence``.

No metric maths here: this module only runs the networks over both sets and names the numbers
(``_real`` for the real set's own value of a per-video metric, the ceiling to compare with).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from videofusion.choices import I3D_METRICS, METRICS, MOVING_DIGITS

from . import shards
from .sets import VideoSet

_DIGIT_CHUNK = 64  # videos per pass of the digit networks (and per progress-bar step)


def _digit_pass(videos: np.ndarray, metrics: set[str], networks: dict, name: str,
                progress: bool) -> dict[str, np.ndarray]:
    """Per-frame digit predictions, motion errors and encoder features of one set."""
    from videofusion.metrics import digits

    out: dict[str, list] = {"predictions": [], "motion": [], "features": []}
    for start in tqdm(range(0, len(videos), _DIGIT_CHUNK), desc=f"digit metrics ({name})",
                      unit="chunk", disable=not progress):
        chunk = videos[start : start + _DIGIT_CHUNK]
        if "content" in metrics:
            out["predictions"].append(digits.predict_digits(chunk, networks["classifier"]))
        if "motion" in metrics:
            out["motion"].append(digits.motion_errors(chunk))
        if "fvd_digits" in metrics:
            out["features"].append(digits.digit_video_features(chunk, networks["encoder"]))
    return {k: np.concatenate(v) for k, v in out.items() if v}


def _digit_spreads(predictions: np.ndarray, consistency: np.ndarray, class_labels) -> dict:
    """Sampling spreads of content consistency and prompt adherence over the videos."""
    from videofusion.metrics import bootstrap, digits

    labels = np.asarray(class_labels, dtype=np.int64)
    return {"content_consistency_bootstrap_std": bootstrap.mean_std(consistency),
            "prompt_adherence_bootstrap_std": bootstrap.bootstrap_std(
                lambda i: digits.prompt_adherence(predictions[i], labels[i]), len(labels))}


def compute_metrics(
    real: VideoSet,
    fake: VideoSet,
    metrics: Sequence[str] = METRICS,
    batch_size: int = 8,
    extractor=None,
    device="cpu",
    progress: bool = True,
) -> dict[str, float | None]:
    """The requested metrics of ``fake`` against ``real`` (per-video ones for both sets).

    I3D, the costly network, is shared out among the processes of a multi-process launch
    (``shards``); the cheap digit networks and coherence run whole in every process."""
    from videofusion.metrics import digits, fvd

    metrics = set(metrics)
    result: dict[str, float | None] = {}
    if metrics & I3D_METRICS:
        extractor = extractor if extractor is not None else fvd.I3DFeatureExtractor.from_cache()
        extractor = extractor.to(device)
        fake_i3d = shards.embed(extractor, fake.videos, batch_size, progress)
        real_i3d = shards.embed(extractor, real.videos, batch_size, progress)
        values = fvd.metrics_from_features(real_i3d, fake_i3d, metrics=metrics & I3D_METRICS)
        result.update({k: v for k, v in values.items() if k not in ("num_real", "num_fake")})
    if metrics & {"content", "motion", "fvd_digits"}:
        networks = {}
        if "content" in metrics:
            networks["classifier"] = digits.load_digit_classifier().to(device)
        if "fvd_digits" in metrics:
            networks["encoder"] = digits.load_digit_video_encoder().to(device)
        passes = {name: _digit_pass(s.videos, metrics, networks, name, progress)
                  for name, s in (("fake", fake), ("real", real))}
        for name, s in (("fake", fake), ("real", real)):
            suffix = "" if name == "fake" else "_real"
            if "content" in metrics:
                predictions = passes[name]["predictions"]
                consistency = digits.content_consistency(predictions)
                result[f"content_consistency{suffix}"] = float(consistency.mean())
                result[f"prompt_adherence{suffix}"] = digits.prompt_adherence(
                    predictions, s.class_labels)
                if name == "fake":
                    result.update(_digit_spreads(predictions, consistency, s.class_labels))
            if "motion" in metrics:
                result[f"motion_error{suffix}"] = float(passes[name]["motion"].mean())
        if "fvd_digits" in metrics:
            result["fvd_digits"] = digits.fvd_digits(passes["real"]["features"],
                                                     passes["fake"]["features"])
            result["fvd_digits_bootstrap_std"] = fvd.frechet_distance_bootstrap_std(
                passes["real"]["features"], passes["fake"]["features"])
    if "coherence" in metrics:
        from videofusion.metrics.coherence import coherence_metrics

        digits_data = real.description.startswith(MOVING_DIGITS)
        result.update(coherence_metrics(fake.videos, digits=digits_data))
        result.update({f"{k}_real": v for k, v in
                       coherence_metrics(real.videos, digits=digits_data).items()})
    return result
