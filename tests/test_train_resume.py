"""The trainer's resume path against docs/training.md: the optimizer, EMA and per-stage LR
schedule it is configured to use, the trainer state a checkpoint carries besides accelerate's
files (EMA weights and counters, LR position, skipped-step count), the messages of a resume, and
the global batch order a resume continues from.

``tests/test_resume_equivalence.py`` compares a stopped-and-resumed run with a straight one;
both runs share any mistake of the set-up, so the set-up itself is pinned here."""

import json
import time

import pytest
import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from videofusion.checkpoint import CorruptCheckpoint
from videofusion.config import TrainConfig
from videofusion.train import (
    EMA_FILE,
    TRAINING_STATE_FILE,
    GlobalBatchSampler,
    Trainer,
    TrainingState,
    train,
)

pytestmark = pytest.mark.usefixtures("one_thread")

BASE_LR = 2e-3  # not AdamW's default


def config(root, name="run", **overrides) -> TrainConfig:
    settings = dict(
        frames=4, resolution=16, batch_size=2, base_channels=[8, 16], residual_channels=[8, 16],
        base_pretrain_steps=3, max_steps=4, lr_scheduler="linear", lr_warmup_steps=2,
        learning_rate=BASE_LR, weight_decay=0.05, adam_beta1=0.8, adam_beta2=0.95,
        adam_epsilon=1e-6, ema_decay=0.9, condition="class", checkpoint_every=100,
        sample_every=100, sample_num=1, sample_steps=1, log_every=1,
        output_dir=str(root / name), data_options={"length": 16},
    )
    settings.update(overrides)
    return TrainConfig(**settings).validate()


def linear_with_warmup(step: int, warmup: int, total: int) -> float:
    """diffusers' ``linear`` schedule written out: the LR factor after ``step`` steps."""
    if step < warmup:
        return step / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("trainer")
    trainer = Trainer(config(root))
    try:
        trainer.run()
    finally:
        trainer.lock.release()
    torch.set_num_threads(threads)
    return root / "run", trainer


def test_the_optimizer_is_adamw_with_the_configured_settings(straight):
    _, trainer = straight
    optimizer = trainer.optimizer.optimizer  # accelerate's wrapper around the torch optimizer
    assert type(optimizer) is torch.optim.AdamW
    group = optimizer.param_groups[0]
    assert (group["weight_decay"], group["betas"], group["eps"]) == (0.05, (0.8, 0.95), 1e-6)
    params = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert params == {id(p) for p in trainer.model.parameters()}


def test_the_ema_has_warm_up_with_power_three_quarters_and_counts_every_step(straight):
    _, trainer = straight
    ema = trainer.ema
    assert (ema.decay, ema.use_ema_warmup, ema.power) == (0.9, True, 0.75)
    assert ema.optimization_step == 3 + 4
    model = list(trainer.model.parameters())
    assert len(ema.shadow_params) == len(model)
    assert all(s.shape == p.shape for s, p in zip(ema.shadow_params, model, strict=True))


def test_no_ema_without_ema_decay(tmp_path):
    trainer = Trainer(config(tmp_path, ema_decay=0.0, base_pretrain_steps=0, max_steps=1))
    try:
        trainer.run()
    finally:
        trainer.lock.release()
    assert trainer.ema is None and trainer.state.ema is None


def test_a_finished_run_writes_its_outputs_once(straight):
    """checkpoint_every and sample_every beyond the run: one checkpoint and one sample folder,
    both of the last step; the loss plot, the TensorBoard log and the config next to them."""
    out, trainer = straight
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000007"]
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-000007"]
    assert (out / "loss_curve.png").is_file() and (out / "pipeline" / "model_index.json").is_file()
    assert list((out / "tensorboard").rglob("events.out.tfevents*"))
    assert TrainConfig.from_yaml(out / "config.yaml").learning_rate == BASE_LR
    summary = json.loads((out / "train_summary.json").read_text())
    assert (summary["steps"], summary["this_run_steps"], summary["nonfinite_steps_skipped"]) == (
        7, 7, 0)
    assert summary["pipeline"] == str(out / "pipeline")
    assert summary["wall_clock_seconds"] == summary["this_run_seconds"] > 0  # a fresh clock


def test_each_stage_has_its_own_warm_up_and_decay(straight):
    out, _ = straight
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # the logged LR is the schedule's after the step: stage 1 (3 steps), then stage 2 (4 steps)
    expected = [BASE_LR * linear_with_warmup(k, 2, 3) for k in (1, 2, 3)] + \
        [BASE_LR * linear_with_warmup(k, 2, 4) for k in (1, 2, 3, 4)]
    assert [r["lr"] for r in records] == pytest.approx(expected, rel=1e-12, abs=0)
    assert [r["stage"] for r in records] == ["image"] * 3 + ["joint"] * 4


def test_a_warm_up_longer_than_a_stage_is_cut_to_the_stage(tmp_path):
    out = tmp_path / "run"
    train(config(tmp_path, base_pretrain_steps=2, max_steps=2, lr_warmup_steps=3))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected = [BASE_LR * linear_with_warmup(k, 2, 2) for k in (1, 2)] * 2
    assert [r["lr"] for r in records] == pytest.approx(expected, rel=1e-12, abs=0)


def test_resume_says_where_it_resumed_and_where_it_stopped(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(config(tmp_path, base_pretrain_steps=1, max_steps=2, stop_at_step=2)) == out
    said = capsys.readouterr().out
    assert f"videofusion: stopped at step 2 of 3 ({out / 'pipeline'} holds this step's weights)" \
        "; continue with --resume" in said
    first = json.loads((out / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
    stale = out / "checkpoints" / ".tmp-step-000003"  # a killed run's unfinished checkpoint
    stale.mkdir()
    assert train(config(tmp_path, base_pretrain_steps=1, max_steps=2, resume=True)) == \
        out / "pipeline"
    said = capsys.readouterr().out
    assert f"videofusion: resumed from {out / 'checkpoints' / 'step-000002'} at step 2" in said
    assert "stopped at step" not in said and "starting fresh" not in said
    summary = json.loads((out / "train_summary.json").read_text())
    assert (summary["steps"], summary["this_run_steps"]) == (3, 1)
    assert not stale.exists()
    # a one-step stage 1 has its own schedule too, and the resumed stage 2 goes on with its own
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records] == pytest.approx(
        [BASE_LR * linear_with_warmup(1, 1, 1)] +
        [BASE_LR * linear_with_warmup(k, 2, 2) for k in (1, 2)], rel=1e-12, abs=0)
    # the clock goes on from the checkpoint's time
    last = json.loads((out / "checkpoints" / "step-000003" / "trainer_state.json").read_text())
    assert last["elapsed_seconds"] > first["elapsed_seconds"] > 0
    assert summary["wall_clock_seconds"] >= round(last["elapsed_seconds"], 2) - 0.01
    assert summary["this_run_seconds"] < summary["wall_clock_seconds"]
    seconds = [json.loads(line)["seconds"] for line in
               (out / "metrics.jsonl").read_text().splitlines()]
    assert len(seconds) == 3 and seconds[2] > first["elapsed_seconds"] >= seconds[1] > seconds[0]


def test_the_messages_of_an_ema_turned_on_an_overwrite_and_a_skipped_step(
        tmp_path, capsys, monkeypatch):
    import videofusion.train as train_module

    out = tmp_path / "run"
    small = dict(base_pretrain_steps=0, max_steps=2, sample_every=100)
    train(config(tmp_path, ema_decay=0.0, stop_at_step=1, **small))
    capsys.readouterr()
    train(config(tmp_path, ema_decay=0.9, stop_at_step=1, resume=True, **small))
    lines = capsys.readouterr().out.splitlines()
    assert "videofusion: the checkpoint holds no EMA: the EMA starts from its weights" in lines

    real = train_module.diffusion_loss
    calls = []

    def nan_at_step_two(*args, **kwargs):
        loss = real(*args, **kwargs)
        calls.append(None)
        return loss._replace(loss=loss.loss * float("nan")) if len(calls) == 2 else loss

    monkeypatch.setattr(train_module, "diffusion_loss", nan_at_step_two)
    train(config(tmp_path, overwrite=True, max_nonfinite_steps=3, **{**small, "max_steps": 3}))
    lines = capsys.readouterr().out.splitlines()
    assert (f"videofusion: --overwrite: the old run waits in {out / '.overwritten-0'} until this "
            "run's first checkpoint, then it is deleted") in lines
    assert ("videofusion: step 2: non-finite loss or gradient norm, update skipped (1 in a row, "
            "at most 3)") in lines
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["nonfinite_steps_skipped"] == 1
    assert not (out / ".overwritten-0").exists()  # gone with the new run's first checkpoint


def test_without_the_nan_guard_the_host_waits_only_to_log_and_a_nan_stops_before_saving(
        tmp_path, monkeypatch):
    from accelerate import Accelerator

    import videofusion.train as train_module
    from videofusion.train import TrainingDiverged

    waits = []
    real_reduce = Accelerator.reduce

    def counted(self, tensor, *args, **kwargs):
        waits.append(tuple(tensor.shape))
        return real_reduce(self, tensor, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "reduce", counted)
    small = dict(base_pretrain_steps=0, max_steps=6, sample_every=100, log_every=3,
                 checkpoint_every=3)
    train(config(tmp_path, max_nonfinite_steps=0, **small))
    assert len(waits) == 2  # the two log flushes, none per step
    waits.clear()
    train(config(tmp_path, overwrite=True, **small))
    assert len(waits) == 6 + 2  # with the guard: one verdict per optimizer step

    real = train_module.diffusion_loss
    calls = []

    def nan_from_step_four(*args, **kwargs):
        loss = real(*args, **kwargs)
        calls.append(None)
        return loss._replace(loss=loss.loss * float("nan")) if len(calls) >= 4 else loss

    monkeypatch.setattr(train_module, "diffusion_loss", nan_from_step_four)
    out = tmp_path / "run"
    message = ("training stopped at step 6: the logged loss is not finite (no NaN guard: "
               "max_nonfinite_steps 0); nothing was saved, the last good checkpoint is "
               f"{out / 'checkpoints' / 'step-000003'}")
    with pytest.raises(TrainingDiverged) as raised:
        train(config(tmp_path, overwrite=True, max_nonfinite_steps=0, **small))
    assert str(raised.value) == message
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert saved == ["step-000003"]  # step 6's weights, trained on a NaN, were never saved



def test_the_log_is_written_before_each_checkpoint_and_preview_and_every_log_every_steps(
        tmp_path, monkeypatch):
    """docs/training.md: metrics.jsonl gets a line per step, written at least every
    ``log_every`` steps and before each checkpoint (a resume drops the lines past its
    checkpoint) and preview; previews only in stage 2, every ``sample_every`` steps and at the
    end; a skipped step is flagged and saves no checkpoint; seconds to the millisecond."""
    import videofusion.train as train_module

    real_step, lines_before = Trainer._optimizer_step, []
    log = tmp_path / "run" / "metrics.jsonl"

    def counted(self, *args, **kwargs):
        lines_before.append(len(log.read_text().splitlines()) if log.is_file() else 0)
        return real_step(self, *args, **kwargs)

    real_loss, calls = train_module.diffusion_loss, []

    def nan_at_step_six(*args, **kwargs):  # stage 2's 4th step: step 2 + 4
        loss = real_loss(*args, **kwargs)
        calls.append(None)
        return loss._replace(loss=loss.loss * float("nan")) if len(calls) == 4 else loss

    monkeypatch.setattr(Trainer, "_optimizer_step", counted)
    monkeypatch.setattr(train_module, "diffusion_loss", nan_at_step_six)
    started = time.perf_counter()
    out = train(config(tmp_path, base_pretrain_steps=2, max_steps=6, log_every=5,
                       checkpoint_every=3, sample_every=2, max_nonfinite_steps=3)).parent
    wall = time.perf_counter() - started
    # written after steps 3 (checkpoint), 4 (preview), 5 (log_every), 6 (preview; its
    # checkpoint skipped) and 8 (the end)
    assert lines_before == [0, 0, 0, 3, 4, 5, 6, 6]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert [r.get("skipped") for r in records] == [None] * 5 + [True, None, None]
    assert all(r["seconds"] == round(r["seconds"], 3) for r in records)
    assert len({r["seconds"] for r in records}) == 8
    # the summary's clock: from the loop's start to its end, within the call's own
    summary = json.loads((out / "train_summary.json").read_text())
    assert records[-1]["seconds"] - 0.005 <= summary["wall_clock_seconds"] <= wall  # 2 decimals
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-000003", "step-000008"]  # step 6 was skipped: no checkpoint of it
    # step 2 ends stage 1 at a multiple of sample_every: no preview of the image model
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "step-000004", "step-000006", "step-000008"]



def test_stage_one_trains_on_the_image_loss_and_a_first_step_skip_is_one_in_a_row(
        tmp_path, monkeypatch, capsys):
    """Stage 1's steps take the image loss, stage 2's the video loss (spec §6); the NaN guard's
    count of skipped steps in a row starts at 0 with every run, resumed or not."""
    import videofusion.train as train_module

    calls = []
    for name in ("image_diffusion_loss", "diffusion_loss"):
        real = getattr(train_module, name)

        def counted(*args, real=real, name=name, **kwargs):
            calls.append(name)
            loss = real(*args, **kwargs)
            if name == "image_diffusion_loss" and len(calls) == 1:
                return loss * float("nan")  # the run's very first step
            return loss

        monkeypatch.setattr(train_module, name, counted)
    train(config(tmp_path, base_pretrain_steps=2, max_steps=1, max_nonfinite_steps=3))
    assert calls == ["image_diffusion_loss"] * 2 + ["diffusion_loss"]
    assert ("videofusion: step 1: non-finite loss or gradient norm, update skipped (1 in a row, "
            "at most 3)") in capsys.readouterr().out.splitlines()


# ---- the trainer's own checkpoint files -------------------------------------------------------

def tiny_state(seed: int, ema: bool = True, steps: int = 3):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=BASE_LR)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=2, num_training_steps=10)
    average = EMAModel(model.parameters(), decay=0.9, use_ema_warmup=True, power=3 / 4) \
        if ema else None
    for _ in range(steps):
        model(torch.randn(4, 3)).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        if average is not None:
            average.step(model.parameters())
    return model, TrainingState(average, scheduler)


def test_training_state_round_trip_restores_ema_lr_position_and_skip_count(tmp_path):
    _, saved = tiny_state(0, steps=3)
    saved.nonfinite_steps = 2
    saved.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [EMA_FILE, TRAINING_STATE_FILE]
    _, loaded = tiny_state(1, steps=0)
    loaded.load(tmp_path)
    assert loaded.ema_missing is False and loaded.nonfinite_steps == 2
    assert loaded.ema.optimization_step == saved.ema.optimization_step == 3
    assert (loaded.ema.decay, loaded.ema.power) == (0.9, 0.75)
    for a, b in zip(saved.ema.shadow_params, loaded.ema.shadow_params, strict=True):
        assert torch.equal(a, b)
    assert loaded.lr_scheduler.last_epoch == 3
    assert loaded.lr_scheduler.get_last_lr() == saved.lr_scheduler.get_last_lr()
    loaded.lr_scheduler.step()  # and it goes on from there
    saved.lr_scheduler.step()
    assert loaded.lr_scheduler.get_last_lr() == saved.lr_scheduler.get_last_lr()


def test_a_state_saved_without_ema_leaves_a_new_ema_alone_and_says_so(tmp_path):
    _, saved = tiny_state(0, ema=False)
    saved.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [TRAINING_STATE_FILE]
    _, loaded = tiny_state(1, steps=0)
    before = [p.clone() for p in loaded.ema.shadow_params]
    loaded.load(tmp_path)
    assert loaded.ema_missing is True and loaded.ema.optimization_step == 0
    assert all(torch.equal(a, b) for a, b in zip(before, loaded.ema.shadow_params, strict=True))
    assert loaded.lr_scheduler.last_epoch == 3
    _, without = tiny_state(1, ema=False, steps=0)
    without.load(tmp_path)
    assert without.ema_missing is False


def test_an_ema_of_another_model_is_refused_naming_the_file(tmp_path):
    _, saved = tiny_state(0)
    saved.save(tmp_path)
    torch.manual_seed(0)
    other = torch.nn.Linear(3, 5)
    scheduler = get_scheduler("linear", torch.optim.AdamW(other.parameters()),
                              num_warmup_steps=2, num_training_steps=10)
    state = TrainingState(EMAModel(other.parameters(), decay=0.9), scheduler)
    with pytest.raises(CorruptCheckpoint) as err:
        state.load(tmp_path)
    assert str(err.value) == (f"checkpoint {tmp_path}: bad trainer state (ValueError: "
                              f"{tmp_path / EMA_FILE} does not match the model)")


@pytest.mark.parametrize("damage", ["missing", "json", "no_count", "count", "no_ema_file"])
def test_a_damaged_training_state_is_corrupt(tmp_path, damage):
    _, saved = tiny_state(0)
    saved.save(tmp_path)
    path = tmp_path / TRAINING_STATE_FILE
    meta = json.loads(path.read_text())
    if damage == "missing":
        path.unlink()
    elif damage == "json":
        path.write_text('{"lr_scheduler": ')
    elif damage == "no_count":
        path.write_text(json.dumps({k: v for k, v in meta.items() if k != "nonfinite_steps"}))
    elif damage == "count":
        path.write_text(json.dumps({**meta, "nonfinite_steps": "many"}))
    else:
        (tmp_path / EMA_FILE).unlink()
    _, loaded = tiny_state(1, steps=0)
    with pytest.raises(CorruptCheckpoint, match=f"checkpoint {tmp_path}: bad trainer state"):
        loaded.load(tmp_path)


# ---- the data order a resume continues ------------------------------------------------------

def test_the_global_batch_order_is_one_seeded_permutation_per_epoch():
    def positions(seed, start=0, end=7, accumulation=1):
        sampler = GlobalBatchSampler(10, 3, 1, 0, accumulation, seed=seed,
                                     start_step=start, end_step=end)
        return sampler, [item for batch in sampler for item in batch]

    sampler, items = positions(0)
    assert len(sampler) == 7 and len(list(sampler)) == 7
    assert len(positions(0, 2, 7, accumulation=2)[0]) == 10
    assert [e for e, _ in items] == [p // 10 for p in range(21)]
    epochs = [[i for e, i in items if e == epoch] for epoch in (0, 1)]
    assert all(sorted(indices) == list(range(10)) for indices in epochs)
    assert epochs[0] != epochs[1]  # each epoch its own permutation
    assert items == positions(0)[1]  # a pure function of the seed ...
    assert items != positions(1)[1]  # ... and of nothing else
    # a sampler that resumes mid-epoch, or that went back to an earlier epoch, agrees
    assert positions(0, 5, 7)[1] == items[15:]
    again = GlobalBatchSampler(10, 3, 1, 0, 1, seed=0, start_step=0, end_step=7)
    assert [again._item(p) for p in (25, 3, 14, 3)] == [
        (2, again._item(25)[1]), items[3], items[14], items[3]]
