"""Atomic, resumable training checkpoints that never run code from the run folder.

A checkpoint is a folder ``checkpoints/step-000123`` written by ``accelerate``'s ``save_state``
(model as safetensors, optimizer and RNG states of every process) plus the trainer's own files,
written by the ``write`` callback of ``save_checkpoint`` as safetensors and JSON (the EMA, the LR
schedule) and ``trainer_state.json`` (global step, samples seen, elapsed time). Nothing is
registered with ``register_for_checkpointing``: accelerate unpickles those objects with
``weights_only=False``, so a planted pickle would run code on ``--resume``.

Before anything is loaded, ``verify_checkpoint`` reads every file: accelerate's own pickles
(``ALLOWED_PICKLES``) only through torch's ``weights_only=True`` unpickler, every other pickle is
refused (``UnsafeCheckpoint``); truncated or unreadable files raise ``CorruptCheckpoint``, and
``resume_checkpoint`` then falls back to the checkpoint before.

A checkpoint is first written under a hidden temporary name and then renamed with ``os.replace``,
which is atomic: a run killed mid-write leaves only a ``.tmp-*`` folder, which is ignored and
later removed, never a broken ``step-*`` folder. The data position needs no state of its own: the
trainer's batches are a pure function of (seed, global step), see
``videofusion.train.GlobalBatchSampler``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"
TMP_PREFIX = ".tmp-"
# The pickles accelerate's save_state writes; read only with weights_only=True (plain tensors,
# numbers and numpy RNG arrays). Any other pickle in a checkpoint is refused. Under FSDP (full
# state dicts, see training_setup.check_fsdp) the model is pytorch_model_fsdp.bin, a pickle of
# plain tensors that accelerate itself loads with weights_only=True.
ALLOWED_PICKLES = re.compile(
    r"^((optimizer|scheduler|pytorch_model_fsdp)(_\d+)?\.bin|random_states_\d+\.pkl"
    r"|scaler\.pt)$")
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt")


class UnsafeCheckpoint(ValueError):
    """A checkpoint file that could run code when loaded; never loaded, never skipped."""


class CorruptCheckpoint(ValueError):
    """A checkpoint file that is truncated or unreadable; an older checkpoint may stand in."""


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
                    keep: int | None = None,
                    write: Callable[[Path], None] | None = None) -> Path:
    """Save the accelerator's state (all processes call this) as checkpoint ``step``.

    Every process writes its RNG state into the same temporary folder, the main process calls
    ``write(folder)`` (the trainer's own safetensors/JSON files), adds ``trainer_state.json`` and
    renames it; then only the newest ``keep`` checkpoints remain.
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
        if write is not None:
            write(tmp)
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2))
        _swap_in(tmp, target)
        if keep is not None:
            for _, path in list_checkpoints(root)[:-keep]:
                shutil.rmtree(path)
    accelerator.wait_for_everyone()
    return target


def load_checkpoint(accelerator, checkpoint: str | Path, verified: bool = False) -> dict:
    """Restore the accelerator's state from ``checkpoint`` once every file of it has been
    verified (``verify_checkpoint``, unless the caller just did); return its trainer state."""
    if not verified:
        verify_checkpoint(checkpoint)
    try:
        accelerator.load_state(str(checkpoint), load_kwargs={"weights_only": True})
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        raise CorruptCheckpoint(f"checkpoint {checkpoint} cannot be loaded: "
                                f"{type(err).__name__}: {err}") from err
    return read_state(checkpoint)


def resume_checkpoint(root: str | Path, load: Callable[[Path], dict]) -> tuple[Path, dict] | None:
    """``load`` the newest loadable checkpoint under ``root``; ``(folder, state)``, or None.

    A corrupt newest checkpoint falls back to the one before with a warning; an unsafe one
    (``UnsafeCheckpoint``) stops, and so does a run whose every checkpoint is corrupt."""
    found = list_checkpoints(root)
    first_error = None
    for _, folder in reversed(found):
        try:
            return folder, load(folder)
        except CorruptCheckpoint as err:
            logger.warning("%s; trying the checkpoint before it", err)
            first_error = first_error or err
    if first_error is not None:
        raise CorruptCheckpoint(f"no checkpoint under {root} can be loaded: {first_error}")
    return None


def verify_checkpoint(checkpoint: str | Path) -> dict:
    """Read every file of ``checkpoint`` the safe way, before any of it is loaded; return its
    trainer state.

    Raises ``UnsafeCheckpoint`` for a pickle accelerate never writes or one that holds more than
    tensors, ``CorruptCheckpoint`` for a truncated or unreadable file; both name the file."""
    from accelerate.utils import load as weights_only_load
    from safetensors import safe_open

    folder = Path(checkpoint)
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CorruptCheckpoint(f"checkpoint file {folder / STATE_FILE} is unreadable "
                                f"({type(err).__name__}: {err})") from err
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        try:
            if path.name.endswith(PICKLE_SUFFIXES):
                if not ALLOWED_PICKLES.match(path.name) or path.parent != folder:
                    older = (" (older videofusion wrote its trainer state so: convert it with "
                             "python scripts/migrate_checkpoints.py RUN_DIR)"
                             if path.name == "custom_checkpoint_0.pkl" else "")
                    raise UnsafeCheckpoint(
                        f"checkpoint file {path} is a pickle that videofusion never writes "
                        f"and never loads (it could run code); refusing this checkpoint{older}")
                with warnings.catch_warnings():  # e.g. "pickle protocol 4": stderr stays one line
                    warnings.simplefilter("ignore")
                    weights_only_load(path, map_location="cpu")  # weights_only=True
            elif path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as handle:
                    handle.keys()
            elif path.suffix == ".json":
                json.loads(path.read_text())
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpoint(f"checkpoint file {path} holds more than tensors and was not "
                                   f"loaded ({_cause(err)}); refusing this checkpoint") from None
        except (UnsafeCheckpoint, CorruptCheckpoint):
            raise
        except Exception as err:  # torch, safetensors and json raise many types on bad bytes
            raise CorruptCheckpoint(f"checkpoint file {path} is unreadable "
                                    f"({type(err).__name__}: {err})") from err
    return state


def _cause(err: Exception) -> str:
    """The cause in torch's page-long weights-only error, which also suggests
    ``weights_only=False``: e.g. ``unsupported GLOBAL posix.system``."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation",
                   "(1)", "(2)")
    for line in str(err).splitlines():
        line = line.replace("WeightsUnpickler error:", "").strip()
        if line and not line.startswith(boilerplate):
            return line.split(" was not an allowed")[0].split(" whose module")[0]
    return "not plain tensors"


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
