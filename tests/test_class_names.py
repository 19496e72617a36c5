"""Class names: a model trained on class folders records their names; the command line, the
studio, ``info`` and the pipeline take a class by name or by index; a folder saved before names
were recorded is named by its indices."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_base, tiny_residual
from diffusers import DDIMScheduler
from test_cli import fails

from videofusion.class_names import class_index, class_indices, describe_classes
from videofusion.cli import main
from videofusion.config import TrainConfig
from videofusion.pipeline import VideoFusionPipeline, load_pipeline
from videofusion.train import train

pytestmark = pytest.mark.usefixtures("one_thread")
SAMPLE = ["--num-videos", "1", "--frames", "4", "--steps", "2", "--seed", "3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A pipeline trained (two steps) on a folder whose classes are "b_walk" and "a_run"."""
    from videofusion.video_io import write_mp4

    root = tmp_path_factory.mktemp("names")
    rng = np.random.default_rng(0)
    for name in ("b_walk", "a_run"):
        for i in range(2):
            write_mp4(rng.random((6, 16, 16, 3)), root / "data" / name / f"clip_{i}.mp4")
    config = TrainConfig(
        data=str(root / "data"), condition="class", frames=4, resolution=16, batch_size=2,
        base_channels=[8, 16], residual_channels=[8, 16], base_pretrain_steps=0,
        base_from_scratch=True, max_steps=2, lr_warmup_steps=1, checkpoint_every=100,
        sample_every=100, sample_num=1, sample_steps=1, log_every=1,
        output_dir=str(root / "run"))
    return train(config)


@pytest.fixture(scope="module")
def unnamed(trained, tmp_path_factory):
    """The trained folder as a version before class names would have saved it."""
    folder = tmp_path_factory.mktemp("old") / "pipeline"
    shutil.copytree(trained, folder)
    index = json.loads((folder / "model_index.json").read_text())
    del index["class_names"]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def sampled(folder, label, out):
    assert main(["sample", "--model-dir", str(folder), "--class-label", label, *SAMPLE,
                 "--out", str(out)]) == 0
    from videofusion.video_io import read_video

    return read_video(out / "video_000.gif")


def test_training_records_the_class_folders_names_in_label_order(trained):
    index = json.loads((trained / "model_index.json").read_text())
    assert index["class_names"] == ["a_run", "b_walk"]
    pipe = VideoFusionPipeline.from_pretrained(trained)
    assert pipe.class_names == ["a_run", "b_walk"] and pipe.num_classes == 2


def test_sampling_by_name_is_sampling_by_its_index(trained, tmp_path):
    by_index = sampled(trained, "1", tmp_path / "index")
    by_name = sampled(trained, "b_walk", tmp_path / "name")
    np.testing.assert_array_equal(by_name, by_index)
    np.testing.assert_array_equal(sampled(trained, "B_Walk", tmp_path / "case"), by_index)
    assert (by_index != sampled(trained, "a_run", tmp_path / "other")).any()


def test_the_pipeline_takes_a_name_wherever_it_takes_a_label(trained):
    pipe = load_pipeline(trained)

    def run(labels):
        return pipe(class_labels=labels, num_frames=4, num_inference_steps=2, progress=False,
                    generator=torch.Generator().manual_seed(0)).frames

    np.testing.assert_array_equal(run(["b_walk", "a_run"]), run([1, 0]))
    np.testing.assert_array_equal(run("a_run"), run(torch.tensor([0])))
    with pytest.raises(ValueError, match="class_labels: 'c_jump' is not a class of this model; "
                                         "choose a name or an index: 0 = a_run, 1 = b_walk"):
        run(["a_run", "c_jump"])


@pytest.mark.parametrize("label", ["c_jump", "2", "-1", "1.0"])
def test_a_bad_class_is_one_line_naming_the_choices(trained, label, capsys, tmp_path):
    fails(capsys, ["sample", "--model-dir", str(trained), "--class-label", "a_run", label,
                   *SAMPLE, "--out", str(tmp_path / "out")],
          f"--class-label: '{label}' is not a class of this model; choose a name or an index: "
          "0 = a_run, 1 = b_walk")
    assert not (tmp_path / "out" / "video_000.mp4").exists()


def test_info_lists_the_class_names(trained, capsys):
    assert main(["info", str(trained), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["class_names"] == ["a_run", "b_walk"]
    assert "class_names" not in info["components"]  # a two-item list, yet a setting
    assert main(["info", str(trained)]) == 0
    assert "classes:        0 = a_run, 1 = b_walk\n" in capsys.readouterr().out


def test_a_folder_saved_without_names_is_named_by_its_indices(trained, unnamed, tmp_path,
                                                              capsys):
    pipe = load_pipeline(unnamed)
    assert pipe.class_names == ["0", "1"] and pipe.config.get("class_names") is None
    np.testing.assert_array_equal(sampled(unnamed, "1", tmp_path / "old"),
                                  sampled(trained, "b_walk", tmp_path / "new"))
    capsys.readouterr()
    assert main(["info", str(unnamed), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["class_names"] == ["0", "1"]
    fails(capsys, ["sample", "--model-dir", str(unnamed), "--class-label", "b_walk", *SAMPLE,
                   "--out", str(tmp_path / "bad")],
          "--class-label: 'b_walk' is not a class of this model; choose a name or an index: "
          "0, 1")


def test_the_studio_offers_and_takes_the_names(trained, unnamed, tmp_path):
    from videofusion.studio import Request, Studio

    page = Studio({"named": trained, "old": unnamed}, tmp_path / "runs")
    assert page.defaults("named")["classes"] == ["none", "a_run", "b_walk"]
    assert page.defaults("named")["class_label"] == "a_run"
    assert page.defaults("old")["classes"] == ["none", "0", "1"]
    by_name, by_index = (page.generate(Request(model, label, frames=4, steps=1))
                         for model, label in (("named", "b_walk"), ("old", "1")))
    assert by_name.video is not None, by_name.message
    from PIL import Image

    np.testing.assert_array_equal(np.array(Image.open(by_name.sheet)),
                                  np.array(Image.open(by_index.sheet)))
    bad = page.generate(Request("named", "c_jump", frames=4, steps=1))
    assert bad.video is None
    assert bad.message == ("Error: class: 'c_jump' is not a class of this model; choose a name "
                           "or an index: 0 = a_run, 1 = b_walk")


def test_eval_takes_class_names_of_a_model_and_indices_of_a_video_folder(trained, tmp_path,
                                                                         capsys):
    from videofusion.cli.eval import class_labels

    assert class_labels(["b_walk", "0", "B_WALK"], str(trained)) == [1, 0, 1]
    assert class_labels(["3", "0"], str(tmp_path)) == [3, 0]
    with pytest.raises(ValueError, match="a folder of videos takes label indices"):
        class_labels(["b_walk"], str(tmp_path))
    fails(capsys, ["eval", "--fake", str(trained), "--class-labels", "a_run,c_jump",
                   "--out", str(tmp_path / "r.json")],
          "--class-labels: 'c_jump' is not a class of this model; choose a name or an index: "
          "0 = a_run, 1 = b_walk")


def test_the_control_grid_takes_a_name(trained, tmp_path):
    from videofusion.control import content_motion_grid

    pipe = load_pipeline(trained)
    grids = [content_motion_grid(pipe, 1, 2, class_labels=label, num_frames=4,
                                 num_inference_steps=1, progress=False).videos
             for label in ("b_walk", 1)]
    np.testing.assert_array_equal(*grids)


def test_names_are_read_first_then_indices():
    names = ["cartpole", "cheetah", "walker"]
    assert class_indices(["walker", 0, "1", " cheetah ", "Cheetah"], names) == [2, 0, 1, 1, 1]
    assert class_indices(torch.tensor([2, 0]), names) == [2, 0]
    # a class named like another's index is that class
    assert class_indices(["1", "0", 2], ["1", "0", "x"]) == [0, 1, 2]
    assert class_index("A", ["a", "A"]) == 1  # exact first
    with pytest.raises(ValueError, match="'b' is not a class"):
        class_index("b", ["a", "A"])  # ignoring case picks none or two: not a guess
    for bad in (True, 3.0, None, 3):
        with pytest.raises(ValueError, match="choose a name or an index: 0 = cartpole, "
                                             "1 = cheetah, 2 = walker"):
            class_index(bad, names)
    with pytest.raises(ValueError, match="Class: this model is not class-conditioned"):
        class_index("cheetah", None, "Class")
    assert describe_classes(["0", "1", "2"]) == "0, 1, 2"
    assert describe_classes(["1", "0"]) == "0 = 1, 1 = 0"


@pytest.mark.parametrize("names, message", [
    (["a"], "1 names for a model of 2 classes"),
    (["a", "a"], "must be distinct, 'a' is repeated"),
    (["a", ""], "non-empty strings, got ''"),
    (["a", 1], "non-empty strings, got 1"),
    ("ab", "must be a list of strings"),
])
def test_names_that_do_not_fit_the_model_are_refused(names, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        VideoFusionPipeline(residual=tiny_residual(num_classes=2), base=tiny_base(num_classes=2),
                            scheduler=DDIMScheduler(), class_names=names)
    with pytest.raises(ValueError, match="not class-conditioned: it has no classes"):
        VideoFusionPipeline(residual=tiny_residual(), base=tiny_base(),
                            scheduler=DDIMScheduler(), class_names=["a"])
