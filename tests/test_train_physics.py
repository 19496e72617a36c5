"""scripts/train_physics.py (the physics model's recipe) and scripts/bundle_model.py on a latent
model: the commands, what makes a stage complete, continuing after a failure, the bundle's VAE
and its size limit. The whole chain runs in `python scripts/train_physics.py --smoke` (60-90
s), not here."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_base, tiny_residual
from diffusers import DDIMScheduler
from safetensors import safe_open

from videofusion.assets import SHIPPED_MODELS
from videofusion.config import TrainConfig
from videofusion.pipeline import VideoFusionPipeline

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import bundle_model  # noqa: E402
import train_physics  # noqa: E402
from train_physics import Recipe, Stage, parse_args, stages  # noqa: E402


def by_name(recipe: Recipe) -> dict[str, Stage]:
    return {stage.name: stage for stage in stages(recipe)}


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_the_default_recipe_renders_two_disjoint_real_sets_for_256_video_fvd():
    plan = by_name(Recipe())
    assert list(plan) == ["render", "held-out", "floor", "vae", "cache", "train", "bundle",
                          "samples"]
    train, held, floor = (plan[name].command for name in ("render", "held-out", "floor"))
    for real in (held, floor):  # every domain in each set, 256 clips or more
        assert option(real, "--domains") == option(train, "--domains")
        assert int(option(real, "--clips")) * len(option(real, "--domains").split(",")) >= 256
    assert len({option(c, "--seed") for c in (train, held, floor)}) == 3
    assert len({option(c, "--out") for c in (train, held, floor)}) == 3
    config = TrainConfig.from_yaml(ROOT / "configs" / train_physics.CONFIG)
    assert (option(held, "--frames"), option(held, "--size")) == (str(config.frames),
                                                                  str(config.resolution))
    assert "--resume" in plan["vae"].command and "--resume" in plan["train"].command
    assert option(plan["train"].command, "--latent-cache") == option(plan["cache"].command,
                                                                      "--out")
    # repository-relative paths, into the package's folder of the physics model
    assert option(train, "--out") == "runs/physics/data/train"
    assert "--target" not in plan["bundle"].command
    assert Recipe().bundle == SHIPPED_MODELS["physics"].folder


def test_flags_set_the_recipe_and_the_config_and_win_over_smoke():
    recipe, smoke = parse_args(["--train-clips", "7", "--steps", "9", "--seed", "3",
                                "--domains", "walker,hopper"])
    assert not smoke and recipe.train_clips == 7 and recipe.domains == ("walker", "hopper")
    assert recipe.train == ("--max-steps", "9", "--seed", "3")
    assert recipe.held_out_clips == 128
    recipe, smoke = parse_args(["--smoke", "--out", "runs/smoke", "--steps", "5"])
    assert smoke and recipe.train_clips == 2 and recipe.target == Path("runs/smoke/bundle")
    config = TrainConfig.resolve(ROOT / "configs" / train_physics.CONFIG,
                                 train_physics.flags(recipe.train))
    assert (config.max_steps, config.base_pretrain_steps) == (5, 2)  # the flag, then smoke's


def test_rendered_needs_every_clip_and_caption(tmp_path):
    for domain in ("cheetah", "walker-run"):
        for i in range(2):
            for ext in (".mp4", ".txt"):
                (tmp_path / domain / f"clip_{i:05d}{ext}").parent.mkdir(exist_ok=True)
                (tmp_path / domain / f"clip_{i:05d}{ext}").write_text("x")
    assert train_physics.rendered(tmp_path, ("cheetah", "walker-run"), 2)
    assert not train_physics.rendered(tmp_path, ("cheetah", "walker-run"), 3)
    (tmp_path / "cheetah" / "clip_00001.txt").unlink()
    assert not train_physics.rendered(tmp_path, ("cheetah",), 2)


def test_a_failed_stage_stops_the_recipe_and_the_same_command_continues(tmp_path, monkeypatch,
                                                                       capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    calls = tmp_path / "calls"

    def touch(path):  # a stage whose output is a file; each run is counted
        return ["python", "-c", f"import pathlib; pathlib.Path({str(calls)!r}).open('a')"
                f".write('{path.name} '); pathlib.Path({str(path)!r}).touch()"]

    broken = ["python", "-c", "raise SystemExit(3)"]
    plan = [Stage("first", touch(first), first.is_file),
            Stage("second", broken, second.is_file)]
    monkeypatch.setattr(train_physics, "stages", lambda recipe: plan)
    recipe = Recipe(out=tmp_path / "out")
    with pytest.raises(SystemExit, match="stage second failed \\(exit code 3\\)"):
        train_physics.run(recipe, "python scripts/train_physics.py")
    plan[1] = Stage("second", touch(second), second.is_file)
    train_physics.run(recipe, "python scripts/train_physics.py")
    assert calls.read_text().split() == ["first", "second"]  # first ran once
    assert "[1/2] first: complete, skipped" in capsys.readouterr().out
    assert (tmp_path / "out" / "commands.txt").read_text().splitlines()[0] == \
        "# python scripts/train_physics.py"


@pytest.fixture
def latent_run(tmp_path):
    """A run folder as `videofusion train --config configs/physics_64.yaml` leaves it, with a
    tiny latent pipeline (VAE included) and two domains of data."""
    from videofusion.vae import build_vae

    run = tmp_path / "run"
    VideoFusionPipeline(residual=tiny_residual(channels=4, num_classes=2),
                        base=tiny_base(channels=4, num_classes=2),
                        vae=build_vae(3, 4, (8, 16), sample_size=16),
                        scheduler=DDIMScheduler(), sample_size=16,
                        ).save_pretrained(run / "pipeline")
    data = tmp_path / "data"
    for domain in ("walker", "cheetah"):
        (data / domain).mkdir(parents=True)
        (data / domain / "clip_00000.mp4").write_bytes(b"")
    config = TrainConfig.from_yaml(ROOT / "configs" / "physics_64.yaml").replace(
        {"data": str(data), "output_dir": str(run), "max_steps": 3}).to_dict()
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 2003, "seconds": 7.0}) + "\n")
    recipe = tmp_path / "commands.txt"
    recipe.write_text("# python scripts/train_physics.py\nvideofusion data render-dmc ...\n")
    return run


def bundle(monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", ["bundle_model.py", *map(str, argv)])
    bundle_model.main()


def test_bundle_keeps_the_vae_in_fp16_and_quotes_the_recipe(latent_run, tmp_path, monkeypatch,
                                                            capsys):
    target = tmp_path / "physics_model"
    bundle(monkeypatch, latent_run, "--model", "physics", "--config-name", "physics_64.yaml",
           "--recipe", tmp_path / "commands.txt", "--target", target)
    assert "MB of at most 50 MB" in capsys.readouterr().out
    for part in ("base", "residual", "vae"):
        weights = target / part / "diffusion_pytorch_model.safetensors"
        with safe_open(str(weights), framework="pt") as handle:
            assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.float16}
    pipe = VideoFusionPipeline.from_pretrained(target)
    assert pipe.vae is not None and pipe.vae.dtype == torch.float32
    # a run saved before names were recorded: the bundle takes its data's class folders
    assert pipe.class_names == ["cheetah", "walker"]
    card = (target / "README.md").read_text()
    assert "physics model" in card and "0 = cheetah, 1 = walker" in card
    assert "    videofusion data render-dmc ..." in card and "+ VAE" in card
    record = json.loads((target / "training_record.json").read_text())
    assert record["classes"] == ["cheetah", "walker"]
    assert record["commands"][1].startswith(f"python scripts/bundle_model.py {latent_run} "
                                            "--model physics --config-name physics_64.yaml")
    assert train_physics.bundled(latent_run, target) is False  # no train_summary.json yet
    (latent_run / "train_summary.json").write_text(json.dumps({"steps": 2003}))
    assert train_physics.bundled(latent_run, target)


def test_the_bundle_carries_the_class_names_the_run_recorded(latent_run, tmp_path,
                                                             monkeypatch):
    pipe = VideoFusionPipeline.from_pretrained(latent_run / "pipeline")
    pipe.register_to_config(class_names=["hopper", "reacher"])
    pipe.save_pretrained(latent_run / "pipeline")
    shutil.rmtree(tmp_path / "data")  # recorded names need no data folder
    target = tmp_path / "physics_model"
    bundle(monkeypatch, latent_run, "--model", "physics", "--config-name", "physics_64.yaml",
           "--target", target)
    assert VideoFusionPipeline.from_pretrained(target).class_names == ["hopper", "reacher"]
    assert "(class label: 0 = hopper, 1 = reacher;" in (target / "README.md").read_text()
    record = json.loads((target / "training_record.json").read_text())
    assert record["classes"] == ["hopper", "reacher"]


def test_a_latent_bundle_refuses_colour_anchoring(latent_run, tmp_path, monkeypatch):
    target = tmp_path / "physics_model"
    with pytest.raises(SystemExit, match="--colour-anchoring: .* VAE latents"):
        bundle(monkeypatch, latent_run, "--model", "physics", "--config-name",
               "physics_64.yaml", "--colour-anchoring", "1", "--target", target)
    assert not target.exists()


def test_a_bundle_over_the_size_limit_is_refused_and_changes_nothing(latent_run, tmp_path,
                                                                     monkeypatch):
    target = tmp_path / "physics_model"
    target.mkdir()
    (target / "README.md").write_text("the model before")
    monkeypatch.setattr(bundle_model, "MAX_BYTES", 1000)
    with pytest.raises(SystemExit, match="over the 0 MB a shipped model may take"):
        bundle(monkeypatch, latent_run, "--model", "physics", "--config-name",
               "physics_64.yaml", "--target", target)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert [p.name for p in target.iterdir()] == ["README.md"]
    assert (target / "README.md").read_text() == "the model before"


def test_a_guidance_student_takes_a_sampler_and_steps_but_no_guidance(latent_run, tmp_path,
                                                                      monkeypatch):
    """A guidance student runs any sampler at any step count, as its teacher did, but only at
    guidance 1; a progressive student is tied to the DDIM and step count it was distilled for."""
    pipe = VideoFusionPipeline.from_pretrained(latent_run / "pipeline")
    pipe.register_to_config(distilled_guidance_scale=4.0, distilled_steps=None,
                            default_guidance_scale=1.0)
    pipe.save_pretrained(latent_run / "pipeline")
    target = tmp_path / "student"
    args = (latent_run, "--model", "physics", "--config-name", "physics_64.yaml", "--target",
            target)
    with pytest.raises(SystemExit, match="drop --guidance"):
        bundle(monkeypatch, *args, "--guidance", "4")
    assert not target.exists()
    bundle(monkeypatch, *args, "--scheduler", "ddim", "--steps", "12")
    shipped = VideoFusionPipeline.from_pretrained(target)
    assert type(shipped.scheduler).__name__ == "DDIMScheduler"
    assert shipped.config.default_inference_steps == 12
    assert (shipped.default_guidance, shipped.config.distilled_guidance_scale) == (1.0, 4.0)
    card = (target / "README.md").read_text()
    assert "DDIMScheduler, 12 steps" in card
    assert "| guidance | 1, the only value it takes (its guidance is folded in) |" in card
    pipe.register_to_config(distilled_steps=4)  # a progressive student
    pipe.save_pretrained(latent_run / "pipeline")
    for flags in (("--steps", "12"), ("--scheduler", "ddpm")):
        with pytest.raises(SystemExit, match="progressive student ships as it was distilled"):
            bundle(monkeypatch, *args, *flags)
