"""Benchmark VideoFusion against the parameter-matched VDM baseline and the parameter-matched
peer, diffusers' UNet3DConditionModel (docs/benchmarks.md).

The same flags as ``videofusion bench``, e.g.::

    .venv/bin/python scripts/bench.py --quick --out quick.json
    .venv/bin/python scripts/bench.py --out docs/benchmarks.json --markdown docs/benchmarks_table.md
"""

import sys

from videofusion.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
