"""Moving-digits metrics: real clips score near-perfect, corrupted clips clearly worse."""

import numpy as np
import pytest
import torch

from videofusion.data import MovingDigits
from videofusion.metrics import digits
from videofusion.metrics.digits import (
    CLASSIFIER_WEIGHTS,
    ENCODER_WEIGHTS,
    NO_DIGIT,
    content_consistency,
    digit_video_features,
    fit_bounce,
    fvd_digits,
    motion_errors,
    predict_digits,
    prompt_adherence,
)


@pytest.fixture(scope="module")
def classifier():
    return digits.load_digit_classifier()


@pytest.fixture(scope="module")
def encoder():
    return digits.load_digit_video_encoder()


def real_clips(n, start=0, source="both", **kwargs):
    ds = MovingDigits(split="test", source=source, length=start + n, **kwargs)
    videos = torch.stack([ds[i]["video"] for i in range(start, start + n)])
    return videos, [ds.metadata(i) for i in range(start, start + n)]


def shuffled(videos, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([v[:, torch.randperm(v.shape[1], generator=g)] for v in videos])


def swapped(videos, metas, cut=8):
    """Each clip keeps its motion but shows the next clip's digit (of another class) from
    frame ``cut`` on."""
    out = videos.clone()
    for i, meta in enumerate(metas):
        j = next(k for k in range(i + 1, i + len(metas))
                 if metas[k % len(metas)]["class_label"] != meta["class_label"]) % len(metas)
        size = meta["digit_size"]
        bx, by = metas[j]["top_left"][0, 0]
        glyph = videos[j, :, 0, by : by + size, bx : bx + size]
        for t in range(cut, videos.shape[2]):
            x, y = meta["top_left"][0, t]
            out[i, :, t] = -1.0
            out[i, :, t, y : y + size, x : x + size] = glyph
    return out


def test_shipped_weights_are_small_and_record_their_test_accuracy():
    for path in (CLASSIFIER_WEIGHTS, ENCODER_WEIGHTS):
        assert path.stat().st_size < 1_000_000
        meta = digits.weights_metadata(path)
        assert "seed" in meta and "command" in meta
    recorded = float(digits.weights_metadata(CLASSIFIER_WEIGHTS)["frame_accuracy_handwritten_32px"])
    # measured here, not read back: the shipped classifier on held-out handwritten test clips
    # (one digit per clip, so every frame's label is the clip's)
    videos, metas = real_clips(40, source="handwritten")
    predictions = predict_digits(videos, digits.load_digit_classifier())
    labels = np.array([m["class_label"] for m in metas])[:, None]
    measured = float((predictions == labels).mean())
    assert measured > 0.95 and measured > recorded - 0.05, (measured, recorded)


def test_real_clips_are_consistent_on_prompt_and_move_smoothly(classifier):
    videos, metas = real_clips(24)
    predictions = predict_digits(videos, classifier)
    assert predictions.shape == (24, 16)
    assert content_consistency(predictions).mean() > 0.95
    assert prompt_adherence(predictions, [m["class_label"] for m in metas]) > 0.9
    assert motion_errors(videos).mean() < 0.02


def test_swapped_digits_lose_content_consistency_and_adherence(classifier):
    videos, metas = real_clips(24)
    labels = [m["class_label"] for m in metas]
    real = content_consistency(predict_digits(videos, classifier)).mean()
    predictions = predict_digits(swapped(videos, metas, cut=8), classifier)
    assert content_consistency(predictions).mean() < real - 0.25
    # Digits swapped after 12 of 16 frames: the majority still shows the prompted digit.
    late = predict_digits(swapped(videos, metas, cut=12), classifier)
    assert prompt_adherence(late, labels) > 0.8
    assert content_consistency(late).mean() < real - 0.15


def test_shuffled_frames_break_motion_smoothness():
    videos, _ = real_clips(16)
    real, broken = motion_errors(videos), motion_errors(shuffled(videos))
    assert broken.mean() > 0.04
    assert broken.mean() > 4 * real.mean()
    assert (broken > real.max()).mean() > 0.9


def test_blank_videos_show_no_digit(classifier):
    blank = np.zeros((2, 8, 32, 32, 3), dtype=np.uint8)
    predictions = predict_digits(blank, classifier)
    assert (predictions == NO_DIGIT).all()
    np.testing.assert_array_equal(content_consistency(predictions), [0.0, 0.0])
    assert prompt_adherence(predictions, [3, -1]) == 0.0
    assert prompt_adherence(predictions, [-1, -1]) is None
    errors = motion_errors(blank)
    assert np.isfinite(errors).all() and (errors < 1e-6).all()


def test_a_tinted_background_leaves_digits_and_motion_unchanged(classifier):
    """Generated frames often sit on a uniform tint; the metrics must read the digit, not the
    background (the classifier alone, trained on black, calls most such frames "no digit")."""
    videos, metas = real_clips(12, resolution=32)
    x = (videos + 1) / 2  # (B, 3, F, H, W) in [0, 1]
    np.testing.assert_array_equal(digits.foreground(videos), x.amax(dim=1))  # black: no change
    tint = torch.tensor([0.05, 0.3, 0.15]).view(1, 3, 1, 1, 1)
    tinted = (x + tint).clamp(0, 1) * 2 - 1
    reference = predict_digits(videos, classifier)
    assert (predict_digits(tinted, classifier) == reference).mean() > 0.99
    np.testing.assert_allclose(motion_errors(tinted), motion_errors(videos), atol=1e-3)
    # still no digit where there is none: a tinted blank frame, a noise frame
    blank = torch.zeros(2, 3, 4, 32, 32) + tint * 2 - 1
    assert (predict_digits(blank, classifier) == NO_DIGIT).all()
    noise = (torch.rand(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.3 - 1)
    assert (predict_digits(noise, classifier) == NO_DIGIT).mean() > 0.9


def test_layouts_colours_and_resolutions_give_the_same_digits(classifier):
    colour, _ = real_clips(6, resolution=32)
    grey = colour.amax(dim=1, keepdim=True)  # a white digit: the (1, F, H, W) layout
    numpy_u8 = ((colour.permute(0, 2, 3, 4, 1) + 1) * 127.5).round().byte().numpy()
    reference = predict_digits(colour, classifier)
    np.testing.assert_array_equal(reference, predict_digits(grey, classifier))
    np.testing.assert_array_equal(reference, predict_digits(numpy_u8, classifier))
    large, metas = real_clips(6, resolution=64)
    adherence = prompt_adherence(predict_digits(large, classifier),
                                 [m["class_label"] for m in metas])
    assert adherence > 0.8


def test_fit_bounce_recovers_clean_bouncing_motion():
    t = np.arange(16.0)
    limit = 16.0
    positions = limit - np.abs(limit - np.mod(3.0 + 2.5 * t, 2 * limit)) + 7.5
    np.testing.assert_allclose(fit_bounce(positions, 32), positions, atol=1e-3)
    still = np.full(16, 11.0)
    np.testing.assert_allclose(fit_bounce(still, 32), still, atol=1e-6)


def test_fvd_digits_separates_real_from_corrupted(encoder):
    a, _ = real_clips(48, start=0, source="handwritten")
    b, metas = real_clips(48, start=48, source="handwritten")
    real_a = digit_video_features(a, encoder)
    assert real_a.shape == (48, digits.FEATURE_DIM)
    with pytest.warns(UserWarning, match="rank-deficient"):
        same = fvd_digits(real_a, digit_video_features(b, encoder))
        broken = fvd_digits(real_a, digit_video_features(shuffled(b), encoder))
        swapped_digit = fvd_digits(real_a, digit_video_features(swapped(b, metas), encoder))
    assert 0.0 <= same
    assert broken > 2 * same
    assert swapped_digit > 1.3 * same


def test_bad_video_layouts_are_rejected():
    with pytest.raises(ValueError, match="videos"):
        digits.unit_frames(np.zeros((2, 8, 32, 32, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="videos"):
        digits.unit_frames(torch.zeros(2, 8, 32, 32))
    with pytest.raises(ValueError, match="uint8 or float"):
        digits.unit_frames(np.zeros((1, 2, 16, 16, 3), dtype=np.int32))
    with pytest.raises(FileNotFoundError, match="train_digit_metrics"):
        digits.load_digit_classifier("/nonexistent/weights.safetensors")
