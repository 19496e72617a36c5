"""Evaluation over several processes (``accelerate launch -m videofusion.cli eval``): each
process samples, and runs I3D over, its share of the batches; every process then gathers the
whole set, and the main one writes the report.

A share is a run of whole batches, contiguous and in order, the same batches a single process
makes: each video's noise does not depend on its batch (``sample_model``) and each batch goes
through the networks as it would alone, so the gathered videos and features are those of a
1-process run. One process (no launcher) is the plain loop, without torch.distributed.
"""

from __future__ import annotations

from functools import cache

import numpy as np


@cache
def state():
    """accelerate's view of the launch: rank, process count, this process's device (gloo
    between CPU processes where there is no GPU, as in training)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    return state().is_main_process


def process_device(device):
    """``device`` for this process: with several processes, a CUDA device becomes this
    process's own GPU (``cuda:LOCAL_RANK``)."""
    if state().num_processes > 1 and device.type == "cuda":
        return state().device
    return device


def batches(count: int, batch_size: int) -> list[range]:
    """The batches of ``count`` videos, ``batch_size`` each (the last may be short)."""
    return [range(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


def my_share(count: int, batch_size: int) -> range:
    """The videos this process handles: a contiguous run of whole batches, empty when there are
    more processes than batches."""
    runs = np.array_split(np.arange(len(batches(count, batch_size))), state().num_processes)
    mine = runs[state().process_index]
    if not len(mine):
        return range(0)
    return range(int(mine[0]) * batch_size, min((int(mine[-1]) + 1) * batch_size, count))


def gather(part: np.ndarray | None) -> np.ndarray:
    """Every process's ``part`` (``None``: an empty share), concatenated in process order."""
    if state().num_processes == 1:
        return part
    from accelerate.utils import gather_object

    return np.concatenate([p for p in gather_object([part]) if p is not None])


def embed(extractor, videos: np.ndarray, batch_size: int, progress: bool) -> np.ndarray:
    """I3D logits ``(N, 400)`` of ``videos`` ``(N, frames, H, W, C)``, each process embedding
    its share."""
    share = my_share(len(videos), batch_size)
    part = (extractor.embed(videos[share.start:share.stop], batch_size, progress)[0]
            if len(share) else None)
    return gather(part)
