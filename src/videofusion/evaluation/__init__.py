"""Evaluation of generated videos against real ones: :func:`evaluate` and ``videofusion eval``.

Real videos: the moving-digits TEST split or a folder of videos (:mod:`.sets`). Generated
("fake") videos: a folder of videos, or a model folder (``model_index.json``) sampled with
``VideoFusionPipeline`` (:mod:`.sampling`), a text-conditioned one with the real set's
captions (the test split's, or the real folder's). Metrics: FVD, KVD x1000 and IS on
Kinetics-400 I3D (``videofusion.metrics.fvd``), the cheap moving-digits metrics
(``videofusion.metrics.digits``) and coherence (:mod:`.scores`). One :class:`EvalProtocol`
(:mod:`.protocol`) says how, and is recorded in the report (:mod:`.report`) because every
number depends on it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from videofusion.choices import I3D_METRICS, MOVING_DIGITS, PROTOCOL_FRAMES

from . import shards
from .protocol import SET_METRICS, EvalProtocol, parse_metrics
from .report import build_report, format_table, write_report
from .sampling import sample_model
from .scores import compute_metrics
from .sets import (
    VideoSet,
    folder_captions,
    is_model_dir,
    label_folder_set,
    load_moving_digits,
    load_video_folder,
)

__all__ = ["EvalProtocol", "VideoSet", "compute_metrics", "evaluate", "format_table",
           "load_moving_digits", "load_video_folder", "parse_metrics", "sample_model"]


def _check_paths(real: str | Path, fake: str | Path, protocol: EvalProtocol) -> None:
    """Refuse, before any work, what cannot be evaluated."""
    from videofusion.data.video_folder import scan
    from videofusion.metrics.i3d import MIN_FRAMES
    from videofusion.safety import check_safetensors

    if set(protocol.metrics) & I3D_METRICS and protocol.num_frames < MIN_FRAMES:
        raise ValueError(f"num_frames: fvd, kvd and is need at least {MIN_FRAMES} frames "
                         f"(I3D), got {protocol.num_frames}")
    if not str(fake) or not Path(fake).exists():
        raise FileNotFoundError(f"fake: no folder of videos or model folder at {fake!r}")
    if str(real) != MOVING_DIGITS and not Path(real).is_dir():
        raise FileNotFoundError(f"real: neither {MOVING_DIGITS!r} nor a folder: {real}")
    if str(real) != MOVING_DIGITS and not any(scan(Path(real))):
        raise ValueError(f"real: no videos or frame folders in {real}")
    if is_model_dir(fake):
        check_safetensors(fake)


def _check_counts(real: VideoSet, fake: VideoSet, protocol: EvalProtocol,
                  notes: list[str]) -> None:
    need = sorted(SET_METRICS & set(protocol.metrics))
    for name, s in (("real", real), ("fake", fake)):
        if need and len(s.videos) < 2:
            raise ValueError(
                f"{name}: {len(s.videos)} readable video(s) ({len(s.skipped)} skipped); "
                f"{','.join(need)} need at least 2 per set"
            )
        if len(s.videos) < protocol.num_videos:
            notes.append(f"{name}: only {len(s.videos)} readable videos of num_videos="
                         f"{protocol.num_videos} requested")


def _text_conditioned(model_dir) -> bool:
    """Whether the model in ``model_dir`` takes captions, from its residual generator's config."""
    import json

    config = json.loads((Path(model_dir) / "residual" / "config.json").read_text())
    return config.get("cross_attention_dim") is not None


def _video_sets(real, fake, protocol: EvalProtocol, device, progress) -> tuple[VideoSet,
                                                                                VideoSet]:
    """The fake set (sampled or read, at the protocol's resolution or its own), then the real
    set at the fake set's size."""
    if is_model_dir(fake):
        text = protocol.condition != "class" and _text_conditioned(fake)
        captions = (folder_captions(real, protocol.num_videos, protocol.folder_order)
                    if text and str(real) != MOVING_DIGITS else None)
        fake_set = sample_model(fake, protocol, device, progress, captions)
        channels = fake_set.sampling["channels"]
    else:
        fake_set = load_video_folder(fake, protocol.num_videos, protocol.num_frames,
                                     protocol.resolution, "fake", progress,
                                     protocol.folder_order)
        fake_set = label_folder_set(fake_set, protocol.class_labels)
        channels = 3
    size = fake_set.videos.shape[2:4]
    if str(real) == MOVING_DIGITS:
        options = {"channels": channels if channels in (1, 3) else 3, **protocol.real_options}
        real_set = load_moving_digits(protocol.num_videos, protocol.num_frames, size, progress,
                                      **options)
    else:
        real_set = load_video_folder(real, protocol.num_videos, protocol.num_frames, size,
                                     "real", progress, protocol.folder_order)
    return real_set, fake_set


def evaluate(
    real: str | Path,
    fake: str | Path,
    protocol: EvalProtocol | None = None,
    *,
    out: str | Path | None = None,
    device=None,
    extractor=None,
    progress: bool = True,
    **settings,
) -> dict:
    """Compare generated videos with real ones; return (and with ``out`` write) the JSON report.

    ``real``: ``"moving-digits"`` (TEST split) or a folder of videos. ``fake``: a folder of
    videos or a model folder (sampled). ``protocol``: what to measure and how (default
    :class:`EvalProtocol`); ``settings`` are :class:`EvalProtocol` fields that replace its
    values, e.g. ``evaluate(real, fake, metrics="fvd", num_videos=64)``. ``extractor``: an
    ``I3DFeatureExtractor`` to reuse. ``device``: ``auto`` (default: CUDA when present), ``cpu``,
    ``cuda[:N]`` (``videofusion.devices``). Under ``accelerate launch`` (or torchrun) the
    processes share the sampling and I3D out (:mod:`.shards`), each on its own GPU, and only
    the main process writes ``out`` and shows progress; every process returns the report.
    """
    from videofusion.data.transforms import parse_resolution
    from videofusion.devices import resolve_device
    from videofusion.safety import check_output_file

    protocol = (protocol or EvalProtocol()).replace(**settings)
    if protocol.resolution is not None:
        parse_resolution(protocol.resolution)  # the size the data loaders accept
    _check_paths(real, fake, protocol)
    if out is not None:
        check_output_file(out, "out")
    device = shards.process_device(resolve_device(device))
    progress = progress and shards.is_main_process()
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        real_set, fake_set = _video_sets(real, fake, protocol, device, progress)
        _check_counts(real_set, fake_set, protocol, notes)
        if set(protocol.metrics) & I3D_METRICS and protocol.num_frames != PROTOCOL_FRAMES:
            notes.append(f"I3D metrics are defined on {PROTOCOL_FRAMES}-frame clips, got "
                         f"{protocol.num_frames}: not comparable with published numbers")
        values = compute_metrics(real_set, fake_set, protocol.metrics, protocol.batch_size,
                                 extractor, device, progress)
    for w in caught:  # UserWarnings (e.g. rank-deficient covariance) go into the report
        if issubclass(w.category, UserWarning):
            notes.append(str(w.message))
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    report = build_report(real_set, fake_set, protocol, values, list(dict.fromkeys(notes)))
    if out is not None and shards.is_main_process():
        write_report(report, out)
    return report
