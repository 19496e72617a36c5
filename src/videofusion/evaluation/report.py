"""The evaluation report: JSON with the protocol next to the numbers, and a short text table."""

from __future__ import annotations

import json
from pathlib import Path

from videofusion.choices import I3D_METRICS

from .protocol import EvalProtocol
from .sets import VideoSet

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
    ("foreground pieces per frame", "foreground_pieces", True, "{:.3f}"),
    ("foreground area change", "foreground_area_change", True, "{:.4f}"),
    ("background grain", "background_grain", True, "{:.5f}"),
    ("grain beside the key frame", "neighbour_grain", True, "{:.3f}"),
    ("colour deviation", "colour_deviation", True, "{:.4f}"),
    ("palette colours covered", "palette_coverage", True, "{:d}"),
    ("mean speed (frame side)", "mean_speed", True, "{:.4f}"),
    ("jerk (frame side)", "jerk", True, "{:.4f}"),
    ("worst jerk of a clip (frame side)", "worst_jerk", True, "{:.4f}"),
)

# Metric key -> the key of its spread, printed as "value ± spread".
_SPREADS = {"is_i3d_k400": "is_i3d_k400_std", "fvd": "fvd_bootstrap_std",
            "fvd_digits": "fvd_digits_bootstrap_std"}


def build_report(real: VideoSet, fake: VideoSet, protocol: EvalProtocol, values: dict,
                 notes: list[str]) -> dict:
    """The report of one evaluation. ``protocol`` says what was measured on which videos (the
    sizes actually read); ``protocol.settings`` is the whole :class:`EvalProtocol` asked for."""
    metrics = protocol.metrics
    described = {
        "real": real.description,
        "fake": fake.description,
        "num_real": len(real.videos),
        "num_fake": len(fake.videos),
        "num_frames": int(fake.videos.shape[1]),
        "resolution": [int(v) for v in fake.videos.shape[2:4]],
        "resolution_policy": ("as asked" if protocol.resolution is not None else
                              "native: the model's sample size or the fake folder's own"),
        "seed": protocol.seed,
        "metrics": list(metrics),
        "conditioning": fake.conditioning,
        "sampling": fake.sampling,
        "settings": protocol.to_dict(),
    }
    if set(metrics) & I3D_METRICS:
        described["i3d"] = ("Kinetics-400 I3D logits averaged over time; frames resized "
                            "bilinearly to 224x224, no crop, pixels in [-1, 1]; float64 "
                            "statistics (docs/metrics.md)")
        described["is_label"] = "IS (I3D-K400)"
        described["kvd_scale"] = "x1000"
    if set(metrics) - I3D_METRICS:
        described["digit_metrics"] = ("videofusion.metrics.digits: classifier and video encoder "
                                      "trained on moving-digits train-split clips, inputs "
                                      "32x32; classifier and tracker see each frame's "
                                      "foreground (channels minus their median); motion error "
                                      "in frame sides")
    if "coherence" in metrics:
        described["coherence"] = ("videofusion.metrics.coherence: key-frame seam (key frame's "
                                  "deviation from its neighbours' mean over the other inner "
                                  "frames'), flicker on 4x4 frames, foreground pieces per frame "
                                  "and area change (pixels a channel >= 0.25 from its frame "
                                  "median; pieces >= 3 pixels), background grain (mean |x - "
                                  "3x3 box blur| >= 2 pixels from the foreground) and its "
                                  "ratio at the key frame's neighbours over the other non-key "
                                  "frames; on moving digits also "
                                  "colour deviation from the clip median, palette colours "
                                  "covered, tracked speed, mean jerk and each clip's worst jerk in "
                                  "frame sides")
    return {
        "protocol": described,
        "metrics": values,
        "num_skipped": {"real": len(real.skipped), "fake": len(fake.skipped)},
        "skipped": {name: [{"path": p, "reason": r} for p, r in s.skipped]
                    for name, s in (("real", real), ("fake", fake))},
        "warnings": notes,
    }


def write_report(report: dict, path: str | Path) -> Path:
    """The report as JSON; never NaN (``allow_nan=False``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    return path


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
