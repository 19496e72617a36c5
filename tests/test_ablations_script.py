"""scripts/ablations.py end to end at a tiny size: shared stage 1, rows' flags, reports, table;
the tables of ``videofusion.experiments`` from row reports."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ablation_rows_train_from_the_shared_stage_one_and_report(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "ablations.py"),
           "--config", str(ROOT / "configs" / "moving_digits_tiny.yaml"),
           "--rows", "vdm,vf_lambda_0.25", "--jobs", "2", "--steps", "2", "--pretrain-steps", "2",
           "--batch-size", "2", "--checkpoint-every", "1", "--num-videos", "2",
           "--metrics", "motion,fvd_digits", "--sample-steps", "2",
           "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    vdm = json.loads((tmp_path / "results" / "vdm.json").read_text())
    vf = json.loads((tmp_path / "results" / "vf_lambda_0.25.json").read_text())
    assert vdm["pretrain_steps"] == 0 and vf["pretrain_steps"] == 2
    assert vdm["train_flags"][:2] == ["--base-pretrain-steps", "0"]
    assert vf["train_summary"]["joint_steps"] == 2
    assert vf["report"]["protocol"]["sampling"]["scheduler"] == "DDPMScheduler"
    # rows are sampled as spec §4 says (pure noise), although their pipelines hold a data mean
    assert vf["report"]["protocol"]["sampling"]["signal_leak_mean"] is None
    assert "signal_leak=False" in vf["eval_command"]
    assert (tmp_path / "runs" / "stage1" / "checkpoints").is_dir()
    # the pretrained row names the stage 1 it started from by a hash of its base weights
    assert vdm["stage1"] is None and vf["stage1"]["steps"] == 2
    base = tmp_path / "runs" / "stage1" / "pipeline" / "base"
    weights = b"".join(p.read_bytes() for p in sorted(base.glob("*.safetensors")))
    assert vf["stage1"]["base_sha256"] == hashlib.sha256(weights).hexdigest()
    # the row resumed from stage 1's checkpoint rather than pretraining again
    log = (tmp_path / "runs" / "vf_lambda_0.25.log").read_text()
    assert "resumed from" in log and "--lambda 0.25" in log
    assert log.startswith("$ OMP_NUM_THREADS=1 ")  # the caller's setting wins
    table = (tmp_path / "results" / "table.md").read_text()
    assert "| vdm | RQ1 | 2 x 2 | 0 |" in table and "| vf_lambda_0.25 | RQ3 | 2 x 2 | 2 |" in table
    # a second driver finds stage 1 and the row finished: it launches no training at all
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    assert (tmp_path / "runs" / "stage1.log").read_text().count("$ ") == 1
    assert log == (tmp_path / "runs" / "vf_lambda_0.25.log").read_text()
    # a finished row is read back, never measured again: digit metrics from the classifier's
    # old input stay as they are, marked 'old' in the table
    path = tmp_path / "results" / "vf_lambda_0.25.json"
    stale = json.loads(path.read_text())
    stale["report"]["protocol"]["digit_metrics"] = "videofusion.metrics.digits: before"
    path.write_text(json.dumps(stale))
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    assert json.loads(path.read_text()) == stale
    table = (tmp_path / "results" / "table.md").read_text().splitlines()
    assert table[-1].startswith("| vf_lambda_0.25") and " | old | " in table[-1]
    assert table[-2].startswith("| vdm") and table[-2].endswith("| foreground | - |")
    bad = subprocess.run([*cmd[:2], "--rows", "nope", "--results", str(tmp_path / "r2")],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "unknown rows ['nope']" in bad.stderr


def _load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ablations", ROOT / "scripts" / "ablations.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def _row(name, fvd, spread=None, content=0.5, digit_input="... foreground ..."):
    metrics = {"fvd": fvd, "content_consistency": content}
    if spread is not None:
        metrics["fvd_bootstrap_std"] = spread
    return {"name": name, "question": "RQ1", "steps": 10, "batch_size": 2, "pretrain_steps": 0,
            "report": {"protocol": {"digit_metrics": digit_input}, "metrics": metrics}}


def test_table_shows_the_fvd_spread_and_seeds_md_averages_over_seeds(tmp_path):
    from videofusion import experiments

    seed0, seed1 = tmp_path / "seed0", tmp_path / "seed1"
    seed0.mkdir()
    (seed0 / "vdm.json").write_text(json.dumps(_row("vdm", 100.0, spread=12.34)))
    (seed0 / "vf_lambda_0.5.json").write_text(json.dumps(_row("vf_lambda_0.5", 80.0)))
    shared = _row("vf_frozen_base", 90.0) | {"pretrain_steps": 5, "stage1": {
        "steps": 5, "final_loss": 0.1, "base_sha256": "b01d9ae93a4bb6f0"}}
    (seed0 / "vf_frozen_base.json").write_text(json.dumps(shared))
    unhashed = _row("vf_lambda_0.75", 70.0) | {"pretrain_steps": 5}
    (seed0 / "vf_lambda_0.75.json").write_text(json.dumps(unhashed))
    table = experiments.write_table(seed0).read_text()
    # which stage 1 a pretrained row started from; unknown for rows measured before the hash
    lines = table.splitlines()
    assert lines[2].startswith("| vdm |") and lines[2].endswith("| foreground | - |")
    assert lines[4].startswith("| vf_lambda_0.75 |") and lines[4].endswith("| not recorded |")
    assert lines[5].startswith("| vf_frozen_base |") and lines[5].endswith("| b01d9ae9 |")
    assert "| vdm | RQ1 | 10 x 2 | 0 | 100.000 ± 12.3 | n/a |" in table
    assert "| vf_lambda_0.5 | RQ1 | 10 x 2 | 0 | 80.000 | n/a |" in table
    assert experiments.write_seed_summary(seed0) is None  # one seed: nothing to average
    seed1.mkdir()
    (seed1 / "vdm.json").write_text(json.dumps(_row("vdm", 120.0)))
    lines = experiments.write_seed_summary(seed1).read_text().splitlines()
    assert lines[2].startswith("| vdm | 0, 1 | 110.000 (100.000, 120.000) | n/a |")
    assert lines[3].startswith("| vf_lambda_0.5 | 0 | 80.000 | n/a |")
    assert "| 0.500 (0.500, 0.500) |" in lines[2]  # content averaged over both seeds


def test_seeds_md_leaves_out_digit_metrics_from_the_old_classifier_input(tmp_path):
    from videofusion import experiments

    for seed, content, digit_input in ((0, 0.0, "max over channels"), (1, 0.4, "foreground")):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        row = _row("vdm", 100.0 + seed, content=content, digit_input=digit_input)
        (folder / "vdm.json").write_text(json.dumps(row))
    lines = experiments.write_seed_summary(tmp_path / "seed1").read_text().splitlines()
    # FVD averages over both seeds; content only over the seed measured on the foreground
    assert lines[2].startswith("| vdm | 0, 1 | 100.500 (100.000, 101.000) |")
    assert "| 0.400 |" in lines[2] and "0.200" not in lines[2]
    assert lines[-1].endswith("are left out: vdm at seed0.")


def test_seeds_md_compares_each_row_with_its_reference_seed_by_seed(tmp_path):
    from videofusion import experiments


    def pretrained(name, fvd, spread, sha):
        return _row(name, fvd, spread=spread) | {"pretrain_steps": 5, "stage1": {
            "steps": 5, "final_loss": 0.1, "base_sha256": sha}}

    for seed, frozen_sha in ((0, "aaaa0000"), (1, "bbbb1111")):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        rows = [_row("vdm", 100.0, spread=3.0),
                pretrained("vf_lambda_0.5", 80.0 + seed, 4.0, "bbbb1111"),
                pretrained("vf_frozen_base", 90.0, 4.0, frozen_sha)]
        for row in rows:
            (folder / f"{row['name']}.json").write_text(json.dumps(row))
    lines = experiments.write_seed_summary(tmp_path / "seed0").read_text().splitlines()
    # FVD: 80 - 100 = -20, over sqrt(4^2 + 3^2) = 5 spreads; content is equal
    assert "| RQ1 | vf_lambda_0.5 - vdm | 0 | -20.000 (-4.0) | n/a | +0.000 | n/a | - |" in lines
    assert "| RQ1 | vf_lambda_0.5 - vdm | 1 | -19.000 (-3.8) | n/a | +0.000 | n/a | - |" in lines
    frozen = [line for line in lines if line.startswith("| RQ4 | vf_frozen_base")]
    assert frozen[0].startswith("| RQ4 | vf_frozen_base - vf_lambda_0.5 | 0 | +10.000 (+1.8) |")
    assert [line.rsplit("|", 2)[1].strip() for line in frozen] == ["no", "yes"]
    assert not any(line.startswith("| RQ3") for line in lines)  # no lambda-0.25/0.75 rows


def test_coherence_columns_appear_where_rows_measured_them_with_the_real_values(tmp_path):
    from videofusion import experiments

    coherence = {"key_frame_seam": 1.25, "flicker": 0.0044, "foreground_pieces": 1.5,
                 "foreground_area_change": 0.05, "key_frame_seam_real": 1.19,
                 "flicker_real": 0.0033, "foreground_pieces_real": 1.358,
                 "foreground_area_change_real": 0.0315}
    for seed in (0, 1):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        vdm, vf = _row("vdm", 100.0), _row("vf_lambda_0.5", 90.0)
        vdm["report"]["metrics"].update(coherence)
        vf["report"]["metrics"].update(coherence | {"flicker": 0.0040 + seed / 1000})
        for row in (vdm, vf):
            (folder / f"{row['name']}.json").write_text(json.dumps(row))
    table = experiments.write_table(tmp_path / "seed0").read_text().splitlines()
    assert table[0].endswith("| motion error | seam | flicker | pieces | area change | "
                             "digit metrics input | stage-1 weights |")
    assert "| 1.250 | 0.0040 | 1.500 | 0.0500 |" in table[3]
    lines = experiments.write_seed_summary(tmp_path / "seed0").read_text().splitlines()
    assert "| 0.0045 (0.0040, 0.0050) |" in lines[3]
    assert ("Real clips (the held-out set every row is measured against): seam 1.190, flicker "
            "0.0033, pieces 1.358, area change 0.0315.") in lines
    assert "| RQ1 | vf_lambda_0.5 - vdm | 1 | -10.000 | n/a | +0.000 | n/a | +0.000 | +0.0006 | "\
           "+0.000 | +0.0000 | - |" in lines


def test_training_runs_share_the_cores_unless_the_caller_set_the_threads(monkeypatch):
    script = _load_script()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert [script.threads(jobs) for jobs in (1, 3, 8, 16)] == ["8", "2", "1", "1"]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert script.threads(1) == "3"


def test_every_ablation_row_is_a_valid_train_command_and_every_comparison_names_rows():
    from videofusion import experiments
    from videofusion.cli import build_parser
    from videofusion.config import TrainConfig

    for row in experiments.ABLATIONS.values():
        flags = row.train_flags(pretrain_steps=7)
        assert flags[:2] == ["--base-pretrain-steps", "7" if row.pretrained else "0"]
        args = vars(build_parser().parse_args(["train", *flags]))
        TrainConfig().replace({k: v for k, v in args.items()
                               if k not in ("command", "handler")}).validate()
    for _, name, reference in experiments.COMPARISONS:
        assert {name, reference} <= set(experiments.ABLATIONS)


def tiny_physics_recipe(root: Path) -> Path:
    """scripts/train_physics.py's folder layout at a tiny size: two domains of 10-frame 16x16
    clips with caption sidecars for training and as the held-out set, and an untrained
    2-level VAE (16x16 frames -> 4 x 8x8 latents). The latent cache is left to the runs."""
    import numpy as np
    import torch

    from videofusion.vae import build_vae
    from videofusion.video_io import write_mp4

    rng = np.random.default_rng(0)
    for folder, clips in (("train", 3), ("held_out", 2)):
        for domain in ("cartpole", "cheetah"):
            for i in range(clips):
                clip = root / "data" / folder / domain / f"clip_{i:05d}.mp4"
                ramp = np.linspace(0.2, 0.8, 10)[:, None, None, None]
                frames = np.clip(ramp * rng.random((1, 16, 16, 3)), 0, 1)  # a fading pattern
                write_mp4(frames, clip)
                clip.with_suffix(".txt").write_text(f"a {domain} moving, clip {i}")
    torch.manual_seed(0)
    build_vae(3, 4, [8, 16], sample_size=16).save_pretrained(root / "vae" / "vae")
    return root


def test_physics_rows_train_on_the_latent_cache_at_one_budget_and_decode_for_fvd(
        tmp_path, monkeypatch):
    """RQ1 on the physics model's recipe (configs/physics_64.yaml: latents, class + text, the
    key frame seen and corrected) at a tiny size: --recipe-dir fills the data, held-out set,
    VAE and cache; both rows train on the one cache at the same stage-2 budget, the VDM row as
    the plain baseline, and are scored by FVD / KVD on decoded samples (I3D stubbed)."""
    import yaml
    from test_evaluate import fake_extractor

    from videofusion.metrics import fvd

    recipe = tiny_physics_recipe(tmp_path / "physics")
    config = yaml.safe_load((ROOT / "configs" / "physics_64.yaml").read_text())
    assert (config["condition"], config["residual_input"], config["key_frame_correction"]) == (
        "class+text", "with_key_frame", True)
    config.update(base_channels=[8, 16], residual_channels=[8, 16], sample_num=1,
                  sample_steps=2, lr_warmup_steps=1, log_every=1)
    (tmp_path / "physics_tiny.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setattr(fvd.I3DFeatureExtractor, "from_cache",
                        classmethod(lambda cls, directory=None: fake_extractor()))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    argv = ["ablations.py", "--config", str(tmp_path / "physics_tiny.yaml"),
            "--recipe-dir", str(recipe), "--rows", "vdm,vf_lambda_0.5", "--jobs", "2",
            "--frames", "10", "--resolution", "16", "--steps", "2", "--pretrain-steps", "2",
            "--batch-size", "2",
            "--num-videos", "2", "--metrics", "fvd,kvd", "--sample-steps", "2",
            "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]
    monkeypatch.setattr(sys, "argv", argv)
    _load_script().main()
    rows = {name: json.loads((tmp_path / "results" / f"{name}.json").read_text())
            for name in ("vdm", "vf_lambda_0.5")}
    vdm, vf = rows["vdm"], rows["vf_lambda_0.5"]
    for row in rows.values():
        assert {"fvd", "fvd_bootstrap_std", "kvd_x1000"} <= set(row["report"]["metrics"])
        assert row["report"]["metrics"]["fvd"] > 0
        # the held-out renders, prompted with their captions; samples decoded to 16x16 pixels
        assert row["report"]["protocol"]["real"] == str(recipe / "data" / "held_out")
        assert row["report"]["protocol"]["conditioning"] == "text (the real set's captions)"
        assert row["report"]["protocol"]["resolution"] == [16, 16]
        assert row["report"]["protocol"]["sampling"]["channels"] == 3
        assert row["latent_cache"] == str(recipe / "latents")
        assert row["train_summary"]["latent"] is not None
    # one budget: the same stage-2 steps and batch; only VideoFusion pretrains its base
    assert (vdm["steps"], vdm["batch_size"]) == (vf["steps"], vf["batch_size"]) == (2, 2)
    assert vdm["train_summary"]["joint_steps"] == vf["train_summary"]["joint_steps"] == 2
    assert (vdm["pretrain_steps"], vf["pretrain_steps"]) == (0, 2)
    assert (recipe / "latents" / "manifest.json").is_file()  # built once, by stage 1
    assert "encoded 0" in (tmp_path / "runs" / "vdm.log").read_text()
    indexes = {name: json.loads((tmp_path / "runs" / name / "pipeline" / "model_index.json")
                                .read_text()) for name in rows}
    assert (indexes["vdm"]["residual_input"], indexes["vdm"]["key_frame_correction"]) == (
        "paper", False)
    assert (indexes["vf_lambda_0.5"]["residual_input"],
            indexes["vf_lambda_0.5"]["key_frame_correction"]) == ("with_key_frame", True)
    assert all(index["vae"] is not None for index in indexes.values())
    table = (tmp_path / "results" / "table.md").read_text()
    assert "| vdm | RQ1 | 2 x 2 | 0 |" in table and "| - | - |" in table  # no digit metrics
