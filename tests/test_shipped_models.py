"""Shipped models by name: ``--model NAME`` in sample, info and eval, the studio's list and
``make demo``, against a registry pointed at tiny folders (the package's own are not used)."""

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import tiny_base, tiny_residual
from diffusers import DDIMScheduler
from test_cli import fails

from videofusion import assets, studio
from videofusion.assets import ShippedModel, installed_models, shipped_model
from videofusion.cli import main
from videofusion.pipeline import VideoFusionPipeline

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("physics") / "physics_model"
    VideoFusionPipeline(residual=tiny_residual(num_classes=4), base=tiny_base(num_classes=4),
                        scheduler=DDIMScheduler(), sample_size=8).save_pretrained(folder)
    return folder


@pytest.fixture
def physics(tiny_folder, monkeypatch):
    """The registry's physics model, installed: the tiny folder."""
    model = replace(assets.SHIPPED_MODELS["physics"], folder=tiny_folder, example_caption=None)
    monkeypatch.setitem(assets.SHIPPED_MODELS, "physics", model)
    return model


@pytest.fixture
def no_physics(tmp_path, monkeypatch):
    """The registry's physics model, not installed."""
    model = replace(assets.SHIPPED_MODELS["physics"], folder=tmp_path / "absent")
    monkeypatch.setitem(assets.SHIPPED_MODELS, "physics", model)
    return model


def test_the_registry_names_the_digits_model_as_the_default():
    assert assets.DEFAULT_MODEL_DIR == assets.SHIPPED_MODELS[assets.DEFAULT_MODEL].folder
    assert {"digits", "physics"} <= set(assets.SHIPPED_MODELS)
    assert all(m.folder.parent == assets.ASSETS_DIR for m in assets.SHIPPED_MODELS.values())


def test_installed_models_and_shipped_model(physics, tmp_path):
    models = {"a": ShippedModel("a", physics.folder, "tiny"),
              "b": ShippedModel("b", tmp_path / "absent", "absent", recipe="its recipe")}
    assert list(installed_models(models)) == ["a"]
    assert shipped_model("a", models).folder == physics.folder
    with pytest.raises(ValueError, match="'b' .* not installed .* built by its recipe"):
        shipped_model("b", models)
    with pytest.raises(ValueError, match="unknown shipped model 'c'; choose from a, b"):
        shipped_model("c", models)


def test_sample_by_shipped_name(physics, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sample", "--model", "physics", "--class-label", "3", "--num-videos", "1",
                 "--frames", "4", "--steps", "1", "--out", str(out)]) == 0
    assert (out / "video_000.mp4").is_file() and (out / "contact_sheet.png").is_file()


@pytest.mark.parametrize("argv, message", [
    (["sample", "--model", "physics", "--class-label", "1", "--out", "{tmp}"],
     "the shipped model 'physics' (rendered physics) is not installed"),
    (["info", "--model", "physics"], "is not installed"),
    (["eval", "--model", "physics", "--out", "{tmp}/r.json"], "is not installed"),
    (["sample", "--model", "cats"], "argument --model: invalid choice: 'cats'"),
    (["sample", "--model", "digits", "--model-dir", "{tmp}"],
     "argument --model-dir: not allowed with argument --model"),
    (["info", "{tmp}", "--model", "digits"], "not both"),
    (["eval", "--model", "digits", "--fake", "{tmp}"], "not allowed with argument"),
    (["eval"], "one of the arguments --fake --model is required"),
])
def test_a_shipped_name_not_installed_or_misused_is_one_line(argv, message, no_physics,
                                                              tmp_path, capsys):
    fails(capsys, [a.replace("{tmp}", str(tmp_path)) for a in argv], message)


def test_info_by_shipped_name(physics, capsys):
    assert main(["info", "--model", "physics", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model_dir"] == str(physics.folder)
    assert info["condition"] == "class (4 classes)"


def test_eval_samples_a_shipped_model_by_name(physics, tmp_path):
    out = tmp_path / "report.json"
    assert main(["eval", "--model", "physics", "--metrics", "coherence", "--num-videos", "2",
                 "--frames", "4", "--resolution", "16", "--steps", "1", "--device", "cpu",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["protocol"]["fake"].endswith("physics_model")
    assert report["protocol"]["num_fake"] == 2


def test_the_studio_offers_every_installed_shipped_model(physics, tmp_path):
    models = {"physics": physics, "other": ShippedModel("other", tmp_path / "absent", "other")}
    assert studio.shipped_models(models) == {"rendered physics (shipped)": physics.folder}
    page = studio.Studio(studio.shipped_models(models), tmp_path)
    assert page.defaults("rendered physics (shipped)")["classes"] == ["none", "0", "1", "2",
                                                                       "3"]


def test_the_studio_refuses_to_start_with_no_model(tmp_path, monkeypatch, capsys):
    for name, model in list(assets.SHIPPED_MODELS.items()):
        monkeypatch.setitem(assets.SHIPPED_MODELS, name, replace(model, folder=tmp_path / name))
    with pytest.raises(SystemExit) as exit_info:
        studio.main(["--port", "0"])
    assert exit_info.value.code == 2
    assert "no shipped model is installed" in capsys.readouterr().err


def test_demo_samples_every_installed_model_and_names_the_missing(physics, tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    import demo

    models = {"physics": physics,
              "cats": ShippedModel("cats", tmp_path / "absent", "cats", recipe="a recipe")}
    demo.main(models, tmp_path / "demo")
    printed = capsys.readouterr().out.splitlines()
    assert [line for line in printed if "not installed" in line] == [
        "demo: not installed, left out: cats (built by a recipe)"]
    sheets = sorted(p.relative_to(tmp_path) for p in (tmp_path / "demo").rglob("*.png"))
    assert sheets == [Path("demo/physics/by_class/contact_sheet.png")]
