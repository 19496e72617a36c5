"""Content / motion control (spec §5): the R x C grid, its CLI and scripts/control_metrics.py."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_base, tiny_residual
from diffusers import DDIMScheduler
from PIL import Image

from videofusion.cli import main
from videofusion.control import content_motion_grid
from videofusion.noise import key_frame_index
from videofusion.pipeline import VideoFusionPipeline

ROOT = Path(__file__).resolve().parents[1]


def class_pipeline():
    return VideoFusionPipeline(residual=tiny_residual(num_classes=10),
                               base=tiny_base(num_classes=10), scheduler=DDIMScheduler(),
                               sample_size=8)


def test_grid_rows_share_the_base_noise_and_columns_the_residual_noise(tmp_path):
    pipe = class_pipeline()
    grid = content_motion_grid(pipe, 2, 3, class_labels=4, num_frames=4,
                               num_inference_steps=3, progress=False)
    assert grid.videos.shape == (2, 3, 4, 8, 8, 3)
    for r, c in [(0, 0), (1, 2), (0, 1)]:
        alone = pipe(class_labels=[4], num_frames=4, num_inference_steps=3, progress=False,
                     base_noise=grid.base_noise[r:r + 1],
                     residual_noise=grid.residual_noise[c:c + 1]).frames[0]
        np.testing.assert_allclose(grid.videos[r, c], alone, atol=1e-5)
    # deterministic DDIM: the key frame (all base, lambda^k = 1) depends on the base noise only
    k = key_frame_index(4)
    keys = grid.videos[:, :, k]
    np.testing.assert_allclose(keys[:, 1:], keys[:, :1].repeat(2, axis=1), atol=1e-5)
    assert np.abs(keys[0] - keys[1]).max() > 0.05
    others = grid.videos[0, :, k + 1]
    assert np.abs(others[0] - others[1]).max() > 0.01  # different residual, different frames

    gif, sheet = grid.save(tmp_path, fps=4, scale=2)
    assert Image.open(gif).size == (2 * (3 * 8 + 2), 2 * (2 * 8 + 1))
    assert Image.open(gif).n_frames == 4
    assert Image.open(sheet).size == (2 * 8 * 4 + 3, 2 * 8 * 6 + 5)


def test_grid_bad_arguments():
    pipe = class_pipeline()
    with pytest.raises(ValueError, match="one prompt and/or one class label"):
        content_motion_grid(pipe, 2, 2, class_labels=[1, 2])
    with pytest.raises(ValueError, match=">= 1"):
        content_motion_grid(pipe, 0, 2, class_labels=1)
    with pytest.raises(ValueError, match="sets base_noise itself"):
        content_motion_grid(pipe, 2, 2, class_labels=1, base_noise=torch.zeros(1))
    baseline = VideoFusionPipeline(residual=tiny_residual(), scheduler=DDIMScheduler(),
                                   sample_size=8)
    with pytest.raises(ValueError, match="VDM baseline"):
        content_motion_grid(baseline, 2, 2)


def test_cli_control_grid(tmp_path, capsys):
    class_pipeline().save_pretrained(tmp_path / "model")
    code = main(["sample", "--model-dir", str(tmp_path / "model"), "--class-label", "3",
                 "--control-grid", "2,2", "--frames", "4", "--steps", "2",
                 "--out", str(tmp_path / "out")])
    assert code == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "out" / "control_grid.gif"),
                       str(tmp_path / "out" / "control_grid.png")]
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--model-dir", str(tmp_path / "model"), "--class-label", "3",
              "--control-grid", "2,2", "--base-seed", "1"])
    assert exit_info.value.code == 2
    assert "takes no --image, --base-seed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--control-grid", "2x2"])
    assert exit_info.value.code == 2
    assert "ROWS,COLS" in capsys.readouterr().err


def test_control_metrics_script_end_to_end(tmp_path, capsys):
    class_pipeline().save_pretrained(tmp_path / "model")
    spec = importlib.util.spec_from_file_location("control_metrics",
                                                  ROOT / "scripts" / "control_metrics.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "report.json"
    assert script.main([str(tmp_path / "model"), "--class-label", "2", "--groups", "2",
                        "--per-group", "2", "--frames", "4", "--steps", "2",
                        "--scheduler", "ddpm", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["sets"]) == {"shared_base", "shared_residual", "independent"}
    assert report["scheduler"] == "DDPMScheduler"
    for row in report["sets"].values():
        assert set(row) == {"digit_agreement", "color_agreement", "motion_agreement",
                            "pairs", "no_digit", "num_videos", "key_frame_distance",
                            "other_frames_distance"}
        assert row["num_videos"] == 4 and 0 <= row["pairs"] <= 2
        assert 0.0 <= row["no_digit"] <= 1.0
        for key in ("digit_agreement", "color_agreement", "motion_agreement"):
            assert (row[key] is None) == (row["pairs"] == 0)
            assert row[key] is None or 0.0 <= row[key] <= 1.0
    assert "shared_base" in capsys.readouterr().out
    # the key frame is all base noise: with the base shared by every DDPM step too (FreshNoise),
    # the videos of a shared-base group share their key frame exactly
    sets = report["sets"]
    assert sets["shared_base"]["key_frame_distance"] < 1e-3
    assert sets["independent"]["key_frame_distance"] > 10 * sets["shared_base"][
        "key_frame_distance"] + 1e-3
    videos = np.zeros((4, 3, 2, 2, 1))
    videos[1] = 0.5  # group 0: key frames differ by 0.5; group 1: identical
    assert script.pair_distances(videos, 2) == {"key_frame_distance": 0.25,
                                                "other_frames_distance": 0.25}
    every = np.ones(4, dtype=bool)
    assert script.agreement(np.array([1, 1, 2, 3]), every, 2) == (0.5, 2)
    assert script.agreement(np.array([1, 1, 2, 2]), np.array([1, 1, 1, 0], bool), 2) == (1.0, 1)
    assert script.agreement(np.array([1, 1]), np.array([1, 0], bool), 2) == (None, 0)


def test_sampling_sweep_script_samples_every_setting_with_the_same_seed(tmp_path, monkeypatch):
    import videofusion.evaluation

    pipe = class_pipeline()
    pipe.register_to_config(sample_size=16)  # the digit metrics take clips of 16 px or more
    pipe.save_pretrained(tmp_path / "model")
    spec = importlib.util.spec_from_file_location("sampling_sweep",
                                                  ROOT / "scripts" / "sampling_sweep.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    calls, evaluate = [], videofusion.evaluation.evaluate

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(videofusion.evaluation, "evaluate", spy)
    out = tmp_path / "sweep.json"
    assert script.main([str(tmp_path / "model"), "--guidance", "1,3", "--steps", "2",
                        "--scheduler", "ddim,ddpm", "--num-videos", "2", "--seed", "4",
                        "--out", str(out)]) == 0
    settings = [(c["scheduler"], c["num_inference_steps"], c["guidance_scale"]) for c in calls]
    assert settings == [("ddim", 2, 1.0), ("ddim", 2, 3.0), ("ddpm", 2, 1.0), ("ddpm", 2, 3.0)]
    assert {c["seed"] for c in calls} == {4} and {c["num_videos"] for c in calls} == {2}
    rows = json.loads(out.read_text())["rows"]
    assert [(r["scheduler"], r["guidance"]) for r in rows] == [s[::2] for s in settings]
    assert all(0.0 <= r["content_consistency"] <= 1.0 for r in rows)

    def stopped(*args, **kwargs):  # Ctrl-C during the third setting
        if len(calls) == 2:
            raise KeyboardInterrupt
        return spy(*args, **kwargs)

    calls.clear()
    monkeypatch.setattr(videofusion.evaluation, "evaluate", stopped)
    with pytest.raises(KeyboardInterrupt):
        script.main([str(tmp_path / "model"), "--guidance", "1,3", "--steps", "2",
                     "--scheduler", "ddim,ddpm", "--num-videos", "2", "--out", str(out)])
    assert [(r["scheduler"], r["guidance"]) for r in json.loads(out.read_text())["rows"]] == [
        ("ddim", 1.0), ("ddim", 3.0)]
    with pytest.raises(SystemExit) as exit_info:
        script.main([str(tmp_path / "model"), "--guidance", "two"])
    assert exit_info.value.code == 2
