"""The paper's ablations (RQ1-RQ4) as data: which training runs the study consists of, which
of them the paper compares, and the tables that report their evaluations.

``scripts/ablations.py`` trains and evaluates the rows; this module says what they are and turns
the row reports it writes (one JSON per row and seed) into ``table.md`` and ``seeds.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Row:
    """One training run of the study: the research question it answers, and the
    ``videofusion train`` settings it adds to the shared recipe. ``pretrained`` rows start stage
    2 from one shared stage-1 run, so that they differ only in their own settings."""

    name: str
    question: str
    description: str
    settings: dict = field(default_factory=dict)
    pretrained: bool = False

    def train_flags(self, pretrain_steps: int) -> list[str]:
        """The row's ``videofusion train`` flags; ``pretrain_steps``: the recipe's stage 1."""
        flags = ["--base-pretrain-steps", str(pretrain_steps if self.pretrained else 0)]
        for key, value in self.settings.items():
            flags += [f"--{key}"] if value is True else [f"--{key}", str(value)]
        return flags


ABLATIONS = {row.name: row for row in (
    Row("vdm", "RQ1", "VDM baseline (independent noise), matched parameters",
        {"model": "vdm", "lambda": 0.0}),
    Row("vf_lambda_0.5", "RQ1/RQ3", "VideoFusion, lambda 0.5, pretrained base, stop-gradient",
        {"lambda": 0.5}, pretrained=True),
    Row("vf_lambda_0.25", "RQ3", "VideoFusion, lambda 0.25", {"lambda": 0.25}, pretrained=True),
    Row("vf_lambda_0.75", "RQ3", "VideoFusion, lambda 0.75", {"lambda": 0.75}, pretrained=True),
    Row("vf_lambda_0.9", "RQ3", "VideoFusion, lambda 0.9 (past the paper's sweep: where FVD turns)",
        {"lambda": 0.9}, pretrained=True),
    Row("vf_base_scratch", "RQ2", "VideoFusion, base trained from scratch (no stage 1)",
        {"lambda": 0.5, "base-from-scratch": True}),
    Row("vf_frozen_base", "RQ4", "VideoFusion, pretrained base frozen in stage 2",
        {"lambda": 0.5, "freeze-base": True}, pretrained=True),
    Row("vf_no_stop_gradient", "RQ4", "VideoFusion, joint training without stop-gradient",
        {"lambda": 0.5, "no-stop-gradient": True}, pretrained=True),
)}
# what each row is evaluated on: moving digits get the digit metrics too
DIGIT_METRICS = "fvd,kvd,is,content,motion,fvd_digits"
VIDEO_METRICS = "fvd,kvd,is,coherence"

TABLE_KEYS = (("fvd", "FVD"), ("kvd_x1000", "KVD x1000"), ("is_i3d_k400", "IS (I3D-K400)"),
              ("fvd_digits", "FVD-digits"), ("content_consistency", "content"),
              ("prompt_adherence", "prompt adherence"), ("motion_error", "motion error"))
# the paper's claims as (question, row, reference row): seeds.md shows each row minus its reference
COMPARISONS = (("RQ1", "vf_lambda_0.5", "vdm"), ("RQ2", "vf_base_scratch", "vf_lambda_0.5"),
               ("RQ3", "vf_lambda_0.25", "vf_lambda_0.5"),
               ("RQ3", "vf_lambda_0.75", "vf_lambda_0.5"),
               ("RQ3", "vf_lambda_0.9", "vf_lambda_0.5"),
               ("RQ4", "vf_frozen_base", "vf_lambda_0.5"),
               ("RQ4", "vf_no_stop_gradient", "vf_lambda_0.5"))
DIFFERENCE_KEYS = (("fvd", "FVD"), ("fvd_digits", "FVD-digits"),
                   ("content_consistency", "content"), ("prompt_adherence", "prompt adherence"))
# coherence numbers (videofusion.metrics.coherence): both tables add these columns only where a
# row measured them (``--metrics ...,coherence``), and seeds.md the real clips' values
COHERENCE_KEYS = (("key_frame_seam", "seam"), ("flicker", "flicker"),
                  ("foreground_pieces", "pieces"), ("foreground_area_change", "area change"))
# the digit metrics that changed with the classifier's foreground input (docs/metrics.md)
OLD_INPUT_KEYS = ("content_consistency", "prompt_adherence", "motion_error")


def _stage_one(row: dict) -> str:
    """Which stage 1 a row started from: rows with equal hash prefixes share their weights."""
    if not row["pretrain_steps"]:
        return "-"
    if row.get("stage1") is None:
        return "not recorded"
    return row["stage1"]["base_sha256"][:8]


def _foreground(row: dict) -> bool:
    """Whether the row's digit metrics saw each frame's foreground (docs/metrics.md)."""
    return "foreground" in row["report"]["protocol"].get("digit_metrics", "")


def _digit_input(row: dict) -> str:
    """The table's word for the digit classifier's input: ``-`` for a row without digit
    metrics (video folders: the physics model)."""
    if "digit_metrics" not in row["report"]["protocol"]:
        return "-"
    return "foreground" if _foreground(row) else "old"


def _order(name: str) -> int:
    """Rows in the order of :data:`ABLATIONS`, unknown ones last."""
    return list(ABLATIONS).index(name) if name in ABLATIONS else len(ABLATIONS)


def _rows(results: Path) -> list[dict]:
    rows = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    return sorted(rows, key=lambda r: _order(r["name"]))


def _number(key: str, value: float) -> str:
    """3 decimals; 4 for flicker and area change, which live near 0.01."""
    return f"{value:.4f}" if key in ("flicker", "foreground_area_change") else f"{value:.3f}"


def _cell(metrics: dict, key: str) -> str:
    """A metric to 3 decimals, with its bootstrap spread where the report has one."""
    value = metrics.get(key)
    if not isinstance(value, (int, float)):
        return "n/a"
    spread = metrics.get(f"{key}_bootstrap_std")
    return _number(key, value) + (f" ± {spread:.1f}" if isinstance(spread, (int, float))
                                  else "")


def _columns(keys: tuple, metrics: list[dict]) -> tuple:
    """``keys`` plus the coherence keys that some of ``metrics`` has."""
    return keys + tuple((k, label) for k, label in COHERENCE_KEYS
                        if any(isinstance(m.get(k), (int, float)) for m in metrics))


def write_table(results: Path) -> Path:
    rows = _rows(results)
    columns = _columns(TABLE_KEYS, [_flatten(row["report"]) for row in rows])
    lines = ["| row | question | stage-2 steps x batch | stage-1 steps | "
             + " | ".join(label for _, label in columns)
             + " | digit metrics input | stage-1 weights |",
             "|---" * (6 + len(columns)) + "|"]
    for row in rows:
        metrics = _flatten(row["report"])
        cells = [_cell(metrics, k) for k, _ in columns]
        lines.append(f"| {row['name']} | {row['question']} | {row['steps']} x "
                     f"{row['batch_size']} | {row['pretrain_steps']} | " + " | ".join(cells)
                     + f" | {_digit_input(row)} | {_stage_one(row)} |")
    results.mkdir(parents=True, exist_ok=True)
    table = results / "table.md"
    table.write_text("\n".join(lines) + "\n")
    return table


def write_seed_summary(results: Path) -> Path | None:
    """``seeds.md`` beside the ``seed<N>`` folders: each row's mean over the seeds that measured
    it, the per-seed values in brackets (None while fewer than two seeds exist), then each of
    :data:`COMPARISONS` seed by seed, so that a reader sees whether a conclusion holds on every
    seed. Digit metrics from the classifier's old input are left out, and a note names whose."""
    seeds = sorted((p for p in results.parent.glob("seed*") if p.is_dir() and list(p.glob(
        "*.json"))), key=lambda p: int(p.name[4:]) if p.name[4:].isdigit() else 1 << 30)
    if len(seeds) < 2:
        return None
    measured: dict[str, dict[str, dict]] = {}
    rows: dict[str, dict[str, dict]] = {}
    left_out = []
    for folder in seeds:
        for row in _rows(folder):
            metrics = _flatten(row["report"])
            if not _foreground(row) and any(k in metrics for k in OLD_INPUT_KEYS):
                metrics = {k: v for k, v in metrics.items() if k not in OLD_INPUT_KEYS}
                left_out.append(f"{row['name']} at {folder.name}")
            measured.setdefault(row["name"], {})[folder.name] = metrics
            rows.setdefault(row["name"], {})[folder.name] = row
    everything = [m for per_seed in measured.values() for m in per_seed.values()]
    columns = _columns(TABLE_KEYS, everything)
    lines = ["| row | seeds | " + " | ".join(label for _, label in columns) + " |",
             "|---" * (2 + len(columns)) + "|"]
    for name in sorted(measured, key=_order):
        per_seed = measured[name]
        cells = []
        for key, _ in columns:
            values = [m[key] for m in per_seed.values() if isinstance(m.get(key), (int, float))]
            cells.append("n/a" if not values else _number(key, sum(values) / len(values)) + (
                " (" + ", ".join(_number(key, v) for v in values) + ")" if len(values) > 1
                else ""))
        lines.append(f"| {name} | {', '.join(s[4:] for s in per_seed)} | "
                     + " | ".join(cells) + " |")
    real = next((m for m in everything if any(f"{k}_real" in m for k, _ in COHERENCE_KEYS)), None)
    if real is not None:
        values = [f"{label} {_number(k, real[f'{k}_real'])}" for k, label in COHERENCE_KEYS
                  if isinstance(real.get(f"{k}_real"), (int, float))]
        lines += ["", "Real clips (the held-out set every row is measured against): "
                  + ", ".join(values) + "."]
    differences = []
    difference_keys = _columns(DIFFERENCE_KEYS, everything)
    for question, name, reference in COMPARISONS:
        for seed in [s.name for s in seeds if s.name in rows.get(name, {})
                     and s.name in rows.get(reference, {})]:
            a, b = measured[name][seed], measured[reference][seed]
            cells = [_difference(a, b, key) for key, _ in difference_keys]
            differences.append(f"| {question} | {name} - {reference} | {seed[4:]} | "
                               + " | ".join(cells) + " | "
                               + _same_stage_one(rows[name][seed], rows[reference][seed]) + " |")
    if differences:
        lines += ["", "Each comparison the paper makes, seed by seed: the row minus its "
                  "reference, in brackets in combined bootstrap spreads (sqrt(s1^2 + s2^2)) "
                  "where both rows have one. 'same stage 1' compares the hashes of the stage-1 "
                  "weights.", "",
                  "| question | row - reference | seed | " + " | ".join(
                      label for _, label in difference_keys) + " | same stage 1 |",
                  "|---" * (4 + len(difference_keys)) + "|", *differences]
    if left_out:
        lines += ["", "Content, adherence and motion measured on the digit classifier's old input "
                  "are not comparable with later ones (docs/metrics.md) and are left out: "
                  + ", ".join(left_out) + "."]
    summary = results.parent / "seeds.md"
    summary.write_text("\n".join(lines) + "\n")
    return summary


def _difference(metrics: dict, reference: dict, key: str) -> str:
    """``metrics[key] - reference[key]``, and how many combined bootstrap spreads that is."""
    a, b = metrics.get(key), reference.get(key)
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return "n/a"
    cell = ("+" if a >= b else "-") + _number(key, abs(a - b))
    spreads = [m.get(f"{key}_bootstrap_std") for m in (metrics, reference)]
    if all(isinstance(s, (int, float)) for s in spreads):
        cell += f" ({(a - b) / (spreads[0] ** 2 + spreads[1] ** 2) ** 0.5:+.1f})"
    return cell


def _same_stage_one(row: dict, reference: dict) -> str:
    """'yes' / 'no' when both rows recorded their stage-1 weights, else what is known."""
    marks = [_stage_one(row), _stage_one(reference)]
    if "-" in marks:
        return "-"
    if "not recorded" in marks:
        return "not recorded"
    return "yes" if marks[0] == marks[1] else "no"


def _flatten(report: dict) -> dict:
    flat = {}
    for key, value in report.items():
        if isinstance(value, dict):
            flat.update({k: v for k, v in _flatten(value).items() if k not in flat})
        else:
            flat[key] = value
    return flat
