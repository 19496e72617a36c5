"""``videofusion bench``: VideoFusion against the parameter-matched VDM baseline and the
parameter-matched peer, diffusers' UNet3DConditionModel (``videofusion.bench``). Unset flags
keep ``BenchConfig``'s defaults or its ``--quick`` preset."""

from __future__ import annotations

import argparse
import sys

from videofusion.safety import check_output_file

from .arguments import integers


def _ints(text: str) -> tuple[int, ...]:
    return tuple(integers(text, "32,64"))


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench", help="measure VideoFusion against the parameter-matched VDM baseline and "
                      "diffusers' UNet3DConditionModel",
        description="Sampling latency and memory (VideoFusion, the VDM baseline and the peer, "
                    "diffusers' UNet3DConditionModel, all at the same parameter count), "
                    "training step time and memory, FLOP/s against the measured matmul peak, "
                    "and long-video cost, in one run (docs/benchmarks.md). Unset flags keep the "
                    "defaults (or the --quick preset).",
        argument_default=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true",
                   help="the same comparison at a small size, under a minute")
    p.add_argument("--out", default="benchmark.json", help="JSON report (default: %(default)s)")
    p.add_argument("--markdown", help="markdown tables (default: --out with .md)")
    p.add_argument("--device", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, help="torch threads per worker (default: all CPUs)")
    p.add_argument("--frames", type=int)
    p.add_argument("--resolutions", type=_ints, help="e.g. 32,64")
    p.add_argument("--steps", type=int, help="DDIM steps per video")
    p.add_argument("--repeats", type=int, help="timed repeats per model (median reported)")
    p.add_argument("--no-guidance", dest="guidance", action="store_const", const=(False,),
                   help="skip the classifier-free guidance rows")
    p.add_argument("--base-channels", type=_ints)
    p.add_argument("--residual-channels", type=_ints)
    p.add_argument("--train-resolution", type=int)
    p.add_argument("--train-batch", type=int)
    p.add_argument("--long-frames", type=_ints, help="e.g. 16,128,512; empty string skips")
    p.add_argument("--long-resolution", type=int)
    p.add_argument("--long-steps", type=int)
    p.add_argument("--long-memory-steps", type=int,
                   help="DDIM steps of the long videos' tensor-peak run (profiled)")
    p.add_argument("--long-repeats", type=int,
                   help="fresh processes per long-video length (median and spread)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the networks (warm-up time reported as compile time)")
    p.add_argument("--system-allocator", dest="keep_freed_memory", action="store_const",
                   const=False, help="leave glibc's allocator at its defaults in the workers "
                                     "(by default they keep freed memory in the heap, as the "
                                     "other commands do)")
    p.add_argument("--profile", action="store_true",
                   help="instead: torch.profiler's top operators of one sampler step of each "
                        "model, at the largest resolution")
    p.set_defaults(handler=run_bench)
    return p


def run_bench(args: argparse.Namespace) -> int:
    from videofusion import bench

    options = {k: v for k, v in vars(args).items()
               if k not in ("command", "handler", "quick", "out", "markdown", "profile")}
    if getattr(args, "device", "cpu") == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
    quick = getattr(args, "quick", False)
    config = bench.BenchConfig.quick(**options) if quick else bench.BenchConfig(**options)
    bench.check_config(config)
    if getattr(args, "profile", False):
        job = {"task": "profile", "resolution": max(config.resolutions),
               "guided": config.guidance[0]}
        for kind, table in bench.run_worker(config, [job])[0].items():
            print(f"{kind}, one DDIM step at {job['resolution']}x{job['resolution']}, "
                  f"{config.frames} frames, {config.threads} threads:\n{table}")
        return 0
    out = check_output_file(args.out, "--out")
    markdown = check_output_file(args.markdown, "--markdown") if getattr(
        args, "markdown", None) else check_output_file(out.with_suffix(".md"), "--out")
    report = bench.run_benchmark(config, out, markdown, log=lambda m: print(m, file=sys.stderr))
    print(bench.markdown_report(report), end="")
    print(f"wrote {out} and {markdown}")
    return 0


