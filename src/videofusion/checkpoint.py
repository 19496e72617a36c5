"""Atomic, resumable training checkpoints.

A checkpoint is a folder ``checkpoints/step-000123`` written by ``accelerate``'s ``save_state``
(model as safetensors, optimizer, RNG states of every process, registered objects such as the EMA
and LR schedule) plus ``trainer_state.json`` (global step, samples seen, elapsed time). It is first
written under a hidden temporary name and then renamed with ``os.replace``, which is atomic: a run
killed mid-write leaves only a ``.tmp-*`` folder, which is ignored and later removed, never a
broken ``step-*`` folder. The data position needs no state of its own: the trainer's batches are
a pure function of (seed, global step), see ``videofusion.train.GlobalBatchSampler``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"
TMP_PREFIX = ".tmp-"


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:06d}"


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if p.is_dir() and (m := STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()]
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def read_state(checkpoint: str | Path) -> dict:
    return json.loads((Path(checkpoint) / STATE_FILE).read_text())


def remove_stale(root: str | Path) -> None:
    """Delete temporary folders and files that killed runs left behind."""
    root = Path(root)
    if root.is_dir():
        for path in root.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes ``target`` in one ``os.replace``.

    An existing ``target`` is swapped out first and deleted only after the new one is in place.
    """
    target = Path(target)
    tmp = target.parent / f"{TMP_PREFIX}{target.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap_in(tmp, target)


def _swap_in(tmp: Path, target: Path) -> None:
    """Make the finished folder ``tmp`` the new ``target`` (two renames, each atomic)."""
    _fsync_tree(tmp)
    old = target.parent / f"{TMP_PREFIX}old-{target.name}"
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    _fsync_dir(target.parent)
    if old.exists():
        shutil.rmtree(old)


def atomic_write_text(path: Path, text: str) -> Path:
    """Write a small file so that readers see the old or the new content, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}"
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def save_checkpoint(accelerator, root: str | Path, step: int, state: dict,
                    keep: int | None = None) -> Path:
    """Save the accelerator's state (all processes call this) as checkpoint ``step``.

    Every process writes its RNG state into the same temporary folder, the main process adds
    ``trainer_state.json`` and renames it; then only the newest ``keep`` checkpoints remain.
    """
    root = Path(root)
    target = step_dir(root, step)
    tmp = root / f"{TMP_PREFIX}{target.name}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2))
        _swap_in(tmp, target)
        if keep is not None:
            for _, path in list_checkpoints(root)[:-keep]:
                shutil.rmtree(path)
    accelerator.wait_for_everyone()
    return target


def load_checkpoint(accelerator, checkpoint: str | Path) -> dict:
    """Restore the accelerator's state from ``checkpoint``; return its trainer state."""
    accelerator.load_state(str(checkpoint))
    return read_state(checkpoint)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
