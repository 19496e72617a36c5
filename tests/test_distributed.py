"""Data-parallel training: 2 CPU processes (DDP over gloo, launched by torchrun) take the same
steps as 1 process with the same global batch.

The trainer numbers the shards of a global batch ``micro_step * processes + rank`` and draws each
shard's clips and noise from ``(seed, step, shard)`` (see ``videofusion.train``), so 2 processes
x batch 2 and 1 process x batch 2 x 2 accumulation steps see identical data and noise; DDP's
gradient mean equals accumulation's mean, up to float rounding.

The comparison is made where a wrongly scaled gradient shows: the learning rate is non-zero on
every step (constant, no warm-up) and the update is plain SGD without clipping. The trainer's
optimizer is AdamW; with beta1 = beta2 = 0, no weight decay and epsilon = 1e6, far above any
gradient, its update lr * g / (|g| + eps) is SGD with learning rate lr / eps to a relative 1e-6
(float32 drops |g| < 0.03 from |g| + 1e6 entirely). Adam's normalisation, which hides a factor
on the gradient, is gone, and max_grad_norm = 1e9 never clips.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from videofusion.config import TrainConfig
from videofusion.train import train

FLAGS = ["--frames", "4", "--resolution", "16", "--batch-size", "2",
         "--base-channels", "8,16", "--residual-channels", "8,16",
         "--base-pretrain-steps", "1", "--max-steps", "2", "--lr-warmup-steps", "0",
         "--lr-scheduler", "constant", "--max-grad-norm", "1e9", "--weight-decay", "0",
         "--learning-rate", "1e4", "--condition", "class", "--sample-every", "100",
         "--sample-num", "1", "--sample-steps", "2", "--log-every", "1"]
SGD = "adam_beta1: 0.0\nadam_beta2: 0.0\nadam_epsilon: 1.0e+6\n"  # see the module docstring


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    sgd = tmp_path / "sgd.yaml"
    sgd.write_text(SGD)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "videofusion.cli", "train", *FLAGS, "--config", str(sgd),
         "--output-dir", str(tmp_path / "ddp")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("videofusion: wrote") == 1  # the main process reports

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from videofusion.cli import build_parser

        args = vars(build_parser().parse_args(
            ["train", *FLAGS, "--gradient-accumulation-steps", "2",
             "--output-dir", str(tmp_path / "single")]))
        train(TrainConfig.resolve(sgd, {k: v for k, v in args.items()
                                        if k not in ("command", "handler", "config")}))
    finally:
        torch.set_num_threads(threads)

    ddp, single = (tmp_path / name / "checkpoints" / "step-000003" for name in ("ddp", "single"))
    state = json.loads((ddp / "trainer_state.json").read_text())
    assert state["samples_seen"] == 12
    checksums = state["parameter_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]  # both ranks hold one model
    left, right = load_file(ddp / "model.safetensors"), load_file(single / "model.safetensors")
    assert left.keys() == right.keys()
    for key in left:
        torch.testing.assert_close(left[key], right[key], rtol=1e-5, atol=1e-6)
    # every compared step: the same non-zero learning rate and the same loss
    logs = [[json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text()
             .splitlines()] for name in ("ddp", "single")]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [1, 2, 3]
    for a, b in zip(*logs, strict=True):
        assert a["lr"] == b["lr"] == 1e4
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)

