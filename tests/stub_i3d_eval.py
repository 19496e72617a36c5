"""``videofusion eval`` with the Kinetics-400 I3D replaced by test_evaluate's ``FakeI3D`` (a
fixed map to 400 logits), so a multi-process launch can run this file in each process
(tests/test_distributed_eval.py)."""

import sys

from test_evaluate import fake_extractor

from videofusion.cli import main
from videofusion.metrics import fvd


def stub(cls, directory=None):
    return fake_extractor()


if __name__ == "__main__":  # patched only in the launched processes, never in pytest's own
    fvd.I3DFeatureExtractor.from_cache = classmethod(stub)
    sys.exit(main(sys.argv[1:]))
