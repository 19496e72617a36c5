"""The latent cache (``videofusion.latent_cache``): what an entry holds, planted corruption and
staleness found and re-encoded, random clip starts read out of a video's entry, undecodable
videos skipped, ``data cache-latents``; and training on it: the losses of on-the-fly encoding,
bitwise resume."""

import json
import os
import socket

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from test_resume_equivalence import assert_same_tensors, log, pipeline_weights
from test_resume_equivalence import config as resume_config
from test_resume_equivalence import run as run_trainer

from videofusion import latent_cache
from videofusion.cli import main
from videofusion.data import MovingDigits, VideoFolder
from videofusion.latent_cache import CorruptLatentCache, prepare
from videofusion.safety import LOCK_FILE
from videofusion.vae import build_vae, encode_video, load_vae

pytestmark = pytest.mark.usefixtures("one_thread")


def save_vae(folder, seed=0):
    """A randomly initialised 2-level ``AutoencoderKL`` (factor 2, 4 latent channels)."""
    torch.manual_seed(seed)
    build_vae(3, 4, [8, 16], sample_size=16).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    return save_vae(tmp_path_factory.mktemp("vae") / "vae")


@pytest.fixture(scope="module")
def vae(vae_dir):
    return load_vae(vae_dir).eval()


def digits(length=6, **options):
    return MovingDigits(num_frames=4, resolution=16, length=length, **options)


def frame_folders(root, lengths=(10, 6, 8)):
    """Frame folders ``root/video_N/`` of random 16x16 PNGs, one per length."""
    rng = np.random.default_rng(0)
    for n, length in enumerate(lengths):
        folder = root / f"video_{n}"
        folder.mkdir(parents=True)
        for t in range(length):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"frame_{t:03d}.png")
    return root


def entry(folder, key="digits-00000002"):
    return folder / "entries" / f"{key}.safetensors"


def test_an_entry_holds_the_vae_latents_of_its_clip_and_is_not_encoded_twice(tmp_path, vae):
    data = digits()
    rng = torch.get_rng_state()
    cached, found = prepare(tmp_path / "cache", data, vae)
    assert torch.equal(torch.get_rng_state(), rng)  # a run's weights do not depend on it
    assert (found.entries, found.new, found.encoded, found.valid) == (6, 6, 6, 0)
    assert "6 entries, 0 valid, 6 new; encoded 6" in found.line()
    for i in range(6):
        item, clip = cached[i], data[i]
        expected = encode_video(vae, clip["video"][None])[0]  # (4, 4, 8, 8)
        torch.testing.assert_close(item["latents"], expected, rtol=1e-5, atol=1e-5)
        assert (item["class_label"], item["caption"]) == (clip["class_label"], clip["caption"])
    # safetensors with the entry's own record; the manifest lists it
    saved = load_file(entry(tmp_path / "cache"))
    assert saved["latents"].dtype == torch.float32 and saved["frames"].tolist() == [0, 1, 2, 3]
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["vae"]["sha256"] == latent_cache.vae_fingerprint(vae)
    assert manifest["data"]["moving_digits"]["size"] == [16, 16]
    record = manifest["entries"]["digits-00000002"]
    assert record["item"] == {"index": 2} and record["shape"] == [4, 4, 8, 8]
    assert record["sha256"] == latent_cache.tensor_sha256(saved["latents"])
    before = entry(tmp_path / "cache").stat().st_mtime_ns
    _, again = prepare(tmp_path / "cache", data, vae)
    assert (again.valid, again.to_encode, again.encoded) == (6, 0, 0)
    assert entry(tmp_path / "cache").stat().st_mtime_ns == before


def rewrite(path, **changes):
    """Save ``path`` again with tensors changed, keeping (or, with ``sha``, fixing) its
    metadata: a file that loads, whose checksum matches unless ``sha`` is False."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = {**load_file(path), **changes}
    metadata["sha256"] = latent_cache.tensor_sha256(tensors["latents"])
    save_file(tensors, path, metadata=metadata)


def nan(path):
    latents = load_file(path)["latents"]
    latents[0, 0, 0, 0] = float("nan")
    rewrite(path, latents=latents)


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x40  # inside the tensor data, which comes after the header
    path.write_bytes(bytes(data))


CORRUPTIONS = {  # how, and the reason the line gives
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:-50]), "unreadable"),
    "garbage": (lambda p: p.write_bytes(b"not a safetensors file"), "unreadable"),
    "empty": (lambda p: p.write_bytes(b""), "unreadable"),
    "nan": (nan, "not finite"),
    "wrong shape": (lambda p: rewrite(p, latents=torch.zeros(4, 4, 4, 4)),
                    "(4, 4, 4, 4), not float32 (4, 4, 8, 8)"),
    "wrong dtype": (lambda p: rewrite(p, latents=load_file(p)["latents"].half()),
                    "latents are float16"),
    "checksum mismatch": (flip_a_byte, "checksum mismatch"),
}


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_a_corrupt_entry_is_found_said_and_re_encoded(tmp_path, vae, kind):
    data = digits()
    folder = tmp_path / "cache"
    cached, _ = prepare(folder, data, vae)
    good = cached[2]["latents"]
    plant, reason = CORRUPTIONS[kind]
    plant(entry(folder))
    with pytest.raises(CorruptLatentCache, match="digits-00000002 went bad"):
        cached[2]  # never used: a run reading it stops
    cached, found = prepare(folder, data, vae)
    assert (found.corrupt, found.stale, found.new, found.valid, found.encoded) == (1, 0, 0, 5, 1)
    line = found.line()
    assert "1 corrupt (first: digits-00000002: " in line and reason in line, line
    assert "\n" not in line
    assert torch.equal(cached[2]["latents"], good)


def test_a_file_swapped_for_another_valid_entry_is_caught_by_the_manifest(tmp_path, vae):
    data = digits()
    folder = tmp_path / "cache"
    prepare(folder, data, vae)
    # same item, other latents with a matching checksum of their own: only the manifest knows
    rewrite(entry(folder), latents=load_file(entry(folder))["latents"] + 1)
    _, found = prepare(folder, data, vae)
    assert found.corrupt == 1 and "differs from the manifest's" in found.example


def test_a_changed_vae_or_data_option_makes_every_entry_stale(tmp_path, vae):
    folder = tmp_path / "cache"
    prepare(folder, digits(), vae)
    other = load_vae(save_vae(tmp_path / "other_vae", seed=1)).eval()
    _, found = prepare(folder, digits(), other)
    assert (found.stale, found.encoded, found.valid) == (6, 6, 0)
    assert "6 stale (VAE or source changed) (first: digits-00000000: another VAE)" in found.line()
    _, found = prepare(folder, digits(colors=("red",)), other)
    assert (found.stale, found.encoded) == (6, 6) and "other data settings" in found.example
    _, found = prepare(folder, digits(length=8, colors=("red",)), other)  # same items, 2 more
    assert (found.valid, found.new, found.stale) == (6, 2, 0)


def test_a_changed_video_makes_its_entry_stale_and_only_its(tmp_path, vae):
    root = frame_folders(tmp_path / "videos")
    data = VideoFolder(root, num_frames=4, resolution=16, start="center")
    folder = tmp_path / "cache"
    prepare(folder, data, vae)
    image = root / "video_1" / "frame_002.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)
    os.utime(image, ns=(1, 1))  # a new mtime whatever the clock's resolution
    cached, found = prepare(folder, data, vae)
    assert (found.stale, found.valid, found.encoded) == (1, 2, 1)
    assert found.example.endswith(": its source changed")
    expected = encode_video(vae, data[1]["video"][None])[0]
    torch.testing.assert_close(cached[1]["latents"], expected, rtol=1e-5, atol=1e-5)


def test_random_clip_starts_read_each_epochs_clip_out_of_the_whole_video(tmp_path, vae):
    root = frame_folders(tmp_path / "videos")
    data = VideoFolder(root, num_frames=3, resolution=16, frame_stride=2, start="random")
    cached, found = prepare(tmp_path / "cache", data, vae)
    assert found.encoded == 3
    assert load_file(entry(tmp_path / "cache", latent_cache._Videos(data).key(0)))[
        "frames"].tolist() == list(range(10))  # every frame of the 10-frame video
    starts = set()
    for epoch in range(4):
        cached.set_epoch(epoch)
        starts.add(data.frame_indices(0)[0])
        for i in range(3):
            expected = encode_video(vae, data[i]["video"][None])[0]
            torch.testing.assert_close(cached[i]["latents"], expected, rtol=1e-5, atol=1e-5)
    assert len(starts) > 1


def test_an_undecodable_video_is_skipped_for_the_next_as_the_folder_does(tmp_path, vae):
    root = frame_folders(tmp_path / "videos")
    (root / "video_1" / "frame_003.png").write_bytes(b"not a png")
    data = VideoFolder(root, num_frames=4, resolution=16, start="center")
    cached, found = prepare(tmp_path / "cache", data, vae)
    assert (found.undecodable, found.encoded) == (1, 2) and "1 undecodable" in found.line()
    assert cached.num_skipped == 1
    torch.testing.assert_close(cached[1]["latents"], cached[2]["latents"])
    _, again = prepare(tmp_path / "cache", data, vae)  # known bad: not tried again
    assert (again.undecodable, again.to_encode, again.encoded) == (1, 0, 0)


def test_a_killed_build_keeps_its_finished_entries(tmp_path, vae):
    folder = tmp_path / "cache"
    prepare(folder, digits(), vae)
    (folder / "manifest.json").unlink()  # killed before the manifest was written ...
    leftover = folder / "entries" / ".tmp-digits-00000005.safetensors.123"
    leftover.write_bytes(b"half an entry")  # ... while writing an entry
    entry(folder, "digits-00000005").unlink()
    _, found = prepare(folder, digits(), vae)
    assert (found.valid, found.new, found.encoded) == (5, 1, 1)
    assert not leftover.exists() and (folder / "manifest.json").is_file()


def test_a_cache_in_use_by_another_process_is_refused_in_one_line(tmp_path, vae):
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / LOCK_FILE).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(ValueError, match="latent_cache: .* is in use by another run"):
        prepare(folder, digits(), vae)


def test_only_the_built_in_datasets_are_cached(tmp_path, vae):
    with pytest.raises(ValueError, match="cannot cache a TensorDataset"):
        prepare(tmp_path / "cache", torch.utils.data.TensorDataset(torch.zeros(2)), vae)


def test_cache_latents_builds_checks_and_refuses_bad_input(tmp_path, vae_dir, capsys):
    flags = ["data", "cache-latents", "--data", "moving-digits", "--frames", "4",
             "--resolution", "16", "--vae", str(vae_dir), "--out", str(tmp_path / "cache")]
    yaml = tmp_path / "run.yaml"
    yaml.write_text("data_options: {length: 5}\n")
    assert main([*flags, "--config", str(yaml), "--check"]) == 1
    assert not (tmp_path / "cache").exists()
    assert "5 new; 5 to encode (nothing written)" in capsys.readouterr().out
    assert main([*flags, "--config", str(yaml)]) == 0
    assert "encoded 5 in" in capsys.readouterr().out
    assert main([*flags, "--config", str(yaml), "--check"]) == 0
    with pytest.raises(SystemExit) as stop:
        main([*flags[:-2]])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("videofusion: error: --out: no cache folder")
    assert err.count("\n") == 1


# ---- training on the cache ------------------------------------------------------------------

def run(root, name, vae_dir, cache=None, **overrides):
    return run_trainer(resume_config(root, name, vae=str(vae_dir), latent_cache=cache,
                                     **overrides))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, vae_dir):
    """On-the-fly encoding, the cache straight, the cache stopped at the stage boundary and
    inside stage 2 and resumed (the settings of tests/test_resume_equivalence.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("latent_runs")
    cache = str(root / "cache")
    trainers = {"fly": run(root, "fly", vae_dir), "cached": run(root, "cached", vae_dir, cache)}
    for stop in (2, 4):
        run(root, "split", vae_dir, cache, stop_at_step=stop, resume=stop != 2)
    trainers["split"] = run(root, "split", vae_dir, cache, resume=True)
    torch.set_num_threads(threads)
    return root, trainers


def test_training_on_the_cache_gives_the_losses_of_on_the_fly_encoding(runs):
    root, trainers = runs
    fly, cached = log(root, "fly"), log(root, "cached")
    assert [r["step"] for r in cached] == [1, 2, 3, 4, 5]
    for key in ("loss", "key_frame_loss", "non_key_frame_loss"):
        assert [r[key] for r in cached] == pytest.approx([r[key] for r in fly], rel=1e-5), key
    assert trainers["cached"].signal_leak_mean == pytest.approx(
        trainers["fly"].signal_leak_mean, abs=1e-5)
    assert "latents" in trainers["cached"].dataset[0]  # it did read the cache


def test_stop_and_resume_on_the_cache_is_bitwise_a_straight_run(runs):
    root, trainers = runs
    assert_same_tensors(pipeline_weights(root, "cached"), pipeline_weights(root, "split"))
    assert [r["loss"] for r in log(root, "split")] == [r["loss"] for r in log(root, "cached")]
    assert trainers["split"].config.latent_cache == str(root / "cache")
