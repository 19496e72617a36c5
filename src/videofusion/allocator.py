"""The C heap under CPU tensors: keep freed memory for the next step, or hand it back.

On the CPU, torch takes tensor memory from the C allocator. glibc serves a large request
(above 128 KB, a threshold it raises as it goes) with a fresh ``mmap`` and unmaps it when the
tensor is freed, and it returns the free top of its heap to the OS past a threshold: every
sampler step then faults in and zero-fills again the pages the step before gave back.
Measured on two guided DDIM steps of the benchmark's 64x64 model: 300,000-400,000 page faults
with glibc's defaults, a few thousand with the memory kept (:func:`keep_freed_memory`), and
about a fifth less time (docs/benchmarks.md). The price is a resident set that stays at its
peak while the process lives, which a sampling process can afford; a training step measured
no faster kept. Long videos give each clip's working memory back explicitly
(:func:`release_freed_memory`), so that one clip's heap layout does not raise the next one's
peak.

Both are glibc's (``mallopt``, ``malloc_trim``); elsewhere (macOS, Windows, musl) they do
nothing. They change the whole process, so the sampling commands call
:func:`keep_freed_memory` once at start; a library user decides for their own process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# the largest value glibc takes for the mmap threshold (HEAP_MAX_SIZE / 2 on 64-bit): larger
# requests are mapped whatever the setting
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
# the environment variables through which a user sets glibc's thresholds themselves
GLIBC_TUNING_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                          "GLIBC_TUNABLES")


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def _glibc_function(name: str):
    """``name`` from the C library if it is glibc's (it has ``mallopt``), else None."""
    libc = _libc()
    if libc is None or getattr(libc, "mallopt", None) is None:
        return None
    return getattr(libc, name, None)


def keep_freed_memory(environ=os.environ) -> bool:
    """Serve tensors up to 32 MB from the heap and never shrink it; True if the setting was
    made. A process whose environment already tunes glibc's allocator is left as it is."""
    mallopt = _glibc_function("mallopt")
    if mallopt is None or any(name in environ for name in GLIBC_TUNING_VARIABLES):
        return False
    # mallopt returns 1 on success
    kept = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    # the trim threshold is a size_t set through an int: the largest int, about 2 GB of free
    # heap top kept
    return mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1 and kept


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the OS (glibc's ``malloc_trim``; elsewhere nothing).

    glibc keeps what a clip's sampling freed in its heap, in holes laid out differently from
    clip to clip, and the next clip's working memory comes on top of them: without this the
    peak resident set of a 512-frame video at 32x32 sat about 20% above one clip's (medians of
    fresh processes; about 10% with it) although nothing stayed allocated (docs/benchmarks.md,
    issue 26). It takes a few milliseconds."""
    trim = _glibc_function("malloc_trim")
    if trim is not None:
        trim(0)
