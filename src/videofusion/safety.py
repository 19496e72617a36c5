"""Guards that keep bad input and concurrent runs from costing work or data.

- ``RunLock``: one live run per output folder (a lock file with the owner's pid and host; a lock
  whose process is gone on this host is stale and taken over).
- ``holds_run`` / ``set_aside`` / ``drop_set_aside``: a new run never silently replaces an old
  one; ``--overwrite`` moves the old run into ``OUTPUT/.overwritten-N`` and deletes it only after
  the new run's first checkpoint.
- ``finite_float`` and friends: argparse types that refuse ``nan``/``inf`` and out-of-range
  numbers at parse time; ``check_size`` refuses tensors that could never be allocated.
- ``check_output_dir`` / ``check_output_file``: output paths that cannot be written are refused
  before the work.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import time
from pathlib import Path

LOCK_FILE = ".videofusion.lock"
SET_ASIDE_PREFIX = ".overwritten-"
# What a training run writes into its output folder: any of these means the folder holds a run.
# (rounds: the students of a distillation's finished rounds, videofusion.distillation)
RUN_ENTRIES = ("config.yaml", "checkpoints", "pipeline", "metrics.jsonl", "train_summary.json",
               "samples", "tensorboard", "loss_curve.png", "rounds")


class RunStopped(RuntimeError):
    """A run stopped on purpose (e.g. diverged); the CLI prints it as one line, exit code 1."""


class RunLock:
    """An exclusive lock on a run folder, held by one process (``O_EXCL`` create); ``option``
    names the folder's setting in the error (a latent cache's writer takes one too)."""

    def __init__(self, folder: str | Path, option: str = "output_dir"):
        self.path = Path(folder) / LOCK_FILE
        self.option = option
        self.held = False

    def acquire(self) -> RunLock:
        """Take the lock or raise ``ValueError`` naming the live owner; stale locks are taken."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None and self._age() < 10:  # a run that has just created it
                    owner = {"pid": "?", "host": "?"}
                if owner is not None and (owner["pid"] == "?" or _alive(owner)):
                    raise ValueError(
                        f"{self.option}: {self.path.parent} is in use by another run (pid "
                        f"{owner.get('pid')} on {owner.get('host')}, lock file {self.path}); "
                        "wait for it, or delete the lock file if that run is gone") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(record)
            self.held = True
            return self
        raise ValueError(f"{self.option}: cannot take the lock {self.path} (another run races "
                         "for this folder)")

    def _owner(self) -> dict | None:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # unreadable: a writer killed before it wrote the record
        return owner if isinstance(owner, dict) else None

    def _age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except OSError:
            return 0.0

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _alive(owner: dict) -> bool:
    """Whether the lock's owner may still run: another host's process cannot be checked."""
    if owner.get("host") != socket.gethostname():
        return True
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return False  # a lock this process left behind (an earlier run in the same process)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holds_run(folder: str | Path) -> list[str]:
    """The entries of a training run in ``folder`` (empty if it holds none)."""
    folder = Path(folder)
    return [name for name in RUN_ENTRIES if (folder / name).exists()]


def set_aside(folder: str | Path) -> Path:
    """Move the run in ``folder`` into ``folder/.overwritten-N``, kept until ``drop_set_aside``."""
    folder = Path(folder)
    n = 0
    while (folder / f"{SET_ASIDE_PREFIX}{n}").exists():
        n += 1
    aside = folder / f"{SET_ASIDE_PREFIX}{n}"
    aside.mkdir()
    for name in holds_run(folder):
        os.replace(folder / name, aside / name)
    return aside


def drop_set_aside(folder: str | Path) -> None:
    """Delete the runs that ``--overwrite`` set aside (the new run has its first checkpoint)."""
    for path in Path(folder).glob(f"{SET_ASIDE_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)


# ---- numbers ----------------------------------------------------------------------------------

def _number(kind, text: str, low=None, high=None, low_open=False):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        expected = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    if low is not None and high is not None and (too_low or value > high):
        raise argparse.ArgumentTypeError(
            f"must lie in {'(' if low_open else '['}{low}, {high}], got {text!r}")
    if too_low:
        raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low}, got {text!r}")
    if high is not None and value > high:
        raise argparse.ArgumentTypeError(f"must be <= {high}, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """A float option: any finite number (``nan`` and ``inf`` refused at parse time)."""
    return _number(float, text)


def float_range(low=None, high=None, low_open=False):
    """A finite float option in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    def parse(text: str) -> float:
        return _number(float, text, low, high, low_open)

    parse.__name__ = "float"
    return parse


def int_range(low=None, high=None):
    """An integer option in ``[low, high]``: ``0`` for a count is refused, not read as a
    default."""
    def parse(text: str) -> int:
        return _number(int, text, low, high)

    parse.__name__ = "int"
    return parse


positive_int = int_range(1)
non_negative_int = int_range(0)


def format_bytes(n: float) -> str:
    """``4.9 TB``: decimal units, one decimal."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def memory_limit() -> int:
    """This machine's memory in bytes (the most any tensor here can hold)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def check_size(what: str, elements: int, copies: int = 1) -> None:
    """Refuse work whose ``copies`` fp32 tensors of ``elements`` values exceed this machine's
    memory, saying how much they would need (a one-line error instead of an allocator crash)."""
    need = 4 * elements * copies
    have = memory_limit()
    if need > have:
        raise ValueError(f"{what} would need {format_bytes(need)} in fp32 tensors alone; "
                         f"this machine has {format_bytes(have)}")


def check_output_dir(path: str | Path, option: str, files: tuple[str, ...] = ()) -> Path:
    """Refuse, before the work, an output folder that cannot be made: a file in its place or in
    the place of a parent, an unwritable parent, or ``files`` to write that exist as folders.
    Nothing is created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option}: {path} exists and is not a folder")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{option}: {existing} is a file, so {path} cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option}: the folder {existing} is not writable")
    for name in files:
        if (path / name).is_dir():
            raise ValueError(f"{option}: {path / name} is a folder, a file is to be written there")
    return path


def check_output_file(path: str | Path, option: str) -> Path:
    """Refuse an output file path that is a folder or whose folder cannot be created, before
    the work that would write it."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option}: {path} is a folder, a file is to be written there")
    check_output_dir(path.parent if str(path.parent) else ".", option)
    return path


def check_safetensors(folder: str | Path) -> None:
    """Read the header of every ``*.safetensors`` under ``folder`` (cheap, memory-mapped), so that
    a truncated or corrupt weight file is named in one line before anything is built."""
    from safetensors import safe_open

    for path in sorted(Path(folder).rglob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as err:  # SafetensorError, OSError: any unreadable file
            raise ValueError(f"{path} is not a readable safetensors file "
                             f"({' '.join(str(err).split())})") from None
