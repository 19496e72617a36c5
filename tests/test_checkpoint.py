"""The checkpoint folder's contract (``videofusion.checkpoint``), tested directly on a tiny model:
a round trip restores weights, optimizer and RNG state exactly; only complete ``step-*`` folders
count; rotation keeps the newest ``keep``; writes are atomic; corrupt, truncated and
pickle-named files are refused with one line that names the file; resume falls back from a
corrupt checkpoint but never from an unsafe one."""

import json
import logging
import os
import pickle
import random

import numpy as np
import pytest
import torch

from videofusion import checkpoint as ckpt
from videofusion.checkpoint import (
    STATE_FILE,
    CorruptCheckpoint,
    UnsafeCheckpoint,
    atomic_directory,
    atomic_write_text,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_state,
    remove_stale,
    resume_checkpoint,
    save_checkpoint,
    step_dir,
    verify_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def trained():
    """An accelerator with a tiny model and an AdamW that has taken two steps."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    for _ in range(2):
        model(torch.randn(4, 3)).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    return accelerator, model, optimizer


def fake_checkpoint(root, step, state=None):
    folder = step_dir(root, step)
    folder.mkdir(parents=True)
    (folder / STATE_FILE).write_text(json.dumps(state or {"step": step}))
    return folder


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


# ---- layout ---------------------------------------------------------------------------------

def test_step_folders_are_zero_padded_to_six_digits(tmp_path):
    assert step_dir(tmp_path, 123) == tmp_path / "step-000123"
    assert step_dir(str(tmp_path), 1234567) == tmp_path / "step-1234567"


def test_only_complete_step_folders_count_oldest_first_by_number(tmp_path):
    assert list_checkpoints(tmp_path / "missing") == []
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    for step in (10, 9, 1000000):
        fake_checkpoint(tmp_path, step)
    (tmp_path / "step-000011").mkdir()  # no trainer_state.json: not complete
    (tmp_path / "step-000012").write_text("a file, not a folder")
    fake_checkpoint(tmp_path / ".tmp-x", 13)
    for name in (".tmp-step-000014", "step-000015x", "xstep-000016", "step-", "step-00a017"):
        (tmp_path / name).mkdir()
        (tmp_path / name / STATE_FILE).write_text('{"step": 1}')
    (tmp_path / "step-000018").mkdir()
    (tmp_path / "step-000018" / STATE_FILE).mkdir()  # not a file
    assert list_checkpoints(str(tmp_path)) == [
        (9, tmp_path / "step-000009"), (10, tmp_path / "step-000010"),
        (1000000, tmp_path / "step-1000000")]
    assert latest_checkpoint(str(tmp_path)) == tmp_path / "step-1000000"


def test_read_state_reads_trainer_state_json(tmp_path):
    folder = fake_checkpoint(tmp_path, 7, {"step": 7, "elapsed_seconds": 1.5})
    assert read_state(str(folder)) == {"step": 7, "elapsed_seconds": 1.5}


def test_remove_stale_deletes_only_temporary_folders_and_files(tmp_path):
    remove_stale(tmp_path / "missing")  # no folder: nothing to do
    (tmp_path / ".tmp-step-000003").mkdir()
    (tmp_path / ".tmp-step-000003" / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".tmp-old-step-000002").mkdir()
    (tmp_path / ".tmp-notes.txt").write_text("half")
    keep = fake_checkpoint(tmp_path, 2)
    (tmp_path / "notes.tmp-").write_text("kept")
    remove_stale(str(tmp_path))
    assert names(tmp_path) == ["notes.tmp-", "step-000002"]
    assert names(keep) == [STATE_FILE]


# ---- atomic writes --------------------------------------------------------------------------

def test_atomic_directory_appears_whole_and_replaces_the_old_one(tmp_path):
    target = tmp_path / "sub" / "step-000004"
    target.parent.mkdir()
    stale = tmp_path / "sub" / ".tmp-step-000004"
    stale.mkdir()
    (stale / "junk").write_text("from a killed run")
    with atomic_directory(str(target)) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".tmp-")
        assert list(tmp.iterdir()) == []  # the killed run's files are gone
        (tmp / "a").write_text("new")
        assert not target.exists()  # not before the block ends
    assert names(target.parent) == ["step-000004"] and names(target) == ["a"]
    with atomic_directory(target) as tmp:
        (tmp / "b").write_text("newer")
        assert (target / "a").read_text() == "new"  # the old one stays until the swap
    assert names(target.parent) == ["step-000004"] and names(target) == ["b"]


def test_atomic_directory_that_fails_leaves_the_old_folder_and_no_temporary_one(tmp_path):
    target = tmp_path / "step-000004"
    target.mkdir()
    (target / "a").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(target) as tmp:
            (tmp / "b").write_text("half")
            raise KeyboardInterrupt
    assert names(tmp_path) == ["step-000004"] and (target / "a").read_text() == "old"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name an fd")
def test_every_file_and_folder_is_on_disk_before_the_new_folder_takes_the_name(
        tmp_path, monkeypatch):
    """fsync of every file, of the finished folder and of its parent: a power cut after the
    rename cannot leave a checkpoint whose files are empty."""
    synced = []
    real = os.fsync

    def record(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(ckpt.os, "fsync", record)
    target = tmp_path / "step-000001"
    with atomic_directory(target) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "a.json").write_text("{}")
        (tmp / "sub" / "b.safetensors").write_bytes(b"0")
        tmp_name = str(tmp)
    assert sorted(synced[:-1]) == sorted([f"{tmp_name}/a.json", f"{tmp_name}/sub/b.safetensors",
                                          tmp_name])
    assert synced[-1] == str(tmp_path)  # the rename itself


def test_atomic_write_text_replaces_the_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "new" / "run" / "log.json"  # folders made as needed
    assert atomic_write_text(path, "one") == path
    assert atomic_write_text(path, "two") == path
    assert path.read_text() == "two" and names(path.parent) == ["log.json"]


def test_a_crash_inside_atomic_write_text_leaves_the_previous_content(tmp_path, monkeypatch):
    path = tmp_path / "log.json"
    atomic_write_text(path, "old")

    def crash(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(ckpt.os, "fsync", crash)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"


# ---- save, load, rotate ---------------------------------------------------------------------

def rng_draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()


def test_a_round_trip_restores_weights_optimizer_rng_and_state_exactly(tmp_path, trained):
    accelerator, model, optimizer = trained
    seen = []

    def write(folder):
        seen.append((folder, sorted(p.name for p in folder.iterdir())))
        (folder / "extra.json").write_text('{"lr": 0.5}')

    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    target = save_checkpoint(accelerator, tmp_path / "checkpoints", 3,
                             {"elapsed_seconds": 2.5, "step": 99}, write=write)
    assert target == tmp_path / "checkpoints" / "step-000003"
    # write() gets the unfinished folder, with accelerate's files already in it
    assert seen[0][0] != target and seen[0][0].parent == target.parent
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl"} <= set(seen[0][1])
    assert STATE_FILE not in seen[0][1]
    assert names(tmp_path / "checkpoints") == ["step-000003"]
    assert {"extra.json", STATE_FILE} <= set(names(target))
    assert json.loads((target / STATE_FILE).read_text()) == {"elapsed_seconds": 2.5, "step": 3}
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {k: v.clone() for k, v in optimizer.state_dict()["state"][0].items()}
    draws = rng_draws()

    model(torch.randn(4, 3)).pow(2).sum().backward()  # move everything on
    optimizer.step()
    assert not torch.equal(model.weight, weights["weight"])
    assert load_checkpoint(accelerator, target) == {"elapsed_seconds": 2.5, "step": 3}
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    for key, value in optimizer.state_dict()["state"][0].items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(moments[key])), key
    assert rng_draws() == draws


def test_saving_a_step_again_replaces_it_and_clears_a_killed_attempt(tmp_path, trained):
    accelerator, _, _ = trained
    root = tmp_path / "new" / "run" / "checkpoints"  # folders made as needed
    save_checkpoint(accelerator, root, 3, {"try": 1})
    (root / ".tmp-step-000003").mkdir()
    (root / ".tmp-step-000003" / "leftover.json").write_text("{}")
    save_checkpoint(accelerator, root, 3, {"try": 2})
    assert names(root) == ["step-000003"]
    assert read_state(root / "step-000003") == {"try": 2, "step": 3}
    assert "leftover.json" not in names(root / "step-000003")


def test_rotation_keeps_exactly_the_newest_checkpoints(tmp_path, trained):
    accelerator, _, _ = trained
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3, 10):
        save_checkpoint(accelerator, root, step, {}, keep=2)
    assert names(root) == ["step-000003", "step-000010"]
    save_checkpoint(accelerator, root, 11, {}, keep=1)
    assert names(root) == ["step-000011"]
    for step in (12, 13):
        save_checkpoint(accelerator, root, step, {})  # no limit
    assert names(root) == ["step-000011", "step-000012", "step-000013"]


# ---- verification ---------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path, trained):
    accelerator, _, _ = trained

    def write(folder):
        from safetensors.torch import save_file

        save_file({"0": torch.ones(2)}, str(folder / "ema.safetensors"))
        (folder / "training_state.json").write_text('{"ema": null}')

    folder = save_checkpoint(accelerator, tmp_path / "checkpoints", 2, {"k": 1}, write=write)
    return accelerator, folder


def test_a_checkpoint_as_saved_verifies(saved):
    _, folder = saved
    (folder / "notes.txt").write_text("not checked")
    assert verify_checkpoint(str(folder)) == {"k": 1, "step": 2}


@pytest.mark.parametrize("text", ['{"step": ', '{"k": 1}', '{"step": "two"}', '{"step": null}',
                                  '[1]'])
def test_an_unreadable_trainer_state_is_corrupt_and_named(saved, text):
    _, folder = saved
    (folder / STATE_FILE).write_text(text)
    with pytest.raises(CorruptCheckpoint) as err:
        verify_checkpoint(folder)
    line = one_line(err)
    kind = {'{"step": ': "JSONDecodeError", '{"k": 1}': "KeyError", '[1]': "TypeError"}.get(
        text, "ValueError" if text == '{"step": "two"}' else "TypeError")
    assert line.startswith(f"checkpoint file {folder / STATE_FILE} is unreadable ({kind}: "), line


def test_a_missing_trainer_state_is_corrupt(saved):
    _, folder = saved
    (folder / STATE_FILE).unlink()
    with pytest.raises(CorruptCheckpoint, match=STATE_FILE):
        verify_checkpoint(folder)


@pytest.mark.parametrize("name", ["model.safetensors", "ema.safetensors", "optimizer.bin",
                                  "random_states_0.pkl", "training_state.json"])
def test_a_truncated_file_is_corrupt_and_named(saved, name):
    _, folder = saved
    path = folder / name
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CorruptCheckpoint) as err:
        verify_checkpoint(folder)
    line = one_line(err)
    cause = err.value.__cause__
    assert line == f"checkpoint file {path} is unreadable ({type(cause).__name__}: {cause})"


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "extra.pt", "model.pth",
                                  "state.ckpt", "data.pickle", "random_states.pkl",
                                  "optimizer_a.bin", "xoptimizer.bin", "scaler.pt.bin",
                                  "sub/optimizer.bin", "pytorch_model.bin",
                                  "sub/pytorch_model_fsdp.bin"])
def test_a_pickle_accelerate_never_writes_is_refused_unread(saved, tmp_path, name):
    accelerator, folder = saved
    marker = tmp_path / "pwned"
    path = folder / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(pickle.dumps(Payload(marker)))
    for check in (lambda: verify_checkpoint(folder), lambda: load_checkpoint(accelerator, folder)):
        with pytest.raises(UnsafeCheckpoint) as err:
            check()
        line = one_line(err)
        assert line.startswith(f"checkpoint file {path} is a pickle that videofusion never "
                               "writes and never loads (it could run code); refusing this "
                               "checkpoint"), line
        hint = (" (older videofusion wrote its trainer state so: convert it with python "
                "scripts/migrate_checkpoints.py RUN_DIR)")
        assert line.endswith("refusing this checkpoint" + (
            hint if name == "custom_checkpoint_0.pkl" else "")), line
        assert ("migrate_checkpoints.py" in line) == (name == "custom_checkpoint_0.pkl")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["optimizer.bin", "optimizer_1.bin", "scheduler.bin",
                                  "scheduler_0.bin", "random_states_12.pkl", "scaler.pt",
                                  "pytorch_model_fsdp.bin", "pytorch_model_fsdp_1.bin"])
def test_accelerates_own_pickle_names_are_read_only_as_tensors(saved, tmp_path, name):
    _, folder = saved
    path = folder / name
    torch.save({"state": torch.ones(2), "step": 3}, path)  # plain tensors: fine
    assert verify_checkpoint(folder)["step"] == 2
    marker = tmp_path / "pwned"
    torch.save({"state": Payload(marker)}, path)
    with pytest.raises(UnsafeCheckpoint) as err:
        verify_checkpoint(folder)
    assert one_line(err) == (f"checkpoint file {path} holds more than tensors and was not loaded "
                             "(Trying to load unsupported GLOBAL posix.system); refusing this "
                             "checkpoint")
    assert not marker.exists()
    path.write_bytes(pickle.dumps(Payload(marker)))  # a raw pickle, no torch zip around it
    with pytest.raises(UnsafeCheckpoint) as err:
        verify_checkpoint(folder)
    line = one_line(err)
    assert "holds more than tensors" in line and "weights_only" not in line
    assert "Weights only load failed" not in line and "WeightsUnpickler" not in line
    assert not marker.exists()


def test_the_cause_of_a_weights_only_refusal_is_one_short_line():
    boilerplate = ("Weights only load failed. Re-running `torch.load` with `weights_only` set "
                   "to `False` will likely succeed.\nPlease file an issue with the following: "
                   "WeightsUnpickler error: \n\n(1) In PyTorch 2.6 ...\n(2) Alternatively ...\n")
    cause = ckpt._cause(Exception(boilerplate + "  Unsupported operand 149\n\nCheck the "
                                  "documentation of torch.load"))
    assert cause == "Unsupported operand 149"
    cause = ckpt._cause(Exception("WeightsUnpickler error: Unsupported global: GLOBAL "
                                  "posix.system was not an allowed global by default."))
    assert cause == "Unsupported global: GLOBAL posix.system"
    assert ckpt._cause(Exception(boilerplate)) == "not plain tensors"
    docs = "\nCheck the documentation of torch.load to learn more.\n"
    assert ckpt._cause(Exception(boilerplate + docs)) == "not plain tensors"
    assert ckpt._cause(Exception(docs + "Unsupported operand 7")) == "Unsupported operand 7"


def test_load_checkpoint_says_which_checkpoint_failed_to_load(saved, tmp_path):
    accelerator, folder = saved
    (folder / "model.safetensors").unlink()
    with pytest.raises(CorruptCheckpoint) as err:
        load_checkpoint(accelerator, folder)
    line = one_line(err)
    assert line.startswith(f"checkpoint {folder} cannot be loaded: "), line
    cause = err.value.__cause__
    assert isinstance(cause, OSError | RuntimeError | KeyError | ValueError)
    assert line == f"checkpoint {folder} cannot be loaded: {type(cause).__name__}: {cause}"


def test_loading_unpickles_no_code_even_after_the_callers_verification(saved, tmp_path):
    accelerator, folder = saved
    marker = tmp_path / "pwned"
    torch.save({"state": Payload(marker)}, folder / "optimizer.bin")
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(accelerator, folder, verified=True)
    assert not marker.exists()


def test_load_checkpoint_trusts_the_callers_verification(saved, monkeypatch):
    accelerator, folder = saved
    calls = []
    monkeypatch.setattr(ckpt, "verify_checkpoint", calls.append)
    assert load_checkpoint(accelerator, folder, verified=True)["step"] == 2
    assert calls == []
    load_checkpoint(accelerator, folder)
    assert calls == [folder]


# ---- resume ---------------------------------------------------------------------------------

def test_resume_loads_the_newest_and_falls_back_from_corrupt_ones(tmp_path, caplog):
    assert resume_checkpoint(tmp_path / "none", lambda folder: {}) is None
    for step in (1, 2, 3):
        fake_checkpoint(tmp_path, step)
    tried = []

    def load(folder):
        tried.append(folder.name)
        if folder.name != "step-000001":
            raise CorruptCheckpoint(f"bad {folder.name}")
        return {"from": folder.name}

    with caplog.at_level(logging.WARNING, logger="videofusion.checkpoint"):
        assert resume_checkpoint(str(tmp_path), load) == (
            tmp_path / "step-000001", {"from": "step-000001"})
    assert tried == ["step-000003", "step-000002", "step-000001"]
    assert [r.getMessage() for r in caplog.records] == [
        "bad step-000003; trying the checkpoint before it",
        "bad step-000002; trying the checkpoint before it"]
    assert resume_checkpoint(tmp_path, lambda folder: {"ok": folder.name}) == (
        tmp_path / "step-000003", {"ok": "step-000003"})


def test_resume_with_every_checkpoint_corrupt_names_the_newest_error(tmp_path):
    for step in (1, 2):
        fake_checkpoint(tmp_path, step)

    def load(folder):
        raise CorruptCheckpoint(f"bad {folder.name}")

    with pytest.raises(CorruptCheckpoint) as err:
        resume_checkpoint(tmp_path, load)
    assert str(err.value) == f"no checkpoint under {tmp_path} can be loaded: bad step-000002"


def test_resume_stops_at_an_unsafe_checkpoint_without_trying_older_ones(tmp_path):
    for step in (1, 2):
        fake_checkpoint(tmp_path, step)
    tried = []

    def load(folder):
        tried.append(folder.name)
        raise UnsafeCheckpoint("planted")

    with pytest.raises(UnsafeCheckpoint, match="planted"):
        resume_checkpoint(tmp_path, load)
    assert tried == ["step-000002"]
