"""Spec §5 long videos: exact length, streaming to mp4, one clip at a time, continuous seams."""

import types

import numpy as np
import pytest
import torch
from conftest import tiny_base, tiny_residual
from diffusers import DDIMScheduler

from videofusion import long_video
from videofusion.long_video import SeamInpainting, num_clips
from videofusion.pipeline import VideoFusionPipeline
from videofusion.video_io import Mp4Writer, read_video

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_pipeline(num_classes=None):
    return VideoFusionPipeline(residual=tiny_residual(num_classes=num_classes),
                               base=tiny_base(num_classes=num_classes),
                               scheduler=DDIMScheduler(), sample_size=8)


def long(pipe, num_frames, clip_frames=4, overlap=1, seed=0, **kwargs):
    kwargs = {"num_inference_steps": 2, "progress": False, **kwargs}
    return pipe.generate_long(num_frames, clip_frames, overlap,
                              generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.parametrize("num_frames,clip_frames,overlap", [(13, 4, 1), (3, 4, 2), (10, 4, 0)])
def test_frame_count_is_exact(num_frames, clip_frames, overlap):
    frames = long(tiny_pipeline(), num_frames, clip_frames, overlap)
    assert frames.shape == (1, num_frames, 8, 8, 3)
    assert 0.0 <= frames.min() and frames.max() <= 1.0


def test_class_conditioned_batch_with_guidance():
    frames = long(tiny_pipeline(num_classes=10), 7, class_labels=[1, 2], guidance_scale=2.0)
    assert frames.shape == (2, 7, 8, 8, 3)


def test_streams_a_decodable_mp4_clip_by_clip(tmp_path, monkeypatch):
    events = []
    sample, write = VideoFusionPipeline.denoise, Mp4Writer.write
    release = long_video.release_freed_memory
    monkeypatch.setattr(VideoFusionPipeline, "denoise",
                        lambda *a, **k: events.append("sample") or sample(*a, **k))
    monkeypatch.setattr(Mp4Writer, "write",
                        lambda self, frames: events.append(len(frames)) or write(self, frames))
    monkeypatch.setattr(long_video, "release_freed_memory",
                        lambda: events.append("release") or release())
    path = long(tiny_pipeline(), 11, out_path=tmp_path / "long.mp4")
    assert read_video(path).shape[0] == 11
    # every clip is written before the next one is sampled: 4 frames, then 3 new per clip;
    # the heap's free memory is handed back after each clip's sampling
    assert events == ["sample", "release", 4, "sample", "release", 3, "sample", "release", 3,
                      "sample", "release", 1]


def test_sampler_never_holds_more_than_one_clip(monkeypatch):
    pipe = tiny_pipeline()
    frames_seen, handed_on, trajectories = [], [], []
    pipe.residual.register_forward_pre_hook(lambda m, args: frames_seen.append(args[0].shape[2]))
    init = SeamInpainting.__init__

    def spy(self, known, record):
        init(self, known, record)
        handed_on.append(None if known is None else [z.shape[2] for z in known])
        trajectories.append(self.trajectory)

    monkeypatch.setattr(SeamInpainting, "__init__", spy)
    long(pipe, 40, clip_frames=6, overlap=2, num_inference_steps=3)
    assert max(frames_seen) == 6 and len(frames_seen) == 3 * num_clips(40, 6, 2)
    # what a clip hands on is the trajectory of its last `overlap` frames: one per step
    assert handed_on[0] is None and handed_on[1:] == [[2, 2, 2]] * (len(handed_on) - 1)
    # and the next clip lets go of each step's frames once pinned; the last clip records none
    assert all(entry is None for trajectory in trajectories[:-1] for entry in trajectory)
    assert trajectories[-1] == []


def test_clips_share_the_base_noise():
    """With lambda = 1 on the key frame and DDIM (eta = 0), every clip's key frame is the same
    image: the shared base noise fixes the content (spec §5)."""
    frames = long(tiny_pipeline(), 12, clip_frames=4, overlap=0)[0]
    np.testing.assert_allclose(frames[2], frames[6], atol=1e-6)
    np.testing.assert_allclose(frames[2], frames[10], atol=1e-6)
    assert np.abs(frames[1] - frames[5]).mean() > 1e-3  # the residual noise does change


def smoothing_pipeline():
    """A baseline pipeline whose 'network' estimates each clean frame as its noisy frame averaged
    with its neighbours: a model with temporal coherence, so seams between clips can jump."""
    scheduler = DDIMScheduler()
    residual = tiny_residual()

    def forward(self, sample, timestep, frame_index=None, class_labels=None,
                encoder_hidden_states=None):
        a = scheduler.alphas_cumprod[int(torch.as_tensor(timestep).flatten()[0])]
        padded = torch.cat([sample[:, :, :1], sample, sample[:, :, -1:]], dim=2)
        smooth = 0.25 * padded[:, :, :-2] + 0.5 * padded[:, :, 1:-1] + 0.25 * padded[:, :, 2:]
        return (sample - smooth) / (1 - a).sqrt()

    residual.forward = types.MethodType(forward, residual)
    return VideoFusionPipeline(residual=residual, scheduler=scheduler, sample_size=8)


def seam_jump(overlap, clip_frames=8, num_frames=32):
    frames = long(smoothing_pipeline(), num_frames, clip_frames, overlap,
                  num_inference_steps=10)[0]
    steps = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
    seams = list(range(clip_frames - 1, num_frames - 1, clip_frames - overlap))
    return steps[seams].mean(), np.delete(steps, seams).mean()


def test_pinned_overlap_makes_seams_continuous():
    independent, inside = seam_jump(overlap=0)
    pinned, _ = seam_jump(overlap=2)
    assert independent > 2 * inside  # without seam handling the video jumps between clips
    assert pinned < 0.65 * independent


@pytest.mark.parametrize("kwargs,match", [
    ({"overlap": 3}, "overlap"),
    ({"num_frames": 1}, "num_frames"),
    ({"clip_frames": 1, "overlap": 0}, "clip_frames"),
    ({"num_videos": 2, "out_path": "x.mp4"}, "one video"),
])
def test_bad_arguments_give_one_clear_error(kwargs, match, tmp_path):
    if "out_path" in kwargs:
        kwargs["out_path"] = tmp_path / kwargs["out_path"]
    kwargs = {"num_frames": 8, "clip_frames": 4, "overlap": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        long(tiny_pipeline(), **kwargs)
    assert not list(tmp_path.iterdir())


def test_peak_memory_does_not_grow_with_the_number_of_clips(tmp_path):
    """The tensor allocation peak (deterministic, unlike RSS) of a streamed long video is that of
    its first clips: 8 clips peak less than one latent frame above 2 clips. An earlier clip's
    latents or decoded frames still referenced, or the previous trajectory kept whole next to
    the new one, would each add at least a clip's overlap frames."""
    from videofusion.bench import tensor_allocation_peak_mb

    pipe = VideoFusionPipeline(residual=tiny_residual(), base=tiny_base(),
                               scheduler=DDIMScheduler(), sample_size=16)
    clip_frames, overlap, steps = 4, 2, 4

    def peak(clips):
        num_frames = clip_frames + (clips - 1) * (clip_frames - overlap)
        assert num_clips(num_frames, clip_frames, overlap) == clips
        return tensor_allocation_peak_mb(lambda: long(
            pipe, num_frames, clip_frames, overlap, num_inference_steps=steps,
            out_path=tmp_path / f"{clips}.mp4")) * 2**20

    long(pipe, 8, clip_frames, overlap, num_inference_steps=steps)  # warm-up
    two, eight = peak(2), peak(8)
    frame = 3 * 16 * 16 * 4  # one latent frame, float32
    trajectory = steps * overlap * frame  # what a clip hands on to the next
    assert two > 10 * trajectory  # the clip's own working memory dominates
    assert eight - two < frame, (two, eight)


def test_mp4_writer_encodes_within_a_clip(tmp_path):
    """x264's default 40-frame look-ahead would hold (and buffer) 40 frames before the first
    packet leaves; the writer's look-ahead keeps the encoder's queue within one 16-frame clip."""
    from videofusion.video_io import RC_LOOKAHEAD

    class Counting:
        def __init__(self, container):
            self.container, self.packets = container, 0

        def mux(self, packet):
            self.packets += 1
            self.container.mux(packet)

        def __getattr__(self, name):
            return getattr(self.container, name)

    writer = Mp4Writer(tmp_path / "x.mp4")
    writer._container = counting = Counting(writer._container)
    rng = np.random.default_rng(0)
    written = []
    for _ in range(16):
        writer.write(rng.random((1, 32, 32, 3)))
        written.append(counting.packets)
    writer.close()
    assert RC_LOOKAHEAD < 16
    assert written[-1] > 0, written  # packets left before the clip's last frame went in
    assert read_video(tmp_path / "x.mp4").shape[0] == 16
