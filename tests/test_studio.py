"""The studio's logic without a browser: the decomposition, the input checks, the seed locks
on the shipped model (tests/test_studio_browser.py drives the page itself)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from videofusion import studio
from videofusion.decomposition import decompose
from videofusion.studio import Request, Studio, shipped_models

SHIPPED_MODELS = shipped_models()
MODEL = next(iter(SHIPPED_MODELS))


def test_decomposition_of_a_still_clip_is_the_formula_and_no_difference():
    frame = np.random.default_rng(0).random((4, 4, 3))
    lam = 0.5
    parts = decompose(np.stack([frame] * 5), [lam, lam, 1.0, lam, lam])
    assert parts.key_index == 2
    np.testing.assert_array_equal(parts.key_frame, frame)
    assert parts.base_share[2] == 1.0
    # x = x^k: base part sqrt(lam) x^k, residual part (1 - sqrt(lam)) x^k
    expected = lam / (lam + (1 - np.sqrt(lam)) ** 2)
    np.testing.assert_allclose(parts.base_share[[0, 1, 3, 4]], expected)
    np.testing.assert_array_equal(parts.difference, 0)
    assert parts.rows()[2] == [2, 1.0, 1.0, 0.0, 0.0]


def test_decomposition_measures_change_from_the_key_frame():
    video = np.zeros((3, 2, 2, 1))
    video[0] = 1.0
    parts = decompose(video, [0.5, 1.0, 0.5])
    np.testing.assert_allclose(parts.difference, [1.0, 0.0, 0.0])
    assert parts.difference_maps.shape == video.shape
    with pytest.raises(ValueError, match="one lambda per frame"):
        decompose(video, [0.5, 1.0])


def test_the_progress_bar_moves_at_most_every_interval_but_shows_first_and_last():
    now = [0.0]
    seen = []
    update = studio.at_most_every(0.5, lambda *call: seen.append(call), clock=lambda: now[0])
    for step, t in enumerate([0.0, 0.1, 0.2, 0.49, 0.5, 0.6, 1.2, 1.3]):
        now[0] = t
        update(step, 8, "steps")
    now[0] = 1.31
    update(8, 8, "steps")  # the last one, however soon
    assert seen == [(0, 8, "steps"), (4, 8, "steps"), (6, 8, "steps"), (8, 8, "steps")]


@pytest.mark.parametrize("field, value, message", [
    ("frames", 1, "frames must lie in"),
    ("frames", 8.5, "frames must be a whole number"),
    ("steps", 0, "steps must lie in"),
    ("guidance", float("nan"), "guidance must lie in"),
    ("lambda_", 1.5, "λ must lie in"),
    ("lambda_", "half", "λ must be a number"),
    ("content_seed", -1, "content seed must lie in"),
    ("motion_seed", "abc", "motion seed must be a number"),
    ("long_frames", 8, "long-video length must be 0"),
    ("sampler", "magic", "sampler must be one of"),
])
def test_out_of_range_input_is_one_line(field, value, message):
    request = Request(MODEL, frames=16, **{field: value}) if field != "frames" else Request(
        MODEL, frames=value)
    with pytest.raises(ValueError, match=message):
        request.check(SHIPPED_MODELS)


def test_empty_guidance_and_lambda_are_the_models_own():
    request = Request(MODEL, guidance="", lambda_=" ").check(SHIPPED_MODELS)
    assert (request.guidance, request.lambda_) == (None, None)
    request = Request(MODEL, guidance="3", lambda_="0.25").check(SHIPPED_MODELS)
    assert (request.guidance, request.lambda_) == (3.0, 0.25)


def test_uploads_that_are_not_images_or_too_large_are_refused(tmp_path, monkeypatch):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    with pytest.raises(ValueError, match="not an image"):
        Request(MODEL, image=str(text)).check(SHIPPED_MODELS)
    monkeypatch.setattr(studio, "MAX_UPLOAD_BYTES", 8)
    with pytest.raises(ValueError, match="the limit is"):
        Request(MODEL, image=str(text)).check(SHIPPED_MODELS)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    return Studio(SHIPPED_MODELS, tmp_path_factory.mktemp("studio"))


@pytest.mark.parametrize("sampler", ["model's own", "ddim"])
@pytest.mark.parametrize("corrected", [False, True])
def test_locked_content_keeps_the_key_frame(shipped, sampler, corrected, one_thread):
    """DDPM (the shipped model's own) renews noise every step; its base part follows the fixed
    base noise (noise.FreshNoise), so without the key-frame correction the key frame depends on
    the content seed alone, bitwise. With it (spec §7) the residual generator, which sees the
    motion noise, corrects the key frame too: it still changes less than the clip does."""
    from PIL import Image

    pipe = shipped.pipeline(MODEL)
    pipe.register_to_config(key_frame_correction=corrected)
    try:
        runs = [shipped.generate(Request(MODEL, class_label="3", frames=6, steps=3,
                                         sampler=sampler, content_seed=5, motion_seed=m))
                for m in (1, 2)]
    finally:
        pipe.register_to_config(key_frame_correction=True)
    assert all(r.video is not None for r in runs), [r.message for r in runs]
    keys = [np.array(Image.open(r.key_frame)).astype(int) for r in runs]
    sheets = [np.array(Image.open(r.sheet)).astype(int) for r in runs]
    clip_change = np.abs(sheets[0] - sheets[1]).mean()
    assert clip_change > 0  # the other frames moved differently
    if corrected:
        assert 0 < np.abs(keys[0] - keys[1]).mean() < clip_change
    else:
        np.testing.assert_array_equal(keys[0], keys[1])
    assert runs[0].table[3][2] == 1.0  # frame 6 // 2 is all base



def test_generations_run_on_one_sampling_thread_in_the_callers_context(shipped, one_thread):
    """Every request's sampling runs on the studio's one worker thread, whichever thread asked
    (Gradio's worker threads change; torch's OpenMP pool is per thread), one at a time, and
    sees the asking request's context (Gradio's progress bar is found through it)."""
    import contextvars
    import threading

    request_id = contextvars.ContextVar("request_id")
    seen = []

    def ask(n):
        request_id.set(n)
        result = shipped.generate(
            Request(MODEL, class_label="3", frames=2, steps=2),
            lambda done, total, what: seen.append((threading.current_thread().name,
                                                   request_id.get(None))),
            keep=False)
        assert result.video is None and result.message.startswith("Generated"), result.message

    ask(0)
    for n in (1, 2):
        thread = threading.Thread(target=ask, args=(n,))
        thread.start()
        thread.join()
    names = {name for name, _ in seen}
    assert len(names) == 1 and names != {threading.current_thread().name}
    assert sorted({n for _, n in seen}) == [0, 1, 2]

def test_generate_reports_bad_input_and_keeps_serving(shipped, tmp_path, one_thread):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG but not really")
    result = shipped.generate(Request(MODEL, class_label="3", frames=6, steps=2,
                                      image=str(bad)))
    assert result.video is None and result.message.startswith("Error: ")
    assert "\n" not in result.message
    result = shipped.generate(Request(MODEL, class_label="none", prompt="a blue digit 0",
                                      frames=6, steps=2, long_frames=10))
    assert result.video is not None, result.message
    from videofusion.video_io import read_video

    assert read_video(result.video).shape[0] == 10
    good = tmp_path / "key.png"  # image-to-video: the shipped model's reconstruction guidance
    Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8)).save(good)
    result = shipped.generate(Request(MODEL, class_label="3", frames=6, steps=2,
                                      image=str(good)), keep=False)
    assert "reconstruction guidance 40" in result.message, result.message
    assert "colour anchoring 1)" in result.message, result.message  # the folder's default


def test_studio_parser_defaults_to_loopback():
    import argparse

    parser = argparse.ArgumentParser()
    studio.add_studio_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["studio"])
    assert (args.host, args.share, args.model_dir) == ("127.0.0.1", False, [])
    assert args.handler is studio.run_studio


def test_the_studios_seeds_are_the_command_lines(shipped, tmp_path, one_thread):
    """Content seed S and motion seed R draw what `videofusion sample --base-seed S
    --residual-seed R` draws (noise.seeded_draw) for one video: the same video."""
    import torch
    from PIL import Image

    from videofusion.video_io import contact_sheet

    result = shipped.generate(Request(MODEL, "3", frames=4, steps=2, content_seed=5,
                                      motion_seed=7))
    pipe = shipped.pipeline(MODEL)
    draw = [torch.randn((1, *shape), generator=torch.Generator().manual_seed(seed))
            for shape, seed in (((3, 32, 32), 5), ((3, 4, 32, 32), 7))]
    frames = pipe(class_labels=[3], num_frames=4, num_inference_steps=2,
                  guidance_scale=pipe.default_guidance, base_noise=draw[0],
                  residual_noise=draw[1], progress=False).frames
    expected = np.array(Image.open(contact_sheet(frames, tmp_path / "sheet.png", scale=2)))
    np.testing.assert_array_equal(np.array(Image.open(result.sheet)), expected)


def test_the_page_offers_the_folders_step_count_and_every_sampler(shipped):
    import json

    from videofusion.choices import SCHEDULERS
    from videofusion.studio import SAMPLERS

    index = json.loads((shipped.models[MODEL] / "model_index.json").read_text())
    assert shipped.defaults(MODEL)["steps"] == index["default_inference_steps"]
    assert set(SAMPLERS) > set(SCHEDULERS)


def test_generate_is_enabled_only_once_the_model_has_run(tmp_path, monkeypatch):
    """A click before the warm-up would wait for the imports and the model behind a bar that
    does not move; the page says "Loading" until the warm-up has run, or failed."""
    pytest.importorskip("gradio")
    local = Studio(SHIPPED_MODELS, tmp_path)
    app = studio.build_app(local)
    button = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "generate")
    assert (button.interactive, button.value) == (False, studio.LOADING)
    (on_load,) = [f.fn for f in app.fns.values() if [t[1] for t in f.targets] == ["load"]]
    assert not local.wait_ready(timeout=0.01)

    def failing(*args, **kwargs):
        raise RuntimeError("no model")

    monkeypatch.setattr(local, "generate", failing)
    with pytest.raises(RuntimeError):
        local.warm_up()
    assert local.wait_ready(timeout=0)  # a failed warm-up enables the button too
    update = on_load()
    assert (update["value"], update["interactive"]) == ("Generate", True)
    local.close()
