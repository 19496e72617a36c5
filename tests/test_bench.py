"""The benchmark runs end to end at a tiny size and reports what it promises (no timing checks)."""

import json
import math
import statistics
import sys

import pytest
import torch

from videofusion import bench
from videofusion.bench import (
    KINDS,
    BenchConfig,
    Worker,
    check_config,
    flop_counter,
    markdown_report,
    run_benchmark,
    tensor_allocation_peak_mb,
)
from videofusion.cli import main


def tiny_config(**overrides):
    config = BenchConfig(frames=4, resolutions=(8,), steps=2, base_channels=(16, 32),
                         residual_channels=(8, 16), repeats=2, memory_steps=1,
                         train_resolution=8, train_batch=1, train_repeats=2, long_frames=(),
                         long_resolution=8, long_steps=1, clip_frames=4, overlap=1, threads=1,
                         rss_memory=False, matmul_size=128, peer_levels=2, peer_text_dim=64,
                         peer_tokens=2)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


@pytest.fixture
def in_process_worker():
    threads = torch.get_num_threads()
    yield Worker(tiny_config())
    torch.set_num_threads(threads)


def test_tiny_run_writes_the_headline_keys_and_tables(tmp_path, monkeypatch):
    config = tiny_config(long_frames=(4, 7), long_repeats=2, long_memory_steps=2)
    threads, real_worker = torch.get_num_threads(), bench.run_worker
    in_process = Worker(config)
    torch.set_num_threads(threads)

    def run_worker(config, jobs):  # long videos in this process: the rows, not the isolation
        if jobs[0]["task"] == "long_video":
            return [in_process.long_video(jobs[0]["frames"])]
        return real_worker(config, jobs)

    monkeypatch.setattr(bench, "run_worker", run_worker)
    monkeypatch.setattr(sys, "argv", ["/somewhere/videofusion/cli/__main__.py", "bench",
                                      "--long-frames", ""])
    report = run_benchmark(config, tmp_path / "bench.json", tmp_path / "bench.md",
                           log=lambda message: None)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["command"] == "videofusion bench --long-frames ''"  # no machine path
    # each headline number is what its definition makes of the rows it reports (worst case
    # over the sampling configurations), and "met" compares it with its target
    rows, training = saved["sampling"], saved["training"]
    median = statistics.median
    expected = {
        "sampling_latency_ratio": max(median(r["videofusion"]["seconds"])
                                      / median(r["vdm"]["seconds"]) for r in rows),
        "sampling_memory_ratio": max(r["videofusion"]["peak_memory_mb"]
                                     / r["vdm"]["peak_memory_mb"] for r in rows),
        "training_step_ratio": median(training["videofusion"]["seconds"])
        / median(training["vdm"]["seconds"]),
        "utilization": min(r["videofusion"]["gflop_per_step"] * 2
                           / median(r["videofusion"]["seconds"]) / r["matmul_peak_gflops"]
                           for r in rows),
        "sampling_peer_latency_ratio": max(median(r["videofusion"]["seconds"])
                                           / median(r["peer"]["seconds"]) for r in rows),
    }
    for key, value in expected.items():
        assert math.isfinite(saved[key]) and saved[key] == pytest.approx(value, rel=1e-9), key
        bound = float(saved["targets"][key]["target"].split()[1])
        met = value <= bound if key != "utilization" else value >= bound
        assert saved["targets"][key]["met"] == met and saved["targets"][key]["value"] == \
            saved[key]
    assert saved["memory_method"] == "tensor"
    assert [(row["resolution"], row["guided"]) for row in saved["sampling"]] == [
        (8, False), (8, True)]
    for row in saved["sampling"]:
        vf, vdm, peer = row["videofusion"], row["vdm"], row["peer"]
        assert len(vf["seconds"]) == len(vdm["seconds"]) == len(peer["seconds"]) == 2
        # like for like: parameter-matched baseline, and the base runs on one frame only
        assert abs(vf["parameters"]["total"] / vdm["parameters"]["total"] - 1) < 0.15
        assert vf["gflop_per_step"] < vdm["gflop_per_step"]
        assert vf["peak_memory_mb"] > 0 and vf["rss_peak_mb"] is None
        assert row["matmul_peak_gflops"] > 0
        # the peer: diffusers' UNet3DConditionModel, matched to VideoFusion's parameter count
        # (nearer than the VDM baseline here), timed in the same worker, no base generator
        assert abs(peer["parameters"]["total"] / vf["parameters"]["total"] - 1) < 0.05
        assert peer["parameters"]["base"] == 0 and peer["widths"] == [8, 24]
        assert peer["gflop_per_step"] > 0 and peer["peak_memory_mb"] > 0
        # its ratio columns are the measured medians' ratios
        for key, num, den in [("peer_latency_ratio", vf, peer),
                              ("vdm_peer_latency_ratio", vdm, peer)]:
            assert row[key] == pytest.approx(median(num["seconds"]) / median(den["seconds"]),
                                             rel=1e-9), key
        assert row["peer_cpu_time_ratio"] == pytest.approx(
            vf["cpu_seconds_per_video"] / peer["cpu_seconds_per_video"], rel=1e-9)
        assert row["peer_memory_ratio"] == pytest.approx(
            vf["peak_memory_mb"] / peer["peak_memory_mb"], rel=1e-9)
        assert row["vdm_peer_memory_ratio"] == pytest.approx(
            vdm["peak_memory_mb"] / peer["peak_memory_mb"], rel=1e-9)
        assert row["peer_rss_memory_ratio"] is None
    guided, unguided = saved["sampling"][1], saved["sampling"][0]
    assert guided["vdm"]["gflop_per_step"] == pytest.approx(2 * unguided["vdm"]["gflop_per_step"],
                                                            rel=0.05)
    assert saved["training"]["vdm"]["gflop_per_step"] > 0
    table = (tmp_path / "bench.md").read_text()
    assert table == markdown_report(report)
    assert "| 8x8 | none |" in table and "sampling_latency_ratio" in table
    assert "UNet3DConditionModel" in table and "| sampling_peer_latency_ratio |" in table
    for row in rows:  # the peer table's row: its parameters and its ratio to VideoFusion
        guidance = "CFG 3.0" if row["guided"] else "none"
        assert (f"| 8x8 | {guidance} | {row['videofusion']['parameters']['total'] / 1e6:.2f}M / "
                f"{row['peer']['parameters']['total'] / 1e6:.2f}M | (8, 24) | "
                f"{row['peer']['seconds_per_video']:.2f} | **{row['peer_latency_ratio']:.3f}** |"
                ) in table
    assert saved["sampling_vdm_peer_latency_ratio"] == max(r["vdm_peer_latency_ratio"]
                                                           for r in rows)
    # long videos: each length's runs, the medians, and the spread-inclusive worst ratio
    one, two = saved["long_video"]
    assert (one["frames"], one["clips"], two["frames"], two["clips"]) == (4, 1, 7, 2)
    for row in (one, two):
        runs = row["tensor_peak_mb_runs"]
        assert len(runs) == len(row["peak_mb_runs"]) == 2 and row["memory_steps"] == 2
        assert runs[0] == runs[1] > 0  # the tensor peak repeats exactly
        assert row["tensor_peak_mb"] == median(runs) and row["peak_mb"] == median(
            row["peak_mb_runs"])
    assert saved["long_video_memory_ratio"] == max(two["tensor_peak_mb_runs"] + one[
        "tensor_peak_mb_runs"]) / min(one["tensor_peak_mb_runs"])
    assert saved["long_video_memory_spread"] == 0
    target = saved["targets"]["long_video_memory_ratio"]
    assert target["met"] == (saved["long_video_memory_ratio"] <= 1.2)
    assert "tensor peak / first row's" in table and "| long_video_memory_ratio |" in table


def test_fresh_process_memory_and_long_video_workers(in_process_worker):
    sampling = in_process_worker.sampling_memory(8, True, "videofusion")
    training = in_process_worker.training_memory("vdm")
    assert sampling["baseline_mb"] > 0 and sampling["peak_mb"] >= 0
    assert training["peak_mb"] >= 0
    row = in_process_worker.long_video(9)
    assert row["frames"] == 9 and row["clips"] == 3 and row["mp4_bytes"] > 0
    assert row["tensor_peak_mb"] > 0 and row["memory_steps"] == 5


def test_tensor_allocation_peak_is_exact():
    """The peak of what is allocated during the call and still held, to the byte; what was
    allocated before is not counted, and freeing it does not count as negative."""
    mb = 2**20
    before = torch.empty(4 * mb, dtype=torch.uint8)

    def work():
        nonlocal before
        before = None  # freed: allocated before, so not counted
        a = torch.empty(mb, dtype=torch.uint8)
        b = torch.empty(2 * mb, dtype=torch.uint8)
        del a, b
        c = torch.empty(mb // 2, dtype=torch.uint8)
        return c

    assert tensor_allocation_peak_mb(work) == 3.0


@pytest.mark.parametrize("argv,match", [
    (["bench", "--resolutions", "30"], "down-sampling factor"),
    (["bench", "--steps", "0"], "steps must be >= 1"),
    (["bench", "--long-frames", "64", "--overlap-check"], "unrecognized arguments"),
])
def test_bad_input_is_one_line_and_exit_code_2(argv, match, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err


def test_flags_reach_the_configuration(monkeypatch):
    seen = {}

    def stop(config, out, markdown, log):
        seen.update(config=config, out=out, markdown=markdown)
        raise ValueError("stopped")

    monkeypatch.setattr("videofusion.bench.run_benchmark", stop)
    with pytest.raises(SystemExit):
        main(["bench", "--quick", "--long-frames", "16,48", "--threads", "1", "--out", "q.json"])
    config = seen["config"]
    assert config.long_frames == (16, 48) and config.threads == 1 and config.steps == 2
    assert str(seen["markdown"]) == "q.md"


def test_profile_gives_top_operator_tables(in_process_worker):
    tables = in_process_worker.profile(8, False, rows=5)
    assert set(tables) == set(KINDS) == {"videofusion", "vdm", "peer"}
    assert all("aten::" in table and "Self CPU" in table for table in tables.values())


def test_peer_is_parameter_matched_at_the_default_size(in_process_worker):
    """At the benchmark's default models (5.8M parameters) the peer is diffusers'
    UNet3DConditionModel with its default width ratios (1, 2, 4, 4), within 2% of VideoFusion
    (the VDM baseline is within 5%); it samples through the VDM baseline's loop."""
    from diffusers import UNet3DConditionModel

    from videofusion.models.factory import count_parameters

    in_process_worker.config = BenchConfig(threads=1)
    for guided in (False, True):
        models = in_process_worker.models(32, guided)
        vf, vdm, peer = (count_parameters(models[kind]) for kind in KINDS)
        assert abs(peer / vf - 1) < 0.02 and abs(vdm / vf - 1) < 0.05
        network = models["peer"].residual
        assert isinstance(network.unet, UNet3DConditionModel) and models["peer"].is_baseline
        assert network.config.block_out_channels == (24, 48, 96, 96)
        assert network.unet.config.cross_attention_dim == 384
        assert network.config.num_classes == (10 if guided else None)
        sample = torch.randn(2, 3, 4, 32, 32)
        labels = torch.tensor([0, 10]) if guided else None
        out = network(sample, torch.tensor([999, 999]), class_labels=labels)
        assert out.shape == sample.shape


def test_flops_count_cpu_attention():
    """torch's FlopCounterMode counts CPU flash attention as zero; the benchmark's does not."""
    q = torch.randn(2, 4, 64, 16, requires_grad=True)
    with flop_counter() as counter:
        torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()
    forward = 2 * 2 * (2 * 4 * 64 * 64 * 16)  # q k^T and (attention) v
    assert counter.get_total_flops() == forward * 3.5  # backward: 2.5x the forward


def test_peer_levels_must_divide_the_resolution():
    with pytest.raises(ValueError, match="peer's down-sampling factor 8"):
        check_config(tiny_config(peer_levels=4, resolutions=(12,)))
    with pytest.raises(ValueError, match="peer_levels"):
        check_config(tiny_config(peer_levels=5))


def test_a_long_video_row_without_rss_growth_gives_no_rss_ratio_and_the_table_still_renders():
    """RSS grows in whole pages: a short run may grow by none, and a ratio over it is undefined
    (it raised ZeroDivisionError); the tensor ratio, the target's, is unaffected."""
    def run(frames, tensor, rss):
        return {"frames": frames, "clips": 1, "seconds": 0.1, "cpu_seconds": 0.1,
                "peak_mb": rss, "baseline_mb": 100.0, "tensor_peak_mb": tensor,
                "memory_steps": 1, "mp4_bytes": 10}

    rows = [bench.long_row([run(4, 2.0, 0.0), run(4, 2.0, 0.0)]),
            bench.long_row([run(8, 2.2, 0.5), run(8, 2.4, 0.0)])]
    summary = bench.long_video_summary(rows)
    assert summary["long_video_memory_ratio"] == pytest.approx(1.2)
    assert summary["long_video_rss_ratio"] is None
    assert summary["long_video_rss_worst_ratio"] is None
    assert summary["long_video_rss_spread"] == pytest.approx(2.0)  # (0.5 - 0) / 0.25
    config = {"long_resolution": 8, "clip_frames": 4, "overlap": 1, "long_steps": 1,
              "long_runs": 2}
    table = "\n".join(bench.long_video_table({"config": config, "long_video": rows, **summary}))
    assert "RSS n/a" in table and "| n/a |" in table
