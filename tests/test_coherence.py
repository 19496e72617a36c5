"""Coherence metrics separate real clips from the same clips broken in time."""

import numpy as np
import pytest
import torch

from videofusion.evaluation import load_moving_digits
from videofusion.metrics import coherence


@pytest.fixture(scope="module")
def real():
    return load_moving_digits(16, 16, (32, 32), progress=False).videos.astype(np.float32) / 255


K = 8  # key frame of 16


def recoloured_key_frame(videos):
    out = videos.copy()
    out[:, K] = np.roll(out[:, K], 1, axis=-1)  # red -> green -> blue -> red; white stays white
    return out


def shifted_key_frame(videos):
    out = videos.copy()
    out[:, K] = np.roll(out[:, K], 5, axis=2)
    return out


def shuffled(videos):
    order = np.random.default_rng(0).permutation(videos.shape[1])
    return videos[:, order]


def frozen(videos):
    return np.repeat(videos[:, K : K + 1], videos.shape[1], axis=1)


def test_real_clips_have_no_seam_and_constant_colour(real):
    assert 0.8 < coherence.key_frame_seam(real) < 1.25
    assert np.nanmax(coherence.colour_deviation(real)) == 0.0
    assert np.nanmax(coherence.colour_spread(real)) < 1e-6
    assert len(set(coherence.palette_names(real))) >= 5


def test_seam_sees_a_recoloured_or_shifted_key_frame(real):
    coloured = real[[n != "white" for n in coherence.palette_names(real)]]
    assert coherence.key_frame_seam(recoloured_key_frame(coloured)) > 2.0
    assert coherence.key_frame_seam(recoloured_key_frame(real)) > 1.5
    assert coherence.key_frame_seam(shifted_key_frame(real)) > 2.0


def test_seam_is_a_ratio_at_the_chosen_frames():
    videos = np.zeros((1, 5, 4, 4, 3), np.float32)
    videos[0, 2] = 0.4
    videos[0, 3] = 0.1  # frame 2: |0.4 - 0.05| = 0.35; frame 1: |0 - 0.2| = 0.2; frame 3: 0.1
    assert coherence.seam_ratio(videos, [2]) == pytest.approx(0.35 / 0.15)
    assert coherence.seam_ratio(videos, [1, 3]) == pytest.approx(0.15 / 0.35)
    with pytest.raises(ValueError, match="inner frame"):
        coherence.seam_ratio(videos, [0])


def test_colour_deviation_sees_a_recoloured_frame(real):
    broken = coherence.colour_deviation(recoloured_key_frame(real))
    not_white = [n != "white" for n in coherence.palette_names(real)]
    assert (broken[not_white] > 0.02).all()


def test_colour_spread_sees_a_digit_of_two_colours():
    videos = np.zeros((2, 4, 8, 8, 3), np.float32)
    videos[:, :, 2:6, 2:6] = (0.0, 0.0, 0.8)  # a blue digit, dimmer at its edge: still one hue
    videos[:, :, 2, 2:6] = (0.0, 0.0, 0.5)
    videos[1, 1, 5, 2:6] = (0.8, 0.0, 0.8)  # a quarter of one frame's digit magenta
    spread = coherence.colour_spread(videos)
    assert spread[0] == 0.0
    # frame 1: hues (0, 0, 1) x 12 and (1, 0, 1) x 4, median red 0: |red - 0| = 1 on a quarter
    # of the pixels, in a third of the channels; the other three frames 0
    assert spread[1] == pytest.approx(1 / 4 / 3 / 4)
    assert coherence.colour_deviation(videos[1:])[0] > 0  # the mean colour moved as well
    metrics = coherence.coherence_metrics(videos, digits=True)
    assert metrics["colour_spread"] == pytest.approx(spread.mean())
    # one clip of 0 and one of 1/48: resampled means are 0, 1/96 or 1/48, sd 1/96 / sqrt(2)
    assert metrics["colour_spread_bootstrap_std"] == pytest.approx(1 / 96 / 2 ** 0.5, rel=0.1)


def test_flicker_sees_shuffled_frames_and_a_frozen_clip(real):
    reference = coherence.flicker(real)
    assert coherence.flicker(shuffled(real)) > 1.5 * reference
    assert coherence.flicker(frozen(real)) == 0.0


def test_motion_jerk_and_speed(real):
    speed, jerk, _ = coherence.motion_statistics(real)
    s_speed, s_jerk, _ = coherence.motion_statistics(shuffled(real))
    assert s_jerk.mean() > 2 * jerk.mean()
    f_speed, f_jerk, _ = coherence.motion_statistics(frozen(real))
    assert f_jerk.max() == 0.0 and f_speed.max() == 0.0  # no jerk, but no motion either
    assert speed.mean() > 0.03


def test_palette_names_follow_the_colour():
    videos = np.zeros((2, 5, 8, 8, 3), np.float32)
    videos[0, :, 2:5, 2:5] = (0.6, 0.0, 0.0)  # a dim red digit
    videos[1, :, 2:5, 2:5] = (0.0, 0.9, 0.9)
    assert coherence.palette_names(videos) == ["red", "cyan"]
    assert coherence.coherence_metrics(videos, digits=True)["palette_coverage"] == 2
    three = np.concatenate([videos, videos[:1]])
    assert coherence.coherence_metrics(three, digits=True)["palette_counts"] == {"red": 2,
                                                                                "cyan": 1}


def test_digit_colour_ignores_a_tinted_background():
    videos = np.zeros((1, 5, 8, 8, 3), np.float32)
    videos[..., 2] = 0.5  # a blue-tinted background, as generated frames sometimes have
    videos[0, :, 2:5, 2:5, 0] = 0.6  # a red digit on it
    assert coherence.palette_names(videos) == ["red"]
    assert coherence.colour_deviation(videos)[0] == 0.0


def test_long_video_seam_looks_at_the_joins():
    videos = np.zeros((1, 40, 4, 4, 3), np.float32)
    videos[0, ::2] = 0.1  # a steady flicker everywhere
    assert coherence.long_video_seam(videos, 16, 4) == pytest.approx(1.0)
    videos[0, 16] += 0.5  # first new frame of the second clip (16 frames, overlap 4) jumps
    assert coherence.long_video_seam(videos, 16, 4) > 2.0
    videos[0, 16] -= 0.5
    videos[0, 20] += 0.5  # a jump away from the joins (16, 28) does not count there
    assert coherence.long_video_seam(videos, 16, 4) < 1.0


def test_worst_jerk_is_a_clips_largest_second_difference_where_the_mean_hides_a_jump():
    """A square gliding 1 px a frame, then jumping 6 px at frame 8: second differences are
    0 except +6 and -6 px around the jump, so the worst jerk is 6 / 32 frame sides and the mean
    12 / 14 / 32; without the jump both are 0."""
    videos = np.zeros((2, 16, 32, 32, 3), np.float32)
    for i in range(16):
        x = 4 + i + (6 if i >= 8 else 0)
        videos[0, i, 14:17, x : x + 3] = 1.0
        videos[1, i, 14:17, 4 + i : 7 + i] = 1.0
    speed, jerk, worst = coherence.motion_statistics(videos)
    assert worst == pytest.approx([6 / 32, 0.0], abs=1e-6)
    assert jerk == pytest.approx([12 / 14 / 32, 0.0], abs=1e-6)
    assert speed == pytest.approx([21 / 15 / 32, 1 / 32], abs=1e-6)
    assert coherence.coherence_metrics(videos, digits=True)["worst_jerk"] == pytest.approx(
        3 / 32, abs=1e-6)


def gliding_body(frames=16, size=32):
    """An orange 4x10 bar gliding 1 px a frame over a blue sky with a faint gradient."""
    videos = np.zeros((1, frames, size, size, 3), np.float32)
    videos[..., 2] = np.linspace(0.35, 0.5, size)[:, None]  # sky: within 0.25 of its median
    videos[..., 1] = 0.2
    for i in range(frames):
        videos[0, i, 12:16, 4 + i : 14 + i] = (0.9, 0.6, 0.3)
    return videos


def test_a_gliding_body_is_one_piece_of_constant_area():
    pieces, areas = coherence.foreground_shapes(gliding_body())
    assert (pieces == 1).all() and (areas == 40).all()
    metrics = coherence.coherence_metrics(gliding_body())
    assert metrics["foreground_pieces"] == 1.0 and metrics["foreground_area_change"] == 0.0


def test_foreground_pieces_count_a_body_falling_apart_but_not_speckle():
    videos = gliding_body()
    for i in range(8, 16):  # from frame 8 a two-pixel sky gap cuts the bar in two halves
        videos[0, i, 12:16, 8 + i : 10 + i] = videos[0, i, 0:4, 0:2]
    videos[0, :, 2, 2] = (1.0, 1.0, 1.0)  # a one-pixel speck in every frame
    videos[0, :, 25:27, 25] = (1.0, 1.0, 1.0)  # and a two-pixel one
    pieces, areas = coherence.foreground_shapes(videos)
    assert pieces[0].tolist() == [1] * 8 + [2] * 8
    assert areas[0].tolist() == [40] * 8 + [32] * 8
    assert coherence.coherence_metrics(videos)["foreground_pieces"] == 1.5


def test_foreground_pieces_join_diagonal_neighbours():
    videos = np.zeros((1, 3, 8, 8, 3), np.float32)
    for i in range(4):
        videos[0, :, i, i] = 1.0  # a one-pixel diagonal line: one piece of 4 pixels
    pieces, areas = coherence.foreground_shapes(videos)
    assert (pieces == 1).all() and (areas == 4).all()


def test_foreground_area_change_is_the_relative_change_between_frames():
    videos = np.zeros((2, 4, 16, 16, 3), np.float32)
    for i, side in enumerate((4, 6, 4, 4)):
        videos[0, i, :side, :side] = 1.0  # 16, 36, 16, 16 pixels
    # clip 1 shows nothing in its first two frames: only the pair (2, 3) has a foreground
    videos[1, 2:, :3, :3] = 1.0
    change = coherence.area_change(coherence.foreground_shapes(videos)[1])
    assert change[0] == pytest.approx((20 / 26 + 20 / 26 + 0) / 3)
    assert change[1] == pytest.approx((2 + 0) / 2)  # 0 -> 9 pixels: 9 / 4.5; then no change


def speckled(videos, frames, amplitude=0.06, seed=0):
    """``videos`` with faint random speckle (below the foreground threshold) on ``frames``."""
    out = videos.copy()
    noise = np.random.default_rng(seed).uniform(0, amplitude, out[:, frames].shape)
    out[:, frames] = np.clip(out[:, frames] + noise, 0, 1)
    return out


def test_real_clips_have_no_background_grain_though_their_digits_have_sharp_edges(real):
    grain = coherence.background_grain(real)
    assert grain.shape == real.shape[:2]
    assert np.nanmax(grain) < 1e-4
    metrics = coherence.coherence_metrics(real)
    assert metrics["background_grain"] < 1e-4


def test_background_grain_sees_speckle_and_neighbour_grain_sees_it_beside_the_key_frame(real):
    everywhere = speckled(real, slice(None))
    beside = speckled(real, [K - 1, K + 1])
    assert coherence.coherence_metrics(everywhere)["background_grain"] > 0.01
    assert coherence.coherence_metrics(everywhere)["neighbour_grain"] == pytest.approx(1, abs=0.1)
    assert coherence.coherence_metrics(beside)["neighbour_grain"] is None  # clean elsewhere
    both = np.maximum(speckled(real, slice(None), amplitude=0.02, seed=1), beside)
    assert coherence.coherence_metrics(both)["neighbour_grain"] > 2.0
    assert coherence.coherence_metrics(frozen(real))["background_grain"] < 1e-4
    three = speckled(real[:, :3], slice(None))  # no frame but the key frame's neighbours
    assert coherence.neighbour_grain(coherence.background_grain(three)) is None


def test_background_grain_is_the_mean_distance_from_the_box_blur_away_from_the_foreground():
    videos = np.zeros((1, 3, 12, 12, 3), np.float32)
    videos[0, :, 0:2, 0:2] = 1.0  # foreground in the corner: rows and columns 0-3 are near it
    videos[0, 1, 8, 8] = (0.09, 0.0, 0.0)  # one faint speck, far from the foreground
    grain = coherence.background_grain(videos)
    # the speck differs from its blur by 0.09 * 8 / 9 at its pixel, by 0.09 / 9 at each of its
    # 8 neighbours (red only: / 3 channels); 144 - 16 pixels are at least 2 from the corner
    assert grain[0, 1] == pytest.approx((0.09 * 8 / 9 + 8 * 0.09 / 9) / 3 / 128)
    assert grain[0, 0] == grain[0, 2] == 0.0
    grey = np.full((1, 2, 8, 8, 3), 0.5, np.float32)  # a flat sky has no grain, edges included
    assert (coherence.background_grain(grey) == 0).all()
    empty = np.ones((1, 3, 4, 4, 3), np.float32)
    empty[0, :, 1:3, 1:3] = 0.0  # the foreground's surroundings cover the whole frame
    assert np.isnan(coherence.background_grain(empty)).all()


def test_digit_colour_is_the_mean_of_the_pixels_at_least_half_as_bright_as_the_brightest():
    videos = np.zeros((1, 3, 8, 8, 3), np.float32)
    videos[0, 0, 1:3, 1:3] = (0.8, 0.4, 0.0)  # brightest channel 0.8: the core threshold is 0.4
    videos[0, 0, 5, 5] = (0.0, 0.0, 0.4)  # exactly half as bright: in the core
    videos[0, 0, 6, 6] = (0.3, 0.3, 0.3)  # dimmer: not
    videos[0, 1, 2:5, 2:5] = (0.0, 0.15, 0.15)  # frame 1: too faint to be a digit
    videos[0, 2, 2:5, 2:5] = (0.25, 0.0, 0.25)  # frame 2: faint, but a digit
    colours = coherence.digit_colours(videos)
    np.testing.assert_allclose(colours[0, 0], [(4 * 0.8) / 5, (4 * 0.4) / 5, 0.4 / 5], rtol=1e-6)
    assert np.isnan(colours[0, 1]).all()
    np.testing.assert_allclose(colours[0, 2], [0.25, 0.0, 0.25], rtol=1e-6)
    grey = videos[..., :1]  # one channel: the same value in all three
    np.testing.assert_allclose(coherence.digit_colours(grey)[0, 0], [0.8] * 3, rtol=1e-6)


def test_palette_names_scale_a_dim_colour_up_and_skip_clips_without_a_digit():
    videos = np.zeros((3, 4, 8, 8, 3), np.float32)
    videos[1, :, 2:5, 2:5] = (0.3, 0.3, 0.0)  # a dim yellow
    videos[2, :, 2:5, 2:5] = (0.0, 0.0, 0.9)
    assert coherence.palette_names(videos) == [None, "yellow", "blue"]
    metrics = coherence.coherence_metrics(videos, digits=True)
    assert metrics["palette_coverage"] == 2 and metrics["colour_deviation"] == 0.0


def test_coherence_metrics_report_each_metric_under_its_name():
    videos = np.zeros((2, 6, 16, 16, 3), np.float32)
    for i in range(6):
        videos[0, i, 4:7, 2 + i : 5 + i] = (0.9, 0.0, 0.0)
        videos[1, i, 8:11, 2 + 2 * i : 5 + 2 * i] = (0.0, 0.0, 0.9) if i != 3 else (0, 0.9, 0)
    videos[1, 2, 0, 15] = 0.05  # a faint speck in the background
    plain = coherence.coherence_metrics(videos)
    assert set(plain) == {"key_frame_seam", "flicker", "foreground_pieces",
                          "foreground_area_change", "background_grain", "neighbour_grain",
                          "key_frame_seam_bootstrap_std", "flicker_bootstrap_std"}
    assert plain["key_frame_seam"] == coherence.key_frame_seam(videos)
    assert plain["flicker"] == coherence.flicker(videos)
    grain = coherence.background_grain(videos)
    assert plain["background_grain"] == pytest.approx(np.nanmean(grain))
    assert plain["neighbour_grain"] == coherence.neighbour_grain(grain)
    digits = coherence.coherence_metrics(videos, digits=True)
    assert set(digits) - set(plain) == {"colour_deviation", "colour_spread", "palette_coverage",
                                        "palette_counts",
                                        "mean_speed", "jerk", "worst_jerk",
                                        "colour_deviation_bootstrap_std",
                                        "colour_spread_bootstrap_std",
                                        "palette_coverage_bootstrap_std", "jerk_bootstrap_std",
                                        "worst_jerk_bootstrap_std"}
    speed, jerk, worst = coherence.motion_statistics(videos)
    assert digits["colour_deviation"] == pytest.approx(coherence.colour_deviation(videos).mean())
    assert digits["colour_deviation"] > 0
    assert (digits["mean_speed"], digits["jerk"], digits["worst_jerk"]) == pytest.approx(
        (speed.mean(), jerk.mean(), worst.mean()))
    assert digits["palette_counts"] == {"red": 1, "blue": 1}


def test_metrics_of_clips_without_any_foreground_are_none_not_nan():
    videos = np.zeros((1, 5, 8, 8, 3), np.float32)
    metrics = coherence.coherence_metrics(videos, digits=False)
    assert metrics["foreground_area_change"] is None and metrics["foreground_pieces"] == 0.0
    covered = np.ones((1, 5, 4, 4, 3), np.float32)
    covered[0, :, 1:3, 1:3] = 0.0  # a dark hole in a white frame: no digit, no background
    metrics = coherence.coherence_metrics(covered, digits=True)
    assert metrics["colour_deviation"] is None and metrics["palette_coverage"] == 0
    assert metrics["background_grain"] is None and metrics["neighbour_grain"] is None


def test_neighbour_grain_averages_both_neighbours():
    grain = np.full((1, 9), 0.01)
    grain[0, 5] = 0.03  # k = 4: one neighbour three times as grainy, the other as the rest
    assert coherence.neighbour_grain(grain) == pytest.approx(2.0)
    grain[0, 3], grain[0, 5] = 0.03, 0.01
    assert coherence.neighbour_grain(grain) == pytest.approx(2.0)
    flat = np.full((1, 9), coherence.FLAT_GRAIN)  # at the threshold: not flat
    assert coherence.neighbour_grain(flat) == pytest.approx(1.0)


def test_long_video_seam_is_the_seam_ratio_at_both_frames_of_each_join():
    rng = np.random.default_rng(0)
    videos = rng.uniform(0, 1, (2, 40, 4, 4, 3)).astype(np.float32)
    # clips of 16 overlapping by 4: new clips start at 16 and 28, so the joins are 15|16, 27|28
    assert coherence.long_video_seam(videos, 16, 4) == pytest.approx(
        coherence.seam_ratio(videos, [15, 16, 27, 28]))
    # a join at the last frame cannot be measured (no frame after it)
    assert coherence.long_video_seam(videos[:, :29], 16, 4) == pytest.approx(
        coherence.seam_ratio(videos[:, :29], [15, 16, 27]))
    assert coherence.long_video_seam(videos[:, :18], 16, 0) == pytest.approx(
        coherence.seam_ratio(videos[:, :18], [15, 16]))
    with pytest.raises(ValueError, match=r"^videos: 16 frames hold no join of 16-frame clips "
                                         r"overlapping by 4$"):
        coherence.long_video_seam(videos[:, :16], 16, 4)
    with pytest.raises(ValueError, match="no join"):
        coherence.long_video_seam(videos, 16, 16)  # clips that do not advance have no joins


def test_seam_and_deviations_refuse_what_they_cannot_measure():
    videos = np.zeros((1, 3, 4, 4, 3), np.float32)
    assert coherence.frame_deviations(videos).shape == (1, 1)  # three frames: one inner frame
    with pytest.raises(ValueError, match=r"^videos: coherence metrics need at least 3 frames, "
                                         r"got 2$"):
        coherence.frame_deviations(videos[:, :2])
    five = np.zeros((1, 5, 4, 4, 3), np.float32)
    with pytest.raises(ValueError, match=r"^frames: inner frame indices 1\.\.3 expected, got "
                                         r"\[4\]$"):
        coherence.seam_ratio(five, [4])
    assert coherence.seam_ratio(five, [3]) == 0.0  # the last inner frame is allowed
    with pytest.raises(ValueError, match=r"^frames: at least one inner frame must be left to "
                                         r"compare with$"):
        coherence.seam_ratio(five, [1, 2, 3])


def test_area_change_counts_any_area_above_zero():
    change = coherence.area_change(np.array([[0, 1, 1], [2, 2, 2]]))
    assert change[0] == pytest.approx((1 / 0.5 + 0) / 2)
    assert change[1] == 0.0


def test_a_tensor_batch_is_read_with_its_frames_on_the_third_axis():
    videos = np.random.default_rng(1).uniform(0, 1, (2, 5, 8, 8, 3)).astype(np.float32)
    tensor = torch.from_numpy(videos).permute(0, 4, 1, 2, 3) * 2 - 1  # (B, C, F, H, W), [-1, 1]
    assert coherence.key_frame_seam(tensor) == pytest.approx(coherence.key_frame_seam(videos))


def test_single_pixels_and_threshold_values_count():
    one = np.zeros((2, 3, 6, 6, 1), np.float32)  # a grey batch of two
    one[:, :, 2, 2] = 0.7  # a one-pixel digit: its colour is that pixel's
    np.testing.assert_allclose(coherence.digit_colours(one)[:, 0], [[0.7] * 3] * 2, rtol=1e-6)
    frame = np.zeros((1, 3, 7, 7, 3), np.float32)
    for y, x in [(0, 0), (0, 3), (0, 6), (3, 0), (3, 6), (6, 0), (6, 3), (6, 6)]:
        frame[0, :, y, x] = 0.25  # foreground at exactly the threshold, round the border
    frame[0, :, 3, 3, 0] = 0.09  # the one pixel 3 away from all of it: a faint red speck
    np.testing.assert_allclose(coherence.background_grain(frame)[0], [0.09 * 8 / 9 / 3] * 3,
                               rtol=1e-6)
    three = np.zeros((1, 3, 8, 8, 3), np.float32)
    three[0, :, 2, 2:5] = 0.25  # a three-pixel piece, at the threshold, is a shape
    pieces, areas = coherence.foreground_shapes(three)
    assert (pieces == 1).all() and (areas == 3).all()


def test_long_video_seam_of_clips_advancing_one_frame():
    videos = np.random.default_rng(2).uniform(0, 1, (1, 20, 4, 4, 3)).astype(np.float32)
    assert coherence.long_video_seam(videos, 16, 15) == pytest.approx(
        coherence.seam_ratio(videos, range(15, 19)))


def _moving_square(num_frames: int, step: int, colour) -> np.ndarray:
    """One clip ``(frames, 16, 16, 3)``: a 3x3 square moving ``step`` pixels a frame."""
    clip = np.zeros((num_frames, 16, 16, 3), np.float32)
    for i in range(num_frames):
        clip[i, 6:9, 1 + step * i : 4 + step * i] = colour
    return clip


def test_spreads_vanish_for_a_set_of_identical_clips():
    videos = np.stack([_moving_square(6, 2, (0.9, 0.0, 0.0))] * 8)
    metrics = coherence.coherence_metrics(videos, digits=True)
    for name in ("key_frame_seam", "flicker", "colour_deviation", "colour_spread",
                 "palette_coverage", "jerk", "worst_jerk"):
        assert metrics[f"{name}_bootstrap_std"] == pytest.approx(0.0, abs=1e-12), name


def test_spreads_are_the_sampling_spread_of_the_clips():
    """Half the clips smooth, half with one jump: the jerk's spread is that of a mean of
    two-valued clips, sd / sqrt(n); half red and half blue: resampled sets cover 1 or 2 colours."""
    smooth = _moving_square(6, 1, (0.9, 0.0, 0.0))
    jumpy = _moving_square(6, 1, (0.0, 0.0, 0.9))
    jumpy[3] = np.roll(jumpy[3], 4, axis=1)  # frame 3 jumps 4 pixels right
    videos = np.stack([smooth, jumpy] * 20)  # 40 clips
    metrics = coherence.coherence_metrics(videos, digits=True)
    _, jerk, _ = coherence.motion_statistics(videos)
    expected = jerk.std() / np.sqrt(len(jerk))
    assert jerk.std() > 0
    assert metrics["jerk_bootstrap_std"] == pytest.approx(expected, rel=0.3)
    # the jump is at the key frame (3 of 6) and moves the low-frequency appearance
    assert metrics["key_frame_seam_bootstrap_std"] > 0 and metrics["flicker_bootstrap_std"] > 0
    assert metrics["palette_coverage"] == 2
    # a resample misses one colour with probability 2 * 0.5**40: spread about 0
    assert metrics["palette_coverage_bootstrap_std"] < 1e-3
    two = coherence.coherence_metrics(videos[:2], digits=True)
    # 2 clips: 1 colour in half of the resamples, 2 in the other half
    assert two["palette_coverage_bootstrap_std"] == pytest.approx(0.5, abs=0.1)
