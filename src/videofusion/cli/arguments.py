"""What every command shares: the program name, one-line usage errors, and argument types."""

from __future__ import annotations

import argparse

from videofusion.choices import DEFAULT_DEVICE, DEFAULT_DTYPE, DTYPES
from videofusion.devices import device_name
from videofusion.safety import int_range

PROG = "videofusion"
SEED = int_range(0, 2 ** 63 - 1)  # what torch.Generator.manual_seed takes


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the project's rule for bad input)."""

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def one_line(err: Exception) -> str:
    """An error as the one line the command prints (a missing file names the file)."""
    text = str(err) if not isinstance(err, FileNotFoundError) or not err.filename else (
        f"{err.strerror}: {err.filename}" if err.strerror else str(err))
    return " ".join(text.split())


def device(text: str) -> str:
    """``--device``: a name ``videofusion.devices`` knows (whether CUDA is there is checked
    when the command runs, before any work)."""
    try:
        return device_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def add_device_options(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--dtype``, the same on every command that samples."""
    p.add_argument("--device", type=device, default=DEFAULT_DEVICE,
                   help="auto (CUDA when present, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=DTYPES, default=DEFAULT_DTYPE,
                   help="precision of the networks' forward passes (autocast); latents and the "
                        "scheduler stay fp32 (docs/devices.md)")


def integers(text: str, example: str = "16,32,64") -> list[int]:
    """``"16,32,64"`` -> ``[16, 32, 64]``; empty items are ignored."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected integers like {example}, got {text!r}") from err


def grid_shape(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected ROWS,COLS like 3,4, got {text!r}") from err
    if rows < 1 or cols < 1:
        raise argparse.ArgumentTypeError(f"rows and columns must be >= 1, got {text!r}")
    return rows, cols
