"""Evaluation of generated videos against real ones: :func:`evaluate` and ``videofusion eval``.

Real videos: the moving-digits TEST split or a folder of videos. Generated ("fake") videos: a
folder of videos or a model folder (``model_index.json``) sampled with ``VideoFusionPipeline``.
Metrics: FVD, KVD x1000 and IS on Kinetics-400 I3D (``videofusion.metrics.fvd``) and the cheap
moving-digits metrics (``videofusion.metrics.digits``). The report states the protocol (videos,
frames, resolution) because every number depends on it.
"""

from __future__ import annotations

import argparse
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .cli import SCHEDULERS
from .safety import check_output_file, check_safetensors, float_range, int_range

METRICS = ("fvd", "kvd", "is", "content", "motion", "fvd_digits", "coherence")
I3D_METRICS = frozenset({"fvd", "kvd", "is"})
SET_METRICS = frozenset({"fvd", "kvd", "fvd_digits"})  # need a covariance: >= 2 videos per set
MOVING_DIGITS = "moving-digits"
PROTOCOL_FRAMES = 16
_CAPTION_DIGIT = re.compile(r"\bdigit (\d)\b")
_DIGIT_CHUNK = 64  # videos per pass of the digit networks (and per progress-bar step)

# Row label, metric key, whether a real-set reference value exists, number format.
_TABLE = (
    ("FVD (I3D-K400)", "fvd", False, "{:.2f}"),
    ("KVD x1000 (I3D-K400)", "kvd_x1000", False, "{:.3f}"),
    ("IS (I3D-K400)", "is_i3d_k400", True, "{:.3f}"),
    ("FVD-digits", "fvd_digits", False, "{:.3f}"),
    ("content consistency", "content_consistency", True, "{:.4f}"),
    ("prompt adherence", "prompt_adherence", True, "{:.4f}"),
    ("motion error (frame side)", "motion_error", True, "{:.4f}"),
    ("key-frame seam", "key_frame_seam", True, "{:.3f}"),
    ("flicker", "flicker", True, "{:.4f}"),
    ("colour deviation", "colour_deviation", True, "{:.4f}"),
    ("palette colours covered", "palette_coverage", True, "{:d}"),
    ("mean speed (frame side)", "mean_speed", True, "{:.4f}"),
    ("jerk (frame side)", "jerk", True, "{:.4f}"),
)

# Metric key -> the key of its spread, printed as "value ± spread".
_SPREADS = {"is_i3d_k400": "is_i3d_k400_std", "fvd": "fvd_bootstrap_std",
            "fvd_digits": "fvd_digits_bootstrap_std"}


@dataclass
class VideoSet:
    """One side of the comparison: uint8 clips ``(N, frames, H, W, 3)`` and what is known."""

    videos: np.ndarray
    class_labels: list[int]  # -1 where unknown
    description: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    conditioning: str | None = None
    sampling: dict | None = None


def parse_metrics(metrics: str | Sequence[str]) -> tuple[str, ...]:
    """``"fvd,kvd"`` or a sequence -> validated names in :data:`METRICS` order."""
    names = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else list(metrics)
    names = [m for m in names if m]
    unknown = sorted(set(names) - set(METRICS))
    if unknown or not names:
        raise ValueError(f"metrics: choose from {','.join(METRICS)}, got {metrics!r}")
    return tuple(m for m in METRICS if m in names)


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / "model_index.json").is_file()


def _to_uint8(videos: np.ndarray) -> np.ndarray:
    """Float ``(N, F, H, W, C)`` in [0, 1] -> uint8 with 3 channels (grey is repeated)."""
    videos = (np.clip(videos, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(videos, 3, axis=-1) if videos.shape[-1] == 1 else videos


def _resize(videos: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Float ``(N, F, H, W, C)`` resized bilinearly (antialiased when shrinking) to ``size``."""
    if videos.shape[2:4] == size:
        return videos
    n, f, h, w, c = videos.shape
    x = torch.from_numpy(np.ascontiguousarray(videos)).reshape(n * f, h, w, c).permute(0, 3, 1, 2)
    shrink = h > size[0] or w > size[1]
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return x.permute(0, 2, 3, 1).reshape(n, f, *size, c).numpy()


def load_moving_digits(
    num_videos: int,
    num_frames: int,
    resolution: tuple[int, int],
    progress: bool = True,
    start: int = 0,
    **options,
) -> VideoSet:
    """Clips ``start`` to ``start + num_videos`` of the moving-digits TEST split (``options`` go
    to ``MovingDigits``, e.g. ``channels``, ``source``), with their digit labels. Evaluation
    uses the first ones; later ones are a second real set, disjoint from the first."""
    from videofusion.data import MovingDigits

    ds = MovingDigits(split="test", num_frames=num_frames, resolution=resolution,
                      length=max(start + num_videos, 1), **options)
    videos, labels = [], []
    for i in tqdm(range(start, start + num_videos), desc="moving-digits", unit="video",
                  disable=not progress):
        item = ds[i]
        videos.append((item["video"].permute(1, 2, 3, 0).numpy() + 1.0) / 2.0)
        labels.append(item["class_label"])
    where = f", clips {start}-{start + num_videos - 1}" if start else ""
    return VideoSet(_to_uint8(np.stack(videos)), labels, f"{MOVING_DIGITS} (test split{where})")


def _folder_label(classes: list[str], label: int, caption: str) -> int:
    """A digit label from a class folder named 0-9, else from a caption "... digit N ..."."""
    if label >= 0 and classes[label].isdigit() and int(classes[label]) < 10:
        return int(classes[label])
    match = _CAPTION_DIGIT.search(caption)
    return int(match.group(1)) if match else -1


def load_video_folder(
    path: str | Path,
    num_videos: int,
    num_frames: int,
    resolution: tuple[int, int],
    name: str = "videos",
    progress: bool = True,
) -> VideoSet:
    """The first ``num_frames`` frames of up to ``num_videos`` readable videos of a folder
    (natural order), resized to cover ``resolution`` and centre-cropped.

    Unreadable videos are skipped and listed; a video with fewer than ``num_frames`` frames is a
    protocol mismatch and raises ``ValueError``.
    """
    from videofusion.data import VideoFolder
    from videofusion.data.transforms import center_crop
    from videofusion.data.video_folder import read_frame_folder, read_video_file

    ds = VideoFolder(path, split=None, num_frames=1, resolution=resolution, start="center")
    skipped = list(ds.skipped)
    videos, labels = [], []
    bar = tqdm(total=min(num_videos, len(ds.entries)), desc=f"reading {name}", unit="video",
               disable=not progress)
    with bar:
        for entry in ds.entries:
            if len(videos) == num_videos:
                break
            if entry.num_frames < num_frames:
                raise ValueError(
                    f"{name}: {entry.path} has {entry.num_frames} frames, fewer than "
                    f"num_frames={num_frames}; all videos must be at least that long"
                )
            read = read_frame_folder if entry.is_frame_folder else read_video_file
            try:
                frames = center_crop(read(entry.path, range(num_frames), ds.size, 3), ds.size)
            except Exception as err:  # decoders raise many types on corrupt data
                reason = " ".join(str(err).split())
                skipped.append((str(entry.path), f"failed to decode ({reason})"))
                continue
            videos.append(frames)
            labels.append(_folder_label(ds.classes, entry.class_label, entry.caption))
            bar.update()
    if not videos:
        raise ValueError(f"{name}: no readable video in {path} ({len(skipped)} skipped)")
    return VideoSet(np.stack(videos), labels, str(path), skipped)


def sample_model(
    path: str | Path,
    num_videos: int,
    num_frames: int,
    resolution: tuple[int, int] | None = None,
    seed: int = 0,
    class_labels: Sequence[int] | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = True,
    condition: str = "auto",
    scheduler: str | None = None,
    signal_leak: bool = True,
) -> VideoSet:
    """``num_videos`` samples of a saved ``VideoFusionPipeline``, resized to ``resolution``.

    Class-conditioned models get labels 0..9 in turn (or ``class_labels``, cycled);
    text-conditioned models get the captions of the moving-digits test split (the digit is the
    label); unconditional models are sampled plainly. A model conditioned on both is sampled
    with captions, or with class labels alone for ``condition="class"``. Labels are kept for
    prompt adherence.
    ``guidance_scale`` defaults to the pipeline's ``default_guidance`` (as ``videofusion
    sample``), 1 when a conditioned model is sampled unconditionally.
    ``scheduler`` (``pipeline.SCHEDULERS``) replaces the folder's own sampler;
    ``signal_leak=False`` ignores the folder's data mean (``VideoFusionPipeline.__call__``).
    """
    from videofusion.data import MovingDigits
    from videofusion.pipeline import VideoFusionPipeline

    pipe = VideoFusionPipeline.from_pretrained(path).to(device).use_scheduler(scheduler)
    channels = (pipe.vae.config.out_channels if pipe.vae is not None
                else pipe.residual.config.out_channels)
    size = int(pipe.config.sample_size)
    resolution = resolution or (size, size)
    if condition not in ("auto", "class", "text"):
        raise ValueError(f"condition must be 'auto', 'class' or 'text', got {condition!r}")
    text = pipe.residual.config.cross_attention_dim is not None
    if condition == "text" and not text or condition == "class" and pipe.num_classes is None:
        raise ValueError(f"this model cannot be sampled with condition {condition!r}")
    prompts: list[str] | None = None
    if text and condition != "class":
        conditioning = "text (moving-digits test-split captions)"
        digits = MovingDigits(split="test", num_frames=num_frames, resolution=resolution,
                              channels=channels if channels in (1, 3) else 3,
                              length=num_videos)
        metas = [digits.metadata(i) for i in range(num_videos)]
        prompts = [m["caption"] for m in metas]
        labels = [m["class_label"] for m in metas]
    elif pipe.num_classes is not None:
        conditioning = "class"
        cycle = list(class_labels) if class_labels is not None else list(range(pipe.num_classes))
        if not cycle:
            raise ValueError("class_labels: empty")
        labels = [int(cycle[i % len(cycle)]) for i in range(num_videos)]
    else:
        conditioning = "none"
        labels = [-1] * num_videos
    if guidance_scale is None:
        guidance_scale = 1.0 if conditioning == "none" else pipe.default_guidance
    generator = torch.Generator().manual_seed(seed)
    side = size // pipe.vae_scale_factor
    latent_channels = pipe.residual.config.out_channels
    chunks = []
    with tqdm(total=num_videos, desc="sampling", unit="video", disable=not progress) as bar:
        for start in range(0, num_videos, batch_size):
            stop = min(start + batch_size, num_videos)
            condition = (
                {"prompt": prompts[start:stop]} if prompts is not None
                else {"class_labels": labels[start:stop]} if conditioning == "class"
                else {"num_videos": stop - start}
            )
            # z_T drawn video by video, so a video does not depend on the batch size; a
            # stochastic scheduler's fresh noise then follows each video's own z_T (FreshNoise).
            noise = [(torch.randn(1, latent_channels, side, side, generator=generator),
                      torch.randn(1, latent_channels, num_frames, side, side, generator=generator))
                     for _ in range(start, stop)]
            frames = pipe(**condition, num_frames=num_frames, height=size, width=size,
                          num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                          generator=torch.Generator().manual_seed(seed + 1 + start),
                          base_noise=torch.cat([b for b, _ in noise]),
                          residual_noise=torch.cat([r for _, r in noise]), progress=False,
                          signal_leak=signal_leak).frames
            chunks.append(_to_uint8(_resize(frames, resolution)))
            bar.update(stop - start)
    sampling = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
                "scheduler": type(pipe.scheduler).__name__, "sample_size": size,
                "channels": channels, "seed": seed,
                "signal_leak_mean": (None if pipe.signal_leak(signal_leak) is None
                                     else pipe.config.signal_leak_mean)}
    return VideoSet(np.concatenate(chunks), labels, str(path), conditioning=conditioning,
                    sampling=sampling)


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


def compute_metrics(
    real: VideoSet,
    fake: VideoSet,
    metrics: Sequence[str] = METRICS,
    batch_size: int = 8,
    extractor=None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, float | None]:
    """The requested metrics of ``fake`` against ``real`` (per-video ones for both sets)."""
    from scipy.special import softmax

    from videofusion.metrics import digits, fvd

    metrics = set(metrics)
    result: dict[str, float | None] = {}
    if metrics & I3D_METRICS:
        extractor = extractor if extractor is not None else fvd.I3DFeatureExtractor.from_cache()
        extractor = extractor.to(device)
        fake_i3d, _ = extractor.embed(fake.videos, batch_size, progress)
        real_i3d, _ = extractor.embed(real.videos, batch_size, progress)
        if "fvd" in metrics:
            result["fvd"] = fvd.frechet_distance(
                *fvd.feature_statistics(real_i3d), *fvd.feature_statistics(fake_i3d))
            result["fvd_bootstrap_std"] = fvd.frechet_distance_bootstrap_std(real_i3d, fake_i3d)
        if "kvd" in metrics:
            result["kvd_x1000"] = 1000.0 * fvd.kernel_distance(real_i3d, fake_i3d)
        if "is" in metrics:
            # Kinetics classes mean little for other data: the real set's IS is the yardstick.
            is_mean, is_std = fvd.inception_score(softmax(fake_i3d, axis=1))
            result["is_i3d_k400"], result["is_i3d_k400_std"] = is_mean, is_std
            result["is_i3d_k400_real"], _ = fvd.inception_score(softmax(real_i3d, axis=1))
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
                result[f"content_consistency{suffix}"] = float(
                    digits.content_consistency(predictions).mean())
                result[f"prompt_adherence{suffix}"] = digits.prompt_adherence(
                    predictions, s.class_labels)
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


def _check_counts(real: VideoSet, fake: VideoSet, metrics: Sequence[str], num_videos: int,
                  warned: list[str]) -> None:
    need = sorted(SET_METRICS & set(metrics))
    for name, s in (("real", real), ("fake", fake)):
        if need and len(s.videos) < 2:
            raise ValueError(
                f"{name}: {len(s.videos)} readable video(s) ({len(s.skipped)} skipped); "
                f"{','.join(need)} need at least 2 per set"
            )
        if len(s.videos) < num_videos:
            warned.append(f"{name}: only {len(s.videos)} readable videos of num_videos="
                          f"{num_videos} requested")


def evaluate(
    real: str | Path,
    fake: str | Path,
    metrics: str | Sequence[str] = METRICS,
    num_videos: int = 256,
    num_frames: int = PROTOCOL_FRAMES,
    resolution: int | Sequence[int] | None = None,
    seed: int = 0,
    class_labels: Sequence[int] | None = None,
    out: str | Path | None = None,
    batch_size: int = 8,
    num_inference_steps: int = 50,
    guidance_scale: float | None = None,
    device: str | torch.device | None = None,
    extractor=None,
    real_options: dict | None = None,
    progress: bool = True,
    condition: str = "auto",
    scheduler: str | None = None,
    signal_leak: bool = True,
) -> dict:
    """Compare generated videos with real ones; return (and with ``out`` write) the JSON report.

    ``real``: ``"moving-digits"`` (TEST split; ``real_options`` go to ``MovingDigits``) or a
    folder of videos. ``fake``: a folder of videos or a model folder (sampled, ``seed``,
    ``num_inference_steps``, ``guidance_scale``). ``resolution`` defaults to the model's
    sample size, else 32. ``class_labels``: for a model, labels to cycle through; for a folder,
    one per video (else labels come from class folders named 0-9 or captions "digit N").
    ``extractor``: an ``I3DFeatureExtractor`` to reuse. ``condition``: what a model conditioned
    on both class and text is sampled with (``"auto"`` = captions). ``scheduler``: sample a
    model with this sampler instead of its folder's own; ``signal_leak=False`` starts it from
    pure noise even if its folder holds the data mean.
    """
    from videofusion.data.transforms import parse_resolution
    from videofusion.metrics.i3d import MIN_FRAMES

    metrics = parse_metrics(metrics)
    if num_videos < 1:
        raise ValueError(f"num_videos: must be >= 1, got {num_videos}")
    if num_frames < 1:
        raise ValueError(f"num_frames: must be >= 1, got {num_frames}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    if set(metrics) & I3D_METRICS and num_frames < MIN_FRAMES:
        raise ValueError(f"num_frames: fvd, kvd and is need at least {MIN_FRAMES} frames "
                         f"(I3D), got {num_frames}")
    if not str(fake) or not Path(fake).exists():
        raise FileNotFoundError(f"fake: no folder of videos or model folder at {fake!r}")
    if str(real) != MOVING_DIGITS and not Path(real).is_dir():
        raise FileNotFoundError(f"real: neither {MOVING_DIGITS!r} nor a folder: {real}")
    from .data.video_folder import scan

    if str(real) != MOVING_DIGITS and not any(scan(Path(real))):
        raise ValueError(f"real: no videos or frame folders in {real}")
    if is_model_dir(fake):
        check_safetensors(fake)
    if out is not None:
        check_output_file(out, "out")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = parse_resolution(resolution) if resolution is not None else None
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        if is_model_dir(fake):
            fake_set = sample_model(fake, num_videos, num_frames, size, seed, class_labels,
                                    num_inference_steps, guidance_scale, batch_size, device,
                                    progress, condition, scheduler, signal_leak)
            channels = fake_set.sampling["channels"]
        else:
            fake_set = load_video_folder(fake, num_videos, num_frames, size or (32, 32), "fake",
                                         progress)
            if class_labels is not None:
                if len(class_labels) != len(fake_set.videos):
                    raise ValueError(f"class_labels: {len(class_labels)} labels for "
                                     f"{len(fake_set.videos)} readable fake videos")
                fake_set.class_labels = [int(c) for c in class_labels]
                fake_set.conditioning = "class_labels argument"
            elif max(fake_set.class_labels) >= 0:
                fake_set.conditioning = "labels from class folders 0-9 or 'digit N' captions"
            channels = 3
        size = fake_set.videos.shape[2:4]
        if str(real) == MOVING_DIGITS:
            options = {"channels": channels if channels in (1, 3) else 3, **(real_options or {})}
            real_set = load_moving_digits(num_videos, num_frames, size, progress, **options)
        else:
            real_set = load_video_folder(real, num_videos, num_frames, size, "real", progress)
        _check_counts(real_set, fake_set, metrics, num_videos, notes)
        if set(metrics) & I3D_METRICS and num_frames != PROTOCOL_FRAMES:
            notes.append(f"I3D metrics are defined on {PROTOCOL_FRAMES}-frame clips, got "
                         f"{num_frames}: not comparable with published numbers")
        values = compute_metrics(real_set, fake_set, metrics, batch_size, extractor, device,
                                 progress)
    for w in caught:  # UserWarnings (e.g. rank-deficient covariance) go into the report
        if issubclass(w.category, UserWarning):
            notes.append(str(w.message))
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    notes = list(dict.fromkeys(notes))
    report = _report(real_set, fake_set, metrics, values, seed, notes)
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    return report


def _report(real: VideoSet, fake: VideoSet, metrics: tuple[str, ...], values: dict,
            seed: int, notes: list[str]) -> dict:
    protocol = {
        "real": real.description,
        "fake": fake.description,
        "num_real": len(real.videos),
        "num_fake": len(fake.videos),
        "num_frames": int(fake.videos.shape[1]),
        "resolution": [int(v) for v in fake.videos.shape[2:4]],
        "seed": seed,
        "metrics": list(metrics),
        "conditioning": fake.conditioning,
        "sampling": fake.sampling,
    }
    if set(metrics) & I3D_METRICS:
        protocol["i3d"] = ("Kinetics-400 I3D logits averaged over time; frames resized "
                           "bilinearly to 224x224, no crop, pixels in [-1, 1]; float64 "
                           "statistics (docs/metrics.md)")
        protocol["is_label"] = "IS (I3D-K400)"
        protocol["kvd_scale"] = "x1000"
    if set(metrics) - I3D_METRICS:
        protocol["digit_metrics"] = ("videofusion.metrics.digits: classifier and video encoder "
                                     "trained on moving-digits train-split clips, inputs 32x32; "
                                     "classifier and tracker see each frame's foreground "
                                     "(channels minus their median); motion error in frame "
                                     "sides")
    if "coherence" in metrics:
        protocol["coherence"] = ("videofusion.metrics.coherence: key-frame seam (key frame's "
                                 "deviation from its neighbours' mean over the other inner "
                                 "frames'), flicker on 4x4 frames; on moving digits also colour "
                                 "deviation from the clip median, palette colours covered, "
                                 "tracked speed and jerk in frame sides")
    return {
        "protocol": protocol,
        "metrics": values,
        "num_skipped": {"real": len(real.skipped), "fake": len(fake.skipped)},
        "skipped": {name: [{"path": p, "reason": r} for p, r in s.skipped]
                    for name, s in (("real", real), ("fake", fake))},
        "warnings": notes,
    }


def format_table(report: dict) -> str:
    """A short text table of a report: one row per metric, fake and real-reference columns."""
    p, values = report["protocol"], report["metrics"]

    def cell(key: str, fmt: str) -> str:
        value = values.get(key)
        return "n/a" if value is None else fmt.format(value)

    lines = [
        f"{p['num_fake']} fake ({p['fake']}) vs {p['num_real']} real ({p['real']}), "
        f"{p['num_frames']} frames, {p['resolution'][0]}x{p['resolution'][1]}",
        f"{'metric':<28}{'fake':>16}{'real':>12}",
    ]
    for label, key, has_real, fmt in _TABLE:
        if key not in values:
            continue
        value = cell(key, fmt)
        spread = _SPREADS.get(key)
        if values.get(spread) is not None:
            value += " ± " + fmt.format(values[spread])
        reference = cell(f"{key}_real", fmt) if has_real else ""
        lines.append(f"{label:<28}{value:>16}{reference:>12}")
    skipped = report["num_skipped"]
    lines.append(f"{'skipped videos':<28}{skipped['fake']:>16}{skipped['real']:>12}")
    return "\n".join(lines)


def _labels(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected integers like 0,1,2, got {text!r}") from err


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """``videofusion eval``: metrics of generated videos; JSON report and a short table."""
    p = subparsers.add_parser(
        "eval", help="evaluate generated videos (FVD, KVD, IS, moving-digits metrics)",
        description="Compare generated videos (a folder, or a model folder to sample) with real "
                    "ones (moving-digits test split or a folder); docs/metrics.md.",
    )
    p.add_argument("--real", default=MOVING_DIGITS,
                   help=f"'{MOVING_DIGITS}' (test split) or a folder of videos")
    p.add_argument("--fake", required=True,
                   help="a folder of videos, or a model folder (with model_index.json) to sample")
    p.add_argument("--metrics", default=",".join(METRICS),
                   help=f"comma-separated subset of {','.join(METRICS)}")
    p.add_argument("--num-videos", type=int_range(1), default=256, help="videos per set")
    p.add_argument("--num-frames", "--frames", type=int_range(1), default=PROTOCOL_FRAMES,
                   help="frames per clip")
    p.add_argument("--resolution", type=int_range(8),
                   help="clip side in pixels (default: the model's sample size, else 32)")
    p.add_argument("--seed", type=int_range(0, 2 ** 63 - 1), default=0, help="sampling seed")
    p.add_argument("--class-labels", type=_labels,
                   help="model: labels to cycle through; folder: one per video")
    p.add_argument("--steps", dest="num_inference_steps", type=int_range(1, 10_000), default=50,
                   help="sampling steps")
    p.add_argument("--guidance-scale", "--guidance", type=float_range(0),
                   help="classifier-free guidance; default: the model's own "
                        "(default_guidance_scale), else 2 for conditional models, else 1")
    p.add_argument("--scheduler", choices=SCHEDULERS,
                   help="model: sample with this scheduler (default: the folder's own)")
    p.add_argument("--no-signal-leak", dest="signal_leak", action="store_false",
                   help="model: start from pure noise, not from the noised mean of the "
                        "training data that the folder may hold (docs/training.md, "
                        "'Signal leak')")
    p.add_argument("--batch-size", type=int_range(1), default=8,
                   help="videos per sampling/I3D batch")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.add_argument("--condition", choices=("auto", "class", "text"), default="auto",
                   help="a model conditioned on class and text: sample with captions (auto, "
                        "text) or class labels alone (class)")
    p.add_argument("--out", default="eval_report.json", help="JSON report path")
    p.set_defaults(handler=run_eval)
    return p


def run_eval(args: argparse.Namespace) -> int:
    report = evaluate(
        real=args.real, fake=args.fake, metrics=args.metrics, num_videos=args.num_videos,
        num_frames=args.num_frames, resolution=args.resolution, seed=args.seed,
        class_labels=args.class_labels, out=args.out, batch_size=args.batch_size,
        num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
        device=args.device, condition=args.condition, scheduler=args.scheduler,
        signal_leak=args.signal_leak,
    )
    print(format_table(report))
    for note in report["warnings"]:
        print(f"note: {note}")
    print(f"wrote {args.out}")
    return 0
