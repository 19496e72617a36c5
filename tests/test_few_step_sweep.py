"""``scripts/few_step_sweep.py``: when a few-step setting holds the reference's quality, and an
earlier sweep as the reference (a guidance-distilled student against its teacher)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def sweep():
    spec = importlib.util.spec_from_file_location("few_step_sweep",
                                                  ROOT / "scripts" / "few_step_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_setting_holds_within_five_percent_or_the_spread_and_when_better():
    holds = sweep().holds
    # larger is better: 5 % below the reference is the bar
    assert holds("content_consistency", 0.931, 0.98, None, None)
    assert not holds("content_consistency", 0.930, 0.98, None, None)
    assert holds("content_consistency", 0.99, 0.98, None, None)
    # smaller is better: FVD may rise by its bootstrap spread when that exceeds 5 %
    assert holds("fvd", 450.0, 400.0, 50.0, None) and not holds("fvd", 451.0, 400.0, 50.0, None)
    assert holds("fvd", 420.0, 400.0, 5.0, None) and not holds("fvd", 421.0, 400.0, 5.0, None)
    # closer to the real clips is better: the distance may grow by the margin
    assert holds("flicker", 0.0140, 0.0134, None, 0.0134)
    assert holds("key_frame_seam", 0.90, 0.95, None, 0.94)  # 0.04 from real, bar 0.01 + 0.0475
    assert not holds("key_frame_seam", 0.88, 0.95, None, 0.94)  # 0.06: over the bar
    assert not holds("key_frame_seam", 1.10, 0.95, None, 0.94)
    assert not holds("jerk", None, 0.05, None, 0.03)
    # every metric's margin is the larger of 5 % and the reference's sampling spread
    assert holds("jerk", 0.0575, 0.054, 0.004, 0.031)
    assert not holds("jerk", 0.0575, 0.054, None, 0.031)
    assert holds("palette_coverage", 6, 7, 1.0, None)
    assert not holds("palette_coverage", 6, 7, 0.3, None)


def test_an_earlier_sweep_of_another_protocol_is_refused_as_the_reference(tmp_path, capsys):
    earlier = tmp_path / "teacher.json"
    earlier.write_text(json.dumps({"num_videos": 128, "seed": 0, "rows": [
        {"model": "teacher", "scheduler": "ddpm", "steps": 25, "guidance": 4.0,
         "class": {}}]}))
    for argv, message in (
            (["--num-videos", "32"], "num_videos 128, this sweep 32"),
            (["--num-videos", "128", "--seed", "1"], "seed 0, this sweep 1"),
            (["--num-videos", "128"], "has no text rows")):
        with pytest.raises(SystemExit) as exit_info:
            sweep().main([str(tmp_path / "student"), "--reference", str(earlier), *argv])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
