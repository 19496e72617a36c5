"""Class names: what a class-conditioned model calls its labels, and the one place that turns a
label a user gives (a name or an index) into the index its networks take.

A pipeline folder records its names as ``class_names`` in ``model_index.json`` (training takes
them from its dataset: a video folder's sorted class folders, the moving digits' "0".."9"). A
folder saved without them (before names were recorded, or trained on data without names) is
named by its indices: "0", "1", ... ``class_index`` reads a label as a name first (exactly,
else ignoring case when that picks one class), then as an index, so a model whose classes are
"0".."9" takes "3" either way. Torch-free: the command line and the studio read the names from a
folder's JSON files without loading the model.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Iterable, Sequence
from pathlib import Path

LabelLike = int | str


def default_class_names(num_classes: int) -> list[str]:
    """The names of a model that recorded none: its indices, ``"0" .. "num_classes - 1"``."""
    return [str(i) for i in range(num_classes)]


def check_class_names(names, num_classes: int | None) -> list[str]:
    """``names`` as a list of distinct, non-empty strings, one per class; ``ValueError``
    otherwise (one line)."""
    if num_classes is None:
        raise ValueError("class_names: this model is not class-conditioned: it has no classes")
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ValueError(f"class_names must be a list of strings, got {names!r}")
    names = list(names)
    if len(names) != num_classes:
        raise ValueError(f"class_names: {len(names)} names for a model of {num_classes} "
                         "classes")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"class_names must be non-empty strings, got {bad[0]!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"class_names must be distinct, {repeated[0]!r} is repeated")
    return names


def resolve_class_names(recorded, num_classes: int | None) -> list[str] | None:
    """A model's class names: ``recorded`` (checked), else its indices as strings; ``None``
    for a model that is not class-conditioned."""
    if recorded is not None:
        return check_class_names(recorded, num_classes)
    return None if num_classes is None else default_class_names(num_classes)


def describe_classes(names: Sequence[str]) -> str:
    """The classes in words: ``"0 = cartpole, 1 = cheetah"``, or ``"0, 1, 2"`` when the names
    are the indices."""
    if list(names) == default_class_names(len(names)):
        return ", ".join(names)
    return ", ".join(f"{i} = {name}" for i, name in enumerate(names))


def class_index(label: LabelLike, names: Sequence[str] | None, what: str = "class label") -> int:
    """The index of ``label`` among ``names``: a name (exactly, else ignoring case when that
    picks one class) or an index, as an int or a string of digits. ``ValueError`` (one line,
    naming ``what`` and every valid choice) for anything else; ``names`` ``None`` is a model
    without classes."""
    if names is None:
        raise ValueError(f"{what}: this model is not class-conditioned: it takes no class "
                         "labels")
    if isinstance(label, str):
        text = label.strip()
        if text in names:
            return list(names).index(text)
        folded = [i for i, name in enumerate(names) if name.casefold() == text.casefold()]
        if len(folded) == 1:
            return folded[0]
        index = int(text) if text.isdecimal() and text.isascii() else None
    elif isinstance(label, numbers.Integral) and not isinstance(label, bool):
        index = int(label)
    else:
        index = None
    if index is not None and 0 <= index < len(names):
        return index
    raise ValueError(f"{what}: {label!r} is not a class of this model; choose a name or an "
                     f"index: {describe_classes(names)}")


def class_indices(labels: LabelLike | Iterable[LabelLike], names: Sequence[str] | None,
                  what: str = "class label") -> list[int]:
    """``class_index`` of one label or of each of a list (a tensor or array too)."""
    if hasattr(labels, "tolist"):  # a tensor or an array
        labels = labels.tolist()
    if isinstance(labels, (str, numbers.Integral)):
        labels = [labels]
    return [class_index(label, names, what) for label in labels]


def folder_configs(folder: str | Path) -> tuple[dict, dict]:
    """A pipeline folder's ``model_index.json`` and ``residual/config.json``, read without
    loading anything; ``ValueError`` if they cannot be read."""
    folder = Path(folder)
    try:
        index = json.loads((folder / "model_index.json").read_text())
        residual = json.loads((folder / "residual" / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{folder} is not a readable VideoFusionPipeline folder "
                         f"({' '.join(str(err).split())})") from None
    return index, residual


def folder_class_names(folder: str | Path) -> list[str] | None:
    """The class names of the pipeline folder ``folder`` (nothing loaded); ``None`` if it is
    not class-conditioned."""
    index, residual = folder_configs(folder)
    return resolve_class_names(index.get("class_names"), residual.get("num_classes"))
