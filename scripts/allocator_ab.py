"""Guided sampler steps of the benchmark's VideoFusion model with glibc's allocator at its
defaults or with freed memory kept (``videofusion.allocator.keep_freed_memory``).

    python scripts/allocator_ab.py [--keep] [--resolution 64] [--repeats 5]

Run it alternately with and without ``--keep`` (one setting per process: glibc's thresholds
cannot be put back). Prints the page faults of one 2-step call and the median seconds of
``--repeats`` more, at two threads and the default OpenMP wait policy.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--keep", action="store_true")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if args.keep:
        from videofusion.allocator import keep_freed_memory

        assert keep_freed_memory(), "glibc only, with no MALLOC_* or GLIBC_TUNABLES set"
    import torch

    from videofusion.bench import BenchConfig, Worker

    torch.set_num_threads(2)
    worker = Worker(BenchConfig(threads=2))
    model = worker.models(args.resolution, True, kinds=["videofusion"])["videofusion"]
    call = worker.sample_call(worker.pipeline(model.eval(), args.resolution), True, 2)
    call()  # warm-up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    call()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    print(f"{'kept' if args.keep else 'glibc default'}: {faults} page faults per 2-step call, "
          f"median {statistics.median(times):.3f} s (min {min(times):.3f})")


if __name__ == "__main__":
    main()
