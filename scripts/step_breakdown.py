"""Where one sampler step's wall time goes, without a profiler.

    OMP_NUM_THREADS=2 python scripts/step_breakdown.py [--resolution 64] [--no-guidance] \
        [--repeats 5]

Builds the benchmark's VideoFusion model (``videofusion bench``'s sizes, random weights), runs
one-step pipeline calls and times, with a wall clock around each call, the operator families
that make up the networks: convolutions, group norms, SiLU, attention, linear layers and
concatenations (the ``torch.nn.functional`` entry points every layer here and in diffusers goes
through, and ``torch.cat``). Prints the median over ``--repeats`` calls of the step and of each
family. torch.profiler's self-CPU column charged element-wise operators about ten times their
wall time on this machine (SiLU of a 32x32x64x64 map: 9.9 ms a call in the profile, 1.0 ms
timed alone on the same tensor), so its table overstates their share.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

from videofusion.allocator import keep_freed_memory
from videofusion.bench import BenchConfig, Worker

FAMILIES = {"convolution": (F, "conv2d"), "group norm": (F, "group_norm"), "SiLU": (F, "silu"),
            "attention": (F, "scaled_dot_product_attention"), "linear": (F, "linear"),
            "concatenation": (torch, "cat")}


def timed_families(seconds: dict[str, float]) -> None:
    """Wrap each family's entry point so that its wall time adds up in ``seconds``."""
    for family, (owner, name) in FAMILIES.items():
        original = getattr(owner, name)

        def wrapper(*args, _original=original, _family=family, **kwargs):
            start = time.perf_counter()
            out = _original(*args, **kwargs)
            seconds[_family] += time.perf_counter() - start
            return out

        setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--no-guidance", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    keep_freed_memory()  # as the sampling commands and the benchmark's workers do
    worker = Worker(BenchConfig(threads=torch.get_num_threads()))
    guided = not args.no_guidance
    model = worker.models(args.resolution, guided, kinds=("videofusion",))["videofusion"]
    call = worker.sample_call(worker.pipeline(model.eval(), args.resolution), guided, 1)
    call()
    seconds: dict[str, float] = defaultdict(float)
    timed_families(seconds)
    steps, shares = [], defaultdict(list)
    for _ in range(args.repeats):
        seconds.clear()
        start = time.perf_counter()
        call()
        steps.append(time.perf_counter() - start)
        for family in FAMILIES:
            shares[family].append(seconds[family])
    step = statistics.median(steps)
    print(f"one step, {args.resolution}x{args.resolution}, {'guided' if guided else 'unguided'}, "
          f"{torch.get_num_threads()} threads: {step * 1e3:.0f} ms (median of {args.repeats})")
    rest = step
    for family in FAMILIES:
        ms = statistics.median(shares[family])
        rest -= ms
        print(f"  {family:14s} {ms * 1e3:7.1f} ms  {ms / step:6.1%}")
    print(f"  {'the rest':14s} {rest * 1e3:7.1f} ms  {rest / step:6.1%}")


if __name__ == "__main__":
    main()
