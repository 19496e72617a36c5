"""The ``videofusion`` command: sample and info on a tiny saved model, bad input -> one line, 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_base, tiny_residual
from diffusers import DDIMScheduler

from videofusion.cli import main
from videofusion.pipeline import VideoFusionPipeline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "pipeline"
    VideoFusionPipeline(residual=tiny_residual(num_classes=10), base=tiny_base(num_classes=10),
                        scheduler=DDIMScheduler(), sample_size=8, default_lambda=0.4,
                        ).save_pretrained(folder)
    return folder


def fails(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("videofusion: error: "), err
    assert message in err[0], err[0]


def test_sample_writes_mp4_gif_and_contact_sheet(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sample", "--model-dir", str(model_dir), "--class-label", "1", "2",
                 "--num-videos", "1", "--frames", "4", "--steps", "2", "--scheduler", "dpm",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    names = sorted(p.name for p in out.iterdir())
    assert names == ["contact_sheet.png", "video_000.gif", "video_000.mp4", "video_001.gif",
                     "video_001.mp4"]
    assert sorted(Path(p).name for p in printed) == names


def test_sample_guides_with_the_models_default_unless_told(model_dir, tmp_path, monkeypatch):
    used = []
    call = VideoFusionPipeline.plan  # every sampling path of the CLI plans first
    monkeypatch.setattr(VideoFusionPipeline, "plan", lambda self, *a, **kw: (
        used.append(kw["guidance_scale"]), call(self, *a, **kw))[1])
    recorded = tmp_path / "guided"
    pipe = VideoFusionPipeline.from_pretrained(model_dir)
    pipe.register_to_config(default_guidance_scale=3.0)
    pipe.save_pretrained(recorded)
    common = ["--class-label", "1", "--frames", "4", "--steps", "1", "--out", str(tmp_path / "o")]
    for folder, extra in ((model_dir, []), (recorded, []), (recorded, ["--guidance", "1.5"])):
        assert main(["sample", "--model-dir", str(folder), *common, *extra]) == 0
    assert used == [2.0, 3.0, 1.5]


def test_sample_passes_the_residual_guidance_on(model_dir, tmp_path, monkeypatch):
    used = []
    call = VideoFusionPipeline.plan
    monkeypatch.setattr(VideoFusionPipeline, "plan", lambda self, *a, **kw: (
        used.append((kw["guidance_scale"], kw["residual_guidance_scale"])),
        call(self, *a, **kw))[1])
    common = ["--class-label", "1", "--frames", "4", "--steps", "1", "--out", str(tmp_path / "o")]
    for extra in ([], ["--residual-guidance", "1"],
                  ["--guidance", "3", "--residual-guidance", "2"]):
        assert main(["sample", "--model-dir", str(model_dir), *common, *extra]) == 0
    assert used == [(2.0, None), (2.0, 1.0), (3.0, 2.0)]


@pytest.mark.parametrize("field, option, values, expected", [
    ("colour_anchoring", "--colour-anchoring", ["0.5"], [0.0, 0.5]),
    ("guidance_interval", "--guidance-interval", ["0.3", "5"], [None, (0.3, 5.0)]),
])
def test_sample_passes_the_setting_on(model_dir, tmp_path, monkeypatch, field, option, values,
                                      expected):
    used = []
    call = VideoFusionPipeline.plan
    monkeypatch.setattr(VideoFusionPipeline, "plan", lambda self, *a, **kw: (
        used.append(getattr(call(self, *a, **kw), field)), call(self, *a, **kw))[1])
    common = ["--class-label", "1", "--frames", "4", "--steps", "1", "--out", str(tmp_path / "o")]
    for extra in ([], [option, *values]):
        assert main(["sample", "--model-dir", str(model_dir), *common, *extra]) == 0
    assert used == expected


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm", "euler"])
def test_fixed_base_and_residual_seeds_give_identical_videos(model_dir, tmp_path, scheduler):
    from videofusion.video_io import read_video

    out = tmp_path / scheduler
    main(["sample", "--model-dir", str(model_dir), "--class-label", "3", "--num-videos", "2",
          "--frames", "4", "--steps", "2", "--scheduler", scheduler, "--base-seed", "5",
          "--residual-seed", "6", "--out", str(out)])
    # same initial noise, same video; under DDPM because its fresh noise follows the fixed
    # noise too (FreshNoise)
    first, second = (read_video(out / f"video_00{i}.gif") for i in range(2))
    assert (first == second).all()


def test_sample_keeps_the_model_scheduler_unless_asked(tmp_path, monkeypatch):
    from diffusers import DDPMScheduler

    folder = tmp_path / "ddpm_model"
    VideoFusionPipeline(residual=tiny_residual(num_classes=10), base=tiny_base(num_classes=10),
                        scheduler=DDPMScheduler(), sample_size=8).save_pretrained(folder)
    used = []
    original = VideoFusionPipeline.generate

    def spy(self, *args, **kwargs):
        used.append(type(self.scheduler).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(VideoFusionPipeline, "generate", spy)
    for extra in ([], ["--scheduler", "ddim"]):
        assert main(["sample", "--model-dir", str(folder), "--class-label", "1", "--frames", "4",
                     "--num-videos", "1", "--steps", "2", "--out", str(tmp_path / "out"),
                     *extra]) == 0
    assert used == ["DDPMScheduler", "DDIMScheduler"]


def test_info_lists_components_and_counts(model_dir, tmp_path, capsys):
    assert main(["info", str(model_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["components"] == {"base": "UNet2DModel", "residual": "SpaceTimeUNet",
                                  "scheduler": "DDIMScheduler"}
    assert info["parameters"]["total"] == info["parameters"]["base"] + info["parameters"][
        "residual"] > 0
    assert info["condition"] == "class (10 classes)" and info["default_lambda"] == 0.4
    assert info["default_guidance_scale"] is None
    # A folder's list-valued settings are not components.
    leaky = tmp_path / "leaky"
    pipe = VideoFusionPipeline.from_pretrained(model_dir)
    pipe.register_to_config(signal_leak_mean=[-0.9, -0.9, -0.9], default_guidance_scale=3.0)
    pipe.save_pretrained(leaky)
    assert main(["info", str(leaky), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["components"]) == {"base", "residual", "scheduler"}
    assert info["default_guidance_scale"] == 3.0
    assert main(["info", str(model_dir)]) == 0
    assert "parameters:" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["sample", "--model-dir", "{model}"], "this model is conditioned: pass class_labels"),
    (["sample", "--model-dir", "/no/such/folder"], "model folder not found"),
    (["sample", "--model-dir", "{tmp}"], "not a VideoFusionPipeline folder"),
    (["sample", "--model-dir", "{model}", "--class-label", "1", "--frames", "1"],
     "argument --frames: must be >= 2"),
    (["sample", "--model-dir", "{model}", "--class-label", "1", "--resolution", "9"],
     "not divisible by 2"),
    (["sample", "--model-dir", "{model}", "--class-label", "1", "--lambda", "1.5"],
     "argument --lambda: must lie in [0, 1]"),
    (["sample", "--model-dir", "{model}", "--scheduler", "heun"], "invalid choice: 'heun'"),
    (["sample", "--model-dir", "{model}", "--class-label", "1", "--colour-anchoring", "-1"],
     "argument --colour-anchoring: must be >= 0"),
    (["sample", "--model-dir", "{model}", "--class-label", "1", "--guidance-interval", "5", "1"],
     "guidance_interval must have 0 <= low <= high"),
    (["sample", "--model-dir", "{model}", "--class-label", "1", "--guidance-interval", "-1",
      "1"], "argument --guidance-interval: must be >= 0"),
    (["sample", "--model-dir", "{model}", "--class-label", "10"],
     "--class-label: '10' is not a class of this model; choose a name or an index: 0, 1, 2,"),
    (["sample", "--model-dir", "{model}", "--prompt", "a cat"], "not text-conditioned"),
    (["info", "/no/such/folder"], "model folder not found"),
    (["train", "--frames", "1"], "frames must be >= 2"),
    (["train", "--lambda", "-0.1"], "lambda must lie in [0, 1]"),
    (["train", "--data", "{tmp}", "--output-dir", "{tmp}/run"], "no readable videos"),
    (["train", "--data", "/no/such/data"], "neither a built-in dataset"),
    (["train", "--config", "/no/such.yaml"], "config file not found"),
    (["train", "--base-channels", "8,x"], "expected integers like 16,32,64"),
    (["bogus"], "invalid choice: 'bogus'"),
])
def test_bad_input_is_one_line_and_exit_code_2(argv, message, model_dir, tmp_path, capsys):
    argv = [a.replace("{model}", str(model_dir)).replace("{tmp}", str(tmp_path)) for a in argv]
    fails(capsys, argv, message)


def test_train_with_missing_data_creates_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fails(capsys, ["train", "--data", "no/such/data"], "neither a built-in dataset")
    assert list(tmp_path.iterdir()) == []  # not even the default output folder


def test_train_refuses_a_resolution_the_model_cannot_take(tmp_path, capsys):
    fails(capsys, ["train", "--resolution", "18", "--base-channels", "8,16,32",
                   "--residual-channels", "8,16,32", "--output-dir", str(tmp_path)],
          "not divisible by 4")


def test_the_installed_entry_point_reports_errors_without_traceback(tmp_path):
    script = Path(sys.executable).with_name("videofusion")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "videofusion.cli"]
    result = subprocess.run([*command, "sample", "--model-dir", str(tmp_path / "missing")],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"videofusion: error: model folder not found: {tmp_path / 'missing'}"]
