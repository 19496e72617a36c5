"""FSDP full shard (``configs/accelerate/fsdp_full_shard.yaml``, FSDP2).

What runs where, measured with torch 2.13 and accelerate 1.16 (docs/training.md, "Launch
configs"): torch's FSDP2 shards CPU processes over gloo, but accelerate never does: it enables
FSDP only for GPU processes, and runs CPU processes as DDP (``DistributedType.MULTI_CPU``)
whatever the config asks. So:

- on CPU, ``test_sharded_parameters_...`` shards the trainer's model with torch's
  ``fully_shard`` itself over 2 processes (``tests/fsdp_sharded_run.py``) and checks the
  trainer's handling of sharded parameters against an unsharded run of the same global batch;
- the whole trainer under ``accelerate launch`` with the FSDP config (the ``gpu`` tests: the
  run matches a run without FSDP, stop-and-resume is bitwise, the pipeline samples) needs CUDA
  GPUs, 2 or else 1; they have not run yet (``scripts/device_check.sh`` runs them).

The comparisons with an unsharded run train AdamW as plain SGD, as ``tests/test_distributed.py``
explains, so that a wrongly scaled gradient shows, within that test's tolerance (atol 1e-6,
rtol 1e-5; on CPU the weights are below 1, and the check is max |difference| <= 1e-6): the
processes' gradients are averaged by a collective where the unsharded run averages them in its
backward pass, so they may round differently. On CPU with 2 processes the difference measured
0: halving a sum of two is exact in either order.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import accelerate
import pytest
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file
from torch.distributed.fsdp import StateDictType

from videofusion.config import TrainConfig
from videofusion.train import train
from videofusion.training_setup import check_fsdp, make_accelerator

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
TOLERANCE = dict(rtol=1e-5, atol=1e-6)  # see the module docstring


# ---- torch's FSDP2 on 2 CPU processes, under the trainer's handling of sharded parameters ----

@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp_cpu")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "tests" / "fsdp_sharded_run.py"), str(out)],
        env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((out / f"rank-{rank}.json").read_text()) for rank in (0, 1)]


def test_sharded_parameters_train_like_the_unsharded_model_on_the_same_global_batch(sharded):
    for found in sharded:
        assert found["parameter_type"] == "DTensor"
        assert 0 < found["held"] < found["total"]  # each process holds a part
        assert found["weights_moved"] > 1e-4  # the comparison below is not of untrained weights
        assert found["weights_vs_reference"] <= TOLERANCE["atol"]
        assert found["ema_vs_reference"] <= TOLERANCE["atol"]
    assert sharded[0]["held"] + sharded[1]["held"] == sharded[0]["total"]


def test_the_exported_model_is_the_gathered_ema_on_the_main_process_only_and_samples(sharded):
    main, other = sharded
    assert main["exported_is_none"] is False and other["exported_is_none"] is True
    assert main["exported_equals_gathered_ema"] is True
    assert main["sample_shape"] == [1, 4, 16, 16, 3] and main["sample_finite"] is True


def test_the_checkpoints_ema_is_written_whole_and_read_back_into_the_same_shards(sharded):
    main, other = sharded
    assert main["ema_weights_kept"] > 0 and other["ema_weights_kept"] == 0
    for found in sharded:
        assert found["ema_restored_bitwise"] is True
        assert found["ema_steps"] == [3, 3]


def test_per_process_checksums_are_of_the_slices_and_add_up_to_the_whole_model(sharded):
    checksums = sharded[0]["checksums"]
    assert checksums == sharded[1]["checksums"] and checksums[0] != checksums[1]
    for part in (0, 1):
        assert checksums[0][part] + checksums[1][part] == pytest.approx(
            sharded[0]["whole_checksum"][part], rel=1e-12)


# ---- which FSDP the trainer takes --------------------------------------------------------

def fsdp(version: int, state_dict_type: str) -> SimpleNamespace:
    """An accelerator as accelerate builds it for an FSDP config (only the fields read)."""
    plugin = SimpleNamespace(fsdp_version=version,
                             state_dict_type=StateDictType[state_dict_type])
    return SimpleNamespace(distributed_type=DistributedType.FSDP,
                           state=SimpleNamespace(fsdp_plugin=plugin))


def test_fsdp2_with_whole_state_dicts_is_taken():
    check_fsdp(fsdp(2, "FULL_STATE_DICT"), asked=True)


@pytest.mark.parametrize(("version", "kind", "message"), [
    (1, "FULL_STATE_DICT", "FSDP: fsdp_version 1 is not supported, the trainer needs "
                           "fsdp_version: 2 (configs/accelerate/fsdp_full_shard.yaml)"),
    (2, "SHARDED_STATE_DICT", "FSDP: fsdp_state_dict_type SHARDED_STATE_DICT is not "
                              "supported, checkpoints need FULL_STATE_DICT"),
])
def test_other_fsdp_settings_are_refused_in_one_line(version, kind, message):
    with pytest.raises(ValueError) as err:
        check_fsdp(fsdp(version, kind), asked=True)
    assert str(err.value) == message


def test_fsdp_asked_for_on_the_cpu_is_said_to_run_unsharded(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    accelerator = make_accelerator(TrainConfig(output_dir=str(tmp_path)), tmp_path)
    assert accelerator.distributed_type == DistributedType.NO
    assert (f"FSDP was asked for, but accelerate {accelerate.__version__} runs this as NO: the "
            "parameters are not sharded") in caplog.text


# ---- the trainer under accelerate launch with the FSDP config: CUDA GPUs only ---------------
# Unrun so far. If the bitwise resume fails, check a run without FSDP first: cuDNN may pick
# backward algorithms that are not deterministic, which no CPU test would see.

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason=f"needs a CUDA GPU: accelerate {accelerate.__version__} shards only GPU processes "
           "(CPU processes run DDP, DistributedType.MULTI_CPU, whatever the FSDP config says)")
FLAGS = ["--frames", "4", "--resolution", "16", "--batch-size", "2",
         "--base-channels", "8,16", "--residual-channels", "8,16",
         "--base-pretrain-steps", "1", "--max-steps", "2", "--lr-warmup-steps", "0",
         "--lr-scheduler", "constant", "--max-grad-norm", "1e9", "--weight-decay", "0",
         "--learning-rate", "1e4", "--condition", "class", "--ema-decay", "0.9",
         "--checkpoint-every", "1", "--checkpoints-total-limit", "3", "--sample-every", "100",
         "--sample-num", "1", "--sample-steps", "2", "--log-every", "1"]
SGD = "adam_beta1: 0.0\nadam_beta2: 0.0\nadam_epsilon: 1.0e+6\n"  # tests/test_distributed.py
LAST = "step-000003"


def fsdp_train(root: Path, name: str, processes: int, *extra: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch",
         "--config_file", str(ROOT / "configs" / "accelerate" / "fsdp_full_shard.yaml"),
         "--num_processes", str(processes), "--mixed_precision", "no",
         "-m", "videofusion.cli", "train", *FLAGS, "--config", str(root / "sgd.yaml"),
         "--output-dir", str(root / name), *extra],
        env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "weights differ" not in result.stderr and "FSDP was asked" not in result.stderr


def model_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's raw weights: ``pytorch_model_fsdp.bin`` (FSDP), else the safetensors."""
    fsdp_file = checkpoint / "pytorch_model_fsdp.bin"
    if fsdp_file.is_file():
        return {k: v.cpu() for k, v in torch.load(fsdp_file, weights_only=True).items()}
    return load_file(checkpoint / "model.safetensors")


def pipeline_weights(run: Path) -> dict[str, torch.Tensor]:
    return {f"{part}.{k}": v for part in ("base", "residual") for k, v in
            load_file(run / "pipeline" / part / "diffusion_pytorch_model.safetensors").items()}


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    """FSDP over 2 GPUs (1 where there is one): straight, and stopped at step 2 then resumed;
    and one process without FSDP, accumulating the same global batch."""
    root = tmp_path_factory.mktemp("fsdp_gpu")
    (root / "sgd.yaml").write_text(SGD)
    processes = min(2, torch.cuda.device_count())
    fsdp_train(root, "straight", processes)
    fsdp_train(root, "split", processes, "--stop-at-step", "2")
    fsdp_train(root, "split", processes, "--resume")
    from videofusion.cli import build_parser

    args = vars(build_parser().parse_args(
        ["train", *FLAGS, "--gradient-accumulation-steps", str(processes),
         "--output-dir", str(root / "single")]))
    train(TrainConfig.resolve(root / "sgd.yaml", {
        k: v for k, v in args.items() if k not in ("command", "handler", "config")}))
    return root, processes


@pytest.mark.gpu
@needs_cuda
def test_an_fsdp_run_matches_one_process_without_fsdp_on_the_same_global_batch(fsdp_runs):
    root, processes = fsdp_runs
    fsdp_run, single = (root / name / "checkpoints" / LAST for name in ("straight", "single"))
    left, right = model_weights(fsdp_run), model_weights(single)
    assert left.keys() == right.keys()
    for key in left:
        torch.testing.assert_close(left[key], right[key], **TOLERANCE)
    checksums = json.loads((fsdp_run / "trainer_state.json").read_text())["parameter_checksums"]
    whole = json.loads((single / "trainer_state.json").read_text())["parameter_checksums"][0]
    assert len(checksums) == processes
    for part in (0, 1):  # the processes' slices add up to the whole model
        assert sum(c[part] for c in checksums) == pytest.approx(whole[part], rel=1e-5)


@pytest.mark.gpu
@needs_cuda
def test_fsdp_stop_and_resume_equals_the_straight_fsdp_run_bitwise(fsdp_runs):
    root, _ = fsdp_runs
    straight, split = (root / name / "checkpoints" / LAST for name in ("straight", "split"))
    assert_same_tensors(model_weights(straight), model_weights(split))
    assert_same_tensors(load_file(straight / "ema.safetensors"),
                        load_file(split / "ema.safetensors"))
    assert_same_tensors(pipeline_weights(root / "straight"), pipeline_weights(root / "split"))


@pytest.mark.gpu
@needs_cuda
def test_the_fsdp_runs_pipeline_holds_the_ema_loads_and_samples(fsdp_runs):
    from videofusion.pipeline import load_pipeline

    root, _ = fsdp_runs
    checkpoint = root / "straight" / "checkpoints" / LAST
    raw = model_weights(checkpoint)  # in parameter order, as the EMA file numbers them
    ema = load_file(checkpoint / "ema.safetensors")
    exported = pipeline_weights(root / "straight")
    names = [key.removeprefix("model.").replace("base.unet.", "base.", 1) for key in raw]
    assert sorted(names) == sorted(exported) and len(ema) == len(names)
    assert all(torch.equal(exported[name], ema[str(i)]) for i, name in enumerate(names))
    assert any(not torch.equal(exported[name], value)  # the EMA, not the raw weights
               for name, value in zip(names, raw.values(), strict=True))
    frames = load_pipeline(root / "straight" / "pipeline")(
        class_labels=[1], num_frames=4, num_inference_steps=2,
        generator=torch.Generator().manual_seed(0), progress=False).frames
    assert frames.shape == (1, 4, 16, 16, 3) and bool(torch.isfinite(torch.as_tensor(frames)).all())
