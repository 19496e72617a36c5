import numpy as np
import pytest
import torch

from videofusion.data import MovingDigits, build_dataset
from videofusion.data.moving_digits import PALETTE, bounce, direction_words, split_indices


def test_same_seed_and_index_give_identical_clips():
    a = MovingDigits(seed=3, length=50)
    b = MovingDigits(seed=3, length=50)
    for i in (0, 7, 49):
        assert torch.equal(a[i]["video"], b[i]["video"])
        assert a[i]["caption"] == b[i]["caption"]
    # Order of access does not matter, other indices and seeds differ.
    assert torch.equal(a[7]["video"], a[7]["video"])
    assert not torch.equal(a[0]["video"], a[1]["video"])
    assert not torch.equal(a[0]["video"], MovingDigits(seed=4, length=50)[0]["video"])


@pytest.mark.parametrize(
    "num_frames,resolution,channels",
    [(1, 16, 3), (8, 32, 1), (16, 32, 3), (5, (24, 40), 3), (3, 64, 1)],
)
def test_shapes_and_range(num_frames, resolution, channels):
    ds = MovingDigits(num_frames=num_frames, resolution=resolution, channels=channels, length=4)
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    item = ds[2]
    video = item["video"]
    assert set(item) == {"video", "class_label", "caption"}
    assert video.shape == (channels, num_frames, h, w) and video.dtype == torch.float32
    assert video.min() >= -1.0 and video.max() <= 1.0
    assert video.min() == -1.0 and video.max() > 0.5  # black background, a bright digit
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["video"].shape == (2, channels, num_frames, h, w)


def test_out_of_range_index_and_bad_arguments():
    ds = MovingDigits(length=3)
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(ValueError, match="resolution"):
        MovingDigits(resolution=8)
    with pytest.raises(ValueError, match="colors"):
        MovingDigits(colors=("purple",))
    with pytest.raises(ValueError, match="split"):
        MovingDigits(split="val")


def test_bounce_stays_inside_and_reflects():
    pos = bounce(np.array([1.0]), np.array([3.0]), np.array([10.0]), steps=20)[:, 0]
    assert pos.min() >= 0 and pos.max() <= 10
    np.testing.assert_allclose(pos[:5], [1, 4, 7, 10, 7])


@pytest.mark.parametrize("num_digits", [1, 2])
def test_digits_stay_inside_frame_and_pixels_match_trajectory(num_digits):
    ds = MovingDigits(
        num_frames=24, resolution=(32, 48), num_digits=num_digits, speed=(0.2, 0.3), length=40
    )
    size = ds.digit_size
    for i in range(40):
        meta = ds.metadata(i)
        tl = meta["top_left"]
        assert tl.shape == (num_digits, 24, 2)
        assert tl.min() >= 0
        assert tl[..., 0].max() <= 48 - size and tl[..., 1].max() <= 32 - size
        np.testing.assert_allclose(meta["centers"], tl + (size - 1) / 2)
    # With one digit, all lit pixels lie inside the digit's box in every frame.
    ds1 = MovingDigits(num_frames=12, speed=(0.2, 0.3), length=5)
    for i in range(5):
        video, tl = ds1[i]["video"], ds1.metadata(i)["top_left"][0]
        for t in range(12):
            lit = (video[:, t] > -1).any(0).nonzero()
            assert lit[:, 0].min() >= tl[t, 1] and lit[:, 0].max() < tl[t, 1] + ds1.digit_size
            assert lit[:, 1].min() >= tl[t, 0] and lit[:, 1].max() < tl[t, 0] + ds1.digit_size


def test_high_speed_bounces_between_both_walls():
    ds = MovingDigits(num_frames=32, speed=(0.15, 0.15), length=3)
    limit = 32 - ds.digit_size
    for i in range(3):
        tl = ds.metadata(i)["top_left"][0]
        moving = np.abs(ds.metadata(i)["velocity"][0]) > 0
        assert (tl[:, moving].min(0) <= 3).all() and (tl[:, moving].max(0) >= limit - 3).all()


def test_direction_words():
    assert direction_words(1, 0) == "right"
    assert direction_words(-1, 0) == "left"
    assert direction_words(0, 2) == "down"
    assert direction_words(0, -2) == "up"
    assert direction_words(-1, 1) == "down and to the left"
    assert direction_words(1, -1) == "up and to the right"


def test_caption_matches_velocity_colour_and_first_motion():
    ds = MovingDigits(num_frames=8, num_digits=2, length=60)
    for i in range(60):
        meta = ds.metadata(i)
        item = ds[i]
        assert item["caption"] == meta["caption"]
        expected = ", and ".join(
            f"a {c} digit {d} moving {direction_words(*v)}"
            for c, d, v in zip(meta["colors"], meta["digit_classes"], meta["velocity"], strict=True)
        )
        assert item["caption"] == expected
        # The first displacement agrees in sign with the described velocity.
        step = meta["top_left"][:, 1] - meta["top_left"][:, 0]
        assert np.all(step * np.sign(meta["velocity"]) >= 0)
        # The digit's colour shows up in the pixels: channels that are off stay black.
        for d, colour in enumerate(meta["colors"]):
            if len(meta["colors"]) == 1 or meta["colors"][0] == meta["colors"][1]:
                continue
            off = [c for c in range(3) if PALETTE[colour][c] == 0]
            x, y = meta["top_left"][d, 0]
            patch = item["video"][:, 0, y : y + ds.digit_size, x : x + ds.digit_size]
            other = meta["colors"][1 - d]
            exclusive = [c for c in off if PALETTE[other][c] == 0]
            if exclusive:
                assert patch[exclusive].max() == -1.0


def test_still_digits():
    ds = MovingDigits(speed=(0.0, 0.0), length=2)
    meta = ds.metadata(1)
    assert (meta["top_left"] == meta["top_left"][:, :1]).all()
    assert ds[1]["caption"].endswith(f"digit {meta['digit_classes'][0]} standing still")


def test_grey_caption_has_no_colour():
    ds = MovingDigits(channels=1, length=5)
    meta = ds.metadata(0)
    assert ds[0]["caption"] == f"a digit {meta['digit_classes'][0]} moving {meta['directions'][0]}"


def test_train_and_test_share_no_digit_image():
    for source in ("handwritten", "font"):
        train, test = split_indices(source, "train"), split_indices(source, "test")
        assert len(np.intersect1d(train, test)) == 0
        assert 0.15 < len(test) / (len(train) + len(test)) < 0.25
    sizes = [len(split_indices("handwritten", split)) for split in ("train", "test")]
    assert sum(sizes) == 1797
    used = {}
    for split in ("train", "test"):
        ds = MovingDigits(split=split, source="both", num_digits=2, length=300)
        for i in range(300):
            meta = ds.metadata(i)
            for s, j in zip(meta["sources"], meta["image_indices"], strict=True):
                used.setdefault(split, set()).add((s, j))
    assert used["train"].isdisjoint(used["test"])
    assert {s for s, _ in used["train"]} == {"handwritten", "font"}
    for split in ("train", "test"):
        for s, j in used[split]:
            assert j in split_indices(s, split)


def test_class_label_is_first_digit_and_matches_source_image():
    from sklearn.datasets import load_digits

    targets = load_digits().target
    ds = MovingDigits(num_digits=2, length=30)
    for i in range(30):
        meta = ds.metadata(i)
        assert ds[i]["class_label"] == meta["digit_classes"][0]
        for cls, j in zip(meta["digit_classes"], meta["image_indices"], strict=True):
            assert cls == targets[j]


def test_font_source_and_factory():
    ds = build_dataset("moving-digits", split="test", num_frames=4, resolution=16, source="font")
    assert isinstance(ds, MovingDigits) and ds.split == "test"
    assert ds[0]["video"].shape == (3, 4, 16, 16)
    assert all(ds.metadata(i)["sources"] == ["font"] for i in range(5))
