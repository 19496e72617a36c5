"""Parameters that FSDP2 shards, seen whole.

Under FSDP2 (``accelerate`` with ``fsdp_version: 2``, which calls torch's ``fully_shard``) every
parameter of the model becomes a ``DTensor``: each process holds one slice of it (``Shard(0)``),
the shape it reports is the whole one, and elementwise arithmetic between tensors sharded alike
stays on each process. So the trainer's EMA, made of clones of the parameters, is sharded the
same way and steps without communication; only what leaves the run (a checkpoint's EMA file, an
exported or previewed model) needs the tensors whole, and only a resume cuts them up again.

Gathering a DTensor is a collective: every process calls ``whole`` for the same tensors in the
same order. Without FSDP (one process, DDP) these functions hand the tensors back unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.distributed.tensor import DTensor, distribute_tensor


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` whole: a DTensor gathered from every process onto the CPU (one tensor at a
    time, so the device never holds more than one whole parameter); a plain tensor as it is."""
    return tensor.full_tensor().cpu() if isinstance(tensor, DTensor) else tensor


def whole_tensors(tensors: Iterable[torch.Tensor], keep: bool) -> list[torch.Tensor]:
    """``whole`` of each tensor; a process that writes nothing (``keep=False``) still takes part
    in every gather but drops each whole tensor at once, so that only one process holds them."""
    gathered = []
    for tensor in tensors:
        tensor = whole(tensor)
        if keep:
            gathered.append(tensor)
    return gathered


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's slice of a DTensor (its own values, no communication); a plain tensor as
    it is."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def shard_like(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A whole ``tensor``, which every process holds, cut and placed as ``like`` is: the slice
    of this process for a DTensor ``like`` (taken from the local copy, nothing is sent), else
    ``tensor`` on ``like``'s device."""
    if not isinstance(like, DTensor):
        return tensor.to(like.device)
    return distribute_tensor(tensor.to(like.device), like.device_mesh, like.placements,
                             src_data_rank=None)
