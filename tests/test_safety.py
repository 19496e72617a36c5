"""Runs that cannot be hijacked, clobbered or poisoned (docs/training.md, "Safety"): no code from
a checkpoint, guarded output folders, the NaN guard, fallback from a corrupt checkpoint."""

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from videofusion.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

FLAGS = ["train", "--frames", "4", "--resolution", "16", "--batch-size", "2",
         "--base-channels", "8,16", "--residual-channels", "8,16", "--base-from-scratch",
         "--max-steps", "2", "--lr-warmup-steps", "1", "--checkpoint-every", "1",
         "--sample-every", "100", "--sample-num", "1", "--sample-steps", "2"]


def run_cli(argv, capsys) -> tuple[int, str]:
    """``videofusion ARGV`` in this process: (exit code, stderr)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("videofusion: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-step run with checkpoints at steps 1 and 2; tests work on copies."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("safety") / "run"
    assert main([*FLAGS, "--output-dir", str(out)]) == 0
    torch.set_num_threads(threads)
    return out


@pytest.fixture
def run(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_the_payload_runs_when_unpickled_without_restriction(tmp_path):
    """The control: the planted files below would run code if anything unpickled them."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def test_checkpoints_hold_no_pickle_but_accelerates_own(finished_run):
    from videofusion.checkpoint import ALLOWED_PICKLES, PICKLE_SUFFIXES

    names = sorted(p.name for p in (finished_run / "checkpoints" / "step-000002").iterdir())
    assert "ema.safetensors" in names and "training_state.json" in names
    assert not any(n.startswith("custom_checkpoint") for n in names)
    assert all(ALLOWED_PICKLES.match(n) for n in names if n.endswith(PICKLE_SUFFIXES))


def pickle_named(run: Path) -> list[str]:
    folder = run / "checkpoints" / "step-000002"
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".pkl", ".bin", ".pt"))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_payload_in_any_pickle_file_of_a_checkpoint_never_runs(run, tmp_path, capsys, how):
    """Every pickle-named file of the newest checkpoint, plus the files accelerate's
    ``register_for_checkpointing`` would unpickle with ``weights_only=False``."""
    marker = tmp_path / "pwned"
    folder = run / "checkpoints" / "step-000002"
    names = [*pickle_named(run), "custom_checkpoint_0.pkl", "extra.pt"]
    assert {"optimizer.bin", "random_states_0.pkl"} <= set(names)
    config_before = (run / "config.yaml").read_text()
    for name in names:
        pristine = folder / name
        backup = pristine.read_bytes() if pristine.exists() else None
        if how == "pickle":
            pristine.write_bytes(pickle.dumps(Payload(marker)))
        else:
            torch.save({"state": Payload(marker)}, pristine)
        code, err = run_cli([*FLAGS, "--output-dir", run, "--resume"], capsys)
        line = one_line_error(err)
        assert code == 2 and not marker.exists(), (name, err)
        assert err.strip().splitlines() == [line]  # nothing else on stderr
        assert str(pristine) in line and "refusing this checkpoint" in line, line
        if backup is None:
            pristine.unlink()
        else:
            pristine.write_bytes(backup)
    assert (run / "config.yaml").read_text() == config_before
    assert not (run / ".videofusion.lock").exists()


def test_no_unrestricted_unpickling_anywhere_in_the_package():
    """No call passes ``weights_only=False``, every ``torch.load`` passes ``weights_only=True``,
    nothing is registered for accelerate's pickled checkpointing, and only the I3D loader's
    restricted unpickler touches ``pickle``."""
    import ast

    src = Path(__file__).parent.parent / "src" / "videofusion"
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            flags = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
            assert flags.get("weights_only", True) is not False, (path, node.lineno)
            assert not name.endswith("register_for_checkpointing"), (path, node.lineno)
            if name in ("torch.load", "load_custom_state"):
                assert flags.get("weights_only") is True, (path, node.lineno)
            if name.startswith("pickle.") and path.name != "i3d.py":
                raise AssertionError(f"{path}:{node.lineno} calls {name}")


# ---- guarded output folders -----------------------------------------------------------------

def test_a_new_run_into_a_run_folder_is_refused_and_overwrite_replaces_it(run, capsys):
    before = {p: p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()}
    code, err = run_cli([*FLAGS, "--output-dir", run, "--max-steps", "1"], capsys)
    line = one_line_error(err)
    assert code == 2 and "--resume" in line and "--overwrite" in line
    assert {p: p.read_bytes() for p in before} == before  # untouched

    code, err = run_cli([*FLAGS, "--output-dir", run, "--resume", "--overwrite"], capsys)
    assert code == 2 and "pass one" in one_line_error(err)

    code, _ = run_cli([*FLAGS, "--output-dir", run, "--overwrite", "--max-steps", "1"], capsys)
    assert code == 0
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000001"]
    assert not list(run.glob(".overwritten-*"))  # deleted after the first new checkpoint


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(run, monkeypatch):
    from videofusion import train as train_module
    from videofusion.config import TrainConfig

    def fail(*args, **kwargs):
        raise ValueError("the new run dies before its first checkpoint")

    monkeypatch.setattr(train_module.Trainer, "_optimizer_step", fail)
    config = TrainConfig.from_yaml(run / "config.yaml").replace(
        {"output_dir": str(run), "overwrite": True})
    with pytest.raises(ValueError, match="dies before"):
        train_module.train(config)
    aside = run / ".overwritten-0"
    assert sorted(p.name for p in (aside / "checkpoints").iterdir()) == [
        "step-000001", "step-000002"]


def test_a_busy_folder_is_refused_at_once_and_a_stale_lock_is_taken_over(run, capsys):
    import socket

    lock = run / ".videofusion.lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        code, err = run_cli([*FLAGS, "--output-dir", run, "--resume"], capsys)
        line = one_line_error(err)
        assert code == 2 and f"pid {sleeper.pid}" in line and "in use" in line
        assert lock.exists()  # still the live owner's
    finally:
        sleeper.kill()
        sleeper.wait()
    # the owner is gone: its lock is stale
    code, err = run_cli([*FLAGS, "--output-dir", run, "--resume"], capsys)
    assert code == 0, err
    assert not lock.exists()


def test_a_changed_config_on_resume_is_refused_before_config_yaml_is_written(run, capsys):
    config_before = (run / "config.yaml").read_text()
    code, err = run_cli([*FLAGS, "--output-dir", run, "--resume", "--resolution", "32",
                         "--lambda", "0.25"], capsys)
    line = one_line_error(err)
    assert code == 2 and "resolution 16 -> 32" in line and "lambda_ 0.5 -> 0.25" in line
    assert "max_steps" in line  # names what may change
    assert (run / "config.yaml").read_text() == config_before
    # what may change on resume does not stop it
    code, err = run_cli([*FLAGS, "--output-dir", run, "--resume", "--max-steps", "3",
                         "--log-every", "5", "--checkpoint-every", "2"], capsys)
    assert code == 0, err


# ---- corrupt checkpoints and logs -------------------------------------------------------------

def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(run, capsys, caplog):
    from safetensors.torch import load_file

    newest = run / "checkpoints" / "step-000002"
    model = newest / "model.safetensors"
    model.write_bytes(model.read_bytes()[:1000])  # truncated
    code, err = run_cli([*FLAGS, "--output-dir", run, "--resume", "--max-steps", "3"], capsys)
    assert code == 0, err
    assert "trying the checkpoint before it" in caplog.text and str(model) in caplog.text
    assert load_file(run / "checkpoints" / "step-000003" / "model.safetensors")


def test_every_checkpoint_corrupt_is_one_line(run, capsys):
    for folder in (run / "checkpoints").iterdir():
        (folder / "trainer_state.json").write_text('{"step": ')
    code, err = run_cli([*FLAGS, "--output-dir", run, "--resume", "--max-steps", "3"], capsys)
    assert code == 2 and "trainer_state.json" in one_line_error(err)


def test_a_partial_last_line_in_metrics_does_not_block_resume(run, capsys):
    log = run / "metrics.jsonl"
    log.write_text(log.read_text() + '{"step": 3, "stage": "jo')  # killed mid-write
    code, err = run_cli([*FLAGS, "--output-dir", run, "--resume", "--max-steps", "3"], capsys)
    assert code == 0, err
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == [1, 2, 3]


# ---- the NaN guard ----------------------------------------------------------------------------

def nan_from(monkeypatch, first_bad_step: int, last_bad_step: int = 10 ** 9):
    """Make the loss NaN for the global steps in [first_bad_step, last_bad_step] (1-based)."""
    import videofusion.train as train_module

    real = train_module.diffusion_loss
    calls = []

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(None)
        if first_bad_step <= len(calls) <= last_bad_step:
            return out._replace(loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(train_module, "diffusion_loss", poisoned)


def test_a_non_finite_step_is_skipped_and_counted(tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file

    nan_from(monkeypatch, 2, 2)
    out = tmp_path / "run"
    code, err = run_cli([*FLAGS, "--output-dir", out, "--max-steps", "3"], capsys)
    assert code == 0, err
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["nonfinite_steps_skipped"] == 1 and summary["skipped_files"] == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-000001", "step-000003"]  # none of the skipped step
    weights = load_file(out / "checkpoints" / "step-000003" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_non_finite_steps_in_a_row_stop_the_run_and_keep_the_good_checkpoints(
        tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file

    nan_from(monkeypatch, 3)
    out = tmp_path / "run"
    code, err = run_cli([*FLAGS, "--output-dir", out, "--max-steps", "8",
                         "--checkpoints-total-limit", "2", "--max-nonfinite-steps", "3"], capsys)
    line = [x for x in err.splitlines() if x.startswith("videofusion: error:")]
    assert code == 1 and len(line) == 1 and "Traceback" not in err, err
    assert line[0] == (
        "videofusion: error: training stopped at step 5: the loss or gradient norm was not "
        "finite for 3 steps in a row (max_nonfinite_steps); nothing was saved, the last good "
        f"checkpoint is {out / 'checkpoints' / 'step-000002'}")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-000001", "step-000002"]
    assert not (out / "pipeline").exists()
    weights = load_file(out / "checkpoints" / "step-000002" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (out / ".videofusion.lock").exists()


def test_a_truncated_video_in_the_training_folder_is_skipped_and_counted(tmp_path, capsys):
    import numpy as np

    from videofusion.video_io import write_mp4

    data = tmp_path / "videos"
    rng = np.random.default_rng(0)
    for i in range(3):
        write_mp4(rng.random((8, 16, 16, 3)), data / f"clip_{i}.mp4")
    broken = data / "clip_1.mp4"
    broken.write_bytes(broken.read_bytes()[:300])  # a download cut short
    out = tmp_path / "run"
    code, err = run_cli([*FLAGS, "--data", data, "--output-dir", out, "--max-steps", "1"],
                        capsys)
    assert code == 0, err
    assert json.loads((out / "train_summary.json").read_text())["skipped_files"] == 1


def test_an_old_pickled_trainer_state_is_refused_then_converted_without_unpickling_code(
        run, tmp_path, capsys):
    """Checkpoints of older versions held the EMA and LR schedule as custom_checkpoint_0.pkl;
    scripts/migrate_checkpoints.py converts them with the weights-only unpickler."""
    import importlib.util

    from safetensors.torch import load_file

    spec = importlib.util.spec_from_file_location(
        "migrate_checkpoints", Path(__file__).parent.parent / "scripts" / "migrate_checkpoints.py")
    migrate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migrate)
    folder = run / "checkpoints" / "step-000002"
    ema = load_file(folder / "ema.safetensors")
    meta = json.loads((folder / "training_state.json").read_text())
    old_state = {"ema": {**meta["ema"], "shadow_params": [ema[str(i)] for i in range(len(ema))]},
                 "lr_scheduler": meta["lr_scheduler"]}
    torch.save(old_state, folder / "custom_checkpoint_0.pkl")  # what accelerate wrote
    (folder / "ema.safetensors").unlink()
    (folder / "training_state.json").unlink()
    code, err = run_cli([*FLAGS, "--output-dir", run, "--resume"], capsys)
    assert code == 2 and "migrate_checkpoints.py" in one_line_error(err)

    assert migrate.main([str(run)]) == 0
    assert not (folder / "custom_checkpoint_0.pkl").exists()
    converted = load_file(folder / "ema.safetensors")
    assert all(torch.equal(ema[k], converted[k]) for k in ema)
    assert json.loads((folder / "training_state.json").read_text()) == {**meta,
                                                                         "nonfinite_steps": 0}
    code, err = run_cli([*FLAGS, "--output-dir", run, "--resume", "--max-steps", "3"], capsys)
    assert code == 0, err

    marker = tmp_path / "pwned"  # a planted payload is refused, not run
    (folder / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(SystemExit):
        migrate.main([str(run)])
    assert not marker.exists()


def test_a_lock_being_written_counts_as_live_and_an_old_empty_one_as_stale(tmp_path):
    from videofusion.safety import RunLock

    lock = tmp_path / ".videofusion.lock"
    lock.write_text("")  # another run between its O_EXCL create and its record
    with pytest.raises(ValueError, match="in use by another run"):
        RunLock(tmp_path).acquire()
    os.utime(lock, (0, 0))  # the writer died long ago
    held = RunLock(tmp_path).acquire()
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    held.release()
    assert not lock.exists()
