"""Device and precision names of sampling and evaluation (``--device``, ``--dtype``), resolved
once here so that every command means the same by them.

Torch is imported only inside the resolving functions: the command line checks the names with
:func:`device_name` before it loads anything.
"""

from __future__ import annotations

from .choices import DEFAULT_DEVICE, DEFAULT_DTYPE, DEVICES, DTYPES

_TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def device_name(name: str) -> str:
    """``name`` if it is one of ``DEVICES`` or ``cuda:N``; a ``ValueError`` naming the choices
    otherwise."""
    kind, _, index = str(name).partition(":")
    if name in DEVICES or kind == "cuda" and index.isdigit():
        return str(name)
    raise ValueError(f"device must be one of {', '.join(DEVICES)} or cuda:N, got {name!r}")


def resolve_device(name=None):
    """``auto`` (or ``None``) -> CUDA when present, else the CPU; ``cpu``; ``cuda`` / ``cuda:N``
    checked to exist, so a missing GPU is one clear error before any work. A ``torch.device``
    is taken as it is."""
    import torch

    if isinstance(name, torch.device):
        return name
    name = device_name(DEFAULT_DEVICE if name is None else name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name}: CUDA is not available here (torch "
                             f"{torch.__version__}, {torch.cuda.device_count()} GPUs); use "
                             "--device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name}: only {torch.cuda.device_count()} GPUs here")
    return device


def resolve_dtype(name=None):
    """``fp32`` / ``fp16`` / ``bf16`` (or ``None``: the default) -> the ``torch.dtype``; a
    ``torch.dtype`` among those three is taken as it is."""
    import torch

    if isinstance(name, torch.dtype):
        if name not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {name}")
        return name
    name = DEFAULT_DTYPE if name is None else name
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return getattr(torch, _TORCH_DTYPES[name])
