"""Resume equals an uninterrupted run: weights, EMA weights, EMA step, optimizer state and the
learning rate of every step, for stops inside stage 1, exactly at the stage boundary and inside
stage 2, with a learning rate that is non-zero on every step (no warm-up, a linear decay).

Compared through the public training API only: ``Trainer(config).run()``, the trainer's ``ema``
and ``optimizer``, ``metrics.jsonl`` (loss and learning rate per step) and the exported
pipeline, never the checkpoint's file format.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from videofusion.config import TrainConfig
from videofusion.train import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

STAGE_1, STAGE_2 = 2, 3
TOTAL = STAGE_1 + STAGE_2
STOPS = [1, STAGE_1, 4]  # inside stage 1, exactly at the boundary, inside stage 2


def config(root, name, **overrides) -> TrainConfig:
    settings = dict(
        frames=4, resolution=16, batch_size=2, base_channels=[8, 16], residual_channels=[8, 16],
        base_pretrain_steps=STAGE_1, max_steps=STAGE_2, lr_scheduler="linear",
        lr_warmup_steps=0, learning_rate=1e-3, ema_decay=0.9, condition="class",
        checkpoint_every=100, sample_every=100, sample_num=1, sample_steps=1, log_every=1,
        output_dir=str(root / name), data_options={"length": 16},
    )
    settings.update(overrides)
    return TrainConfig(**settings).validate()


def run(cfg) -> Trainer:
    trainer = Trainer(cfg)
    try:
        trainer.run()
    finally:
        trainer.lock.release()
    return trainer


def log(root, name):
    lines = (root / name / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def folder_weights(folder):
    return {f"{part}.{k}": v for part in ("base", "residual")
            for k, v in load_file(folder / part / "diffusion_pytorch_model.safetensors").items()}


def pipeline_weights(root, name):
    return folder_weights(root / name / "pipeline")


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def optimizer_state(trainer):
    state = trainer.optimizer.state_dict()
    return {f"{index}.{name}": torch.as_tensor(value)
            for index, values in state["state"].items() for name, value in values.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("resume")
    straight = run(config(root, "straight"))
    resumed = None
    for stop in STOPS:
        resumed = run(config(root, "split", stop_at_step=stop, resume=resumed is not None))
        assert json.loads((root / "split" / "train_summary.json").read_text())["steps"] == stop
    resumed = run(config(root, "split", resume=True))
    torch.set_num_threads(threads)
    return root, straight, resumed


def test_every_step_has_a_non_zero_learning_rate_and_the_same_loss(runs):
    root, _, _ = runs
    straight, split = log(root, "straight"), log(root, "split")
    assert [r["step"] for r in split] == list(range(1, TOTAL + 1))
    assert [r["stage"] for r in straight] == ["image"] * STAGE_1 + ["joint"] * STAGE_2
    # the logged lr is the one the next step uses: all but the last step of each stage
    used = [r["lr"] for r in straight if r["step"] not in (STAGE_1, TOTAL)]
    assert min(used) > 0 and len(set(used)) == len(used)
    for a, b in zip(straight, split, strict=True):
        assert (a["step"], a["stage"], a["lr"], a["loss"]) == \
            (b["step"], b["stage"], b["lr"], b["loss"])


def test_weights_ema_and_optimizer_state_equal_the_uninterrupted_run(runs):
    _, straight, resumed = runs
    assert_same_tensors(dict(straight.model.state_dict()), dict(resumed.model.state_dict()))
    assert straight.ema.optimization_step == resumed.ema.optimization_step == TOTAL
    assert_same_tensors({str(i): p for i, p in enumerate(straight.ema.shadow_params)},
                        {str(i): p for i, p in enumerate(resumed.ema.shadow_params)})
    assert_same_tensors(optimizer_state(straight), optimizer_state(resumed))
    assert straight.optimizer.param_groups[0]["lr"] == resumed.optimizer.param_groups[0]["lr"]


def test_the_exported_ema_pipeline_equals_the_uninterrupted_one(runs):
    root, straight, _ = runs
    ema = pipeline_weights(root, "straight")
    assert_same_tensors(ema, pipeline_weights(root, "split"))
    # and it is the EMA, not the raw weights, that both exported
    raw = {f"base.{k}": v for k, v in straight.model.base.unet.state_dict().items()}
    assert any(not torch.equal(ema[k], raw[k]) for k in raw)
