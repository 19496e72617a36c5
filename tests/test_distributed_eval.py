"""Multi-process evaluation: 2 CPU processes (gloo, launched by torchrun as ``accelerate
launch`` would) share the sampling and the I3D batches out and gather them; the report equals
a 1-process run's to the last bit, and only the main process writes and prints it.

I3D is test_evaluate's FakeI3D (tests/stub_i3d_eval.py): the sharding, not the network, is
under test; 5 videos in batches of 2 give the processes unequal shares (4 and 1 videos).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import stub_i3d_eval
import torch
from conftest import tiny_base, tiny_residual
from diffusers import DDPMScheduler

from videofusion.cli import main
from videofusion.pipeline import VideoFusionPipeline

TESTS = Path(__file__).parent


def test_two_processes_give_the_report_of_one(tmp_path, capsys, monkeypatch):
    model = tmp_path / "model"
    VideoFusionPipeline(residual=tiny_residual(num_classes=10), base=tiny_base(num_classes=10),
                        scheduler=DDPMScheduler(), sample_size=16).save_pretrained(model)
    flags = ["eval", "--fake", str(model), "--num-videos", "5", "--num-frames", "9",
             "--batch-size", "2", "--steps", "2", "--metrics", "fvd,kvd,is,content,motion",
             "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(TESTS / "stub_i3d_eval.py"), *flags, "--out", str(tmp_path / "two.json")],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote ") == 1  # the main process reports

    from videofusion.metrics import fvd

    monkeypatch.setattr(fvd.I3DFeatureExtractor, "from_cache", classmethod(stub_i3d_eval.stub))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*flags, "--out", str(tmp_path / "one.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    two, one = (json.loads((tmp_path / name).read_text()) for name in ("two.json", "one.json"))
    assert two["protocol"]["num_fake"] == one["protocol"]["num_fake"] == 5
    # the same features; the float64 statistics may sum in another order (measured 3e-10)
    assert two["metrics"] == pytest.approx(one["metrics"], rel=1e-8)
