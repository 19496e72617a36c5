"""A real camera clip through the project loader: OpenCV's sample vtest.avi (Debian opencv-doc)."""

from pathlib import Path

import pytest
import torch

from videofusion.data import VideoFolder

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


@pytest.fixture
def folder(tmp_path):
    if not VTEST.is_file():
        pytest.skip(f"{VTEST} not found (apt-get install opencv-doc)")
    (tmp_path / "vtest.avi").symlink_to(VTEST)
    return tmp_path


def test_video_folder_decodes_a_real_camera_clip(folder):
    ds = VideoFolder(folder, num_frames=8, resolution=(48, 64), frame_stride=2, start="center")
    assert len(ds) == 1 and ds.num_skipped == 0
    item = ds[0]
    video = item["video"]
    assert video.dtype == torch.float32 and tuple(video.shape) == (3, 8, 48, 64)
    assert video.min() >= -1 and video.max() <= 1
    assert video.std() > 0.1, "flat frames"
    assert (video[:, 1:] - video[:, :-1]).abs().mean() > 0.005, "no motion between frames"
    assert (item["class_label"], item["caption"]) == (-1, "")
