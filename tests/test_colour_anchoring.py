"""Key-frame colour anchoring (docs/method.md §7), checked against its definition:
w = (largest rise of a pixel above its channel's median over the frame)^2, c_f = sum w x / sum w,
x <- x + s (w / max w) (c_k - c_f), on pixels in [0, 1] (model space [-1, 1]), at the steps
whose sigma_t = sqrt((1 - abar) / abar) is at most 1."""

import pytest
import torch
from conftest import tiny_base, tiny_residual, tiny_vae
from diffusers import DDPMScheduler

from videofusion.colour_anchoring import (
    anchor_colours,
    anchored_noise,
    check_colour_anchoring,
    foreground_weights,
)
from videofusion.pipeline import VideoFusionPipeline


def pixels_to_model(p):
    return p * 2 - 1


def clip_of_squares(colours, background=(0.0, 0.0, 0.0)):
    """(1, 3, F, 6, 6) in [0, 1]: a 2 x 2 square of each frame's colour on a background."""
    x = torch.tensor(background).view(1, 3, 1, 1, 1).expand(1, 3, len(colours), 6, 6).clone()
    x[:, :, :, 2:4, 1:3] = torch.tensor(colours).T[None, :, :, None, None]
    return x


def test_a_uniform_square_takes_the_key_frames_colour():
    colours = [(1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 1, 1)]  # key frame: blue
    x = pixels_to_model(clip_of_squares(colours))
    out = (anchor_colours(x, 1.0) + 1) / 2
    assert torch.allclose(out, clip_of_squares([(0, 0, 1)] * 5), atol=1e-6)
    half = (anchor_colours(x, 0.5) + 1) / 2
    expected = [tuple((a + b) / 2 for a, b in zip(c, (0, 0, 1), strict=True)) for c in colours]
    assert torch.allclose(half, clip_of_squares(expected), atol=1e-6)


def test_the_weights_are_the_squared_rise_above_the_background():
    x = clip_of_squares([(0.2, 0.9, 0.5)], background=(0.2, 0.1, 0.5))
    w = foreground_weights(x)
    assert w.shape == (1, 1, 1, 6, 6)
    assert torch.allclose(w[0, 0, 0, 2:4, 1:3], torch.full((2, 2), 0.8**2))
    w[0, 0, 0, 2:4, 1:3] = 0
    assert w.abs().max() < 1e-7


def test_a_dim_pixel_moves_by_its_share_and_the_background_stays():
    # frame colours weighted by w: a bright pixel (w 1) and three at half brightness (w 1/4)
    x = clip_of_squares([(0.0, 0.0, 1.0)] * 3, background=(0.1, 0.1, 0.1))
    x[:, :, 0, 2, 1] = torch.tensor([0.1, 0.1, 1.1])  # frame 0, one pixel brighter (rise 1)
    x[:, :, 0, 2, 2] = x[:, :, 0, 3, 1] = x[:, :, 0, 3, 2] = torch.tensor([0.1, 0.1, 0.6])
    x[:, :, 1, 2:4, 1:3] = torch.tensor([0.6, 0.1, 0.1]).view(3, 1, 1)  # key frame: red
    x = x.clamp(0, 1)  # the brightest pixel clips at 1: rise 0.9, w 0.81
    out = (anchor_colours(pixels_to_model(x), 1.0) + 1) / 2
    w = torch.tensor([0.81, 0.25, 0.25, 0.25])
    frame0 = torch.tensor([[0.1, 0.1, 1.0], [0.1, 0.1, 0.6], [0.1, 0.1, 0.6], [0.1, 0.1, 0.6]])
    colour0 = (w[:, None] * frame0).sum(0) / w.sum()
    shift = torch.tensor([0.6, 0.1, 0.1]) - colour0
    for pixel, (i, j) in enumerate([(2, 1), (2, 2), (3, 1), (3, 2)]):
        expected = (frame0[pixel] + w[pixel] / 0.81 * shift).clamp(0, 1)
        assert torch.allclose(out[0, :, 0, i, j].clamp(0, 1), expected, atol=1e-5)
    assert torch.allclose(out[:, :, 0, 0], x[:, :, 0, 0])  # the background is not moved
    assert torch.allclose(out[:, :, 1], x[:, :, 1], atol=1e-6)  # nor the key frame


def test_the_estimate_is_read_clipped():
    x = pixels_to_model(clip_of_squares([(0, 0, 1)] * 3))
    x[:, :, :2] *= 1.5  # out of range where a clipping scheduler would clip it, key frame too
    assert torch.allclose(anchor_colours(x, 1.0), x.clamp(-1, 1), atol=1e-6)


def test_each_frame_moves_by_its_own_brightest_pixel():
    # a dim frame (its brightest pixel rises 0.5, weight 0.25, the frame's total under 1) moves
    # the whole way, however bright the other frames are
    x = clip_of_squares([(0.5, 0.0, 0.5), (0.0, 0.0, 1.0), (0.0, 0.5, 0.0)])
    x[:, :, 2, 2:4, 2] = 0  # frame 2: a one-pixel-wide stroke, two pixels of weight 0.25
    out = (anchor_colours(pixels_to_model(x), 1.0) + 1) / 2
    blue = torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1)
    assert torch.allclose(out[0, :, 0, 2:4, 1:3], blue.expand(3, 2, 2), atol=1e-6)
    assert torch.allclose(out[0, :, 2, 2:4, 1:2], blue.expand(3, 2, 1), atol=1e-6)
    assert torch.allclose(out[0, :, 2, 2:4, 2], x[0, :, 2, 2:4, 2], atol=1e-6)


def test_anchored_noise_is_the_epsilon_of_the_anchored_estimate():
    x0 = pixels_to_model(clip_of_squares([(1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 0),
                                          (0, 1, 1)]))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    a = torch.tensor([0.6])  # sigma_t = sqrt(0.4 / 0.6) = 0.82: inside the gate
    z = a.sqrt() * x0 + (1 - a).sqrt() * eps
    out = anchored_noise(eps, z, a, 1.0)
    assert torch.allclose((z - (1 - a).sqrt() * out) / a.sqrt(), anchor_colours(x0, 1.0),
                          atol=1e-5)
    same = pixels_to_model(clip_of_squares([(0, 0, 1)] * 5))
    z = a.sqrt() * same + (1 - a).sqrt() * eps
    assert torch.allclose(anchored_noise(eps, z, a, 1.0), eps, atol=1e-5)
    # a batch of two clips at two noise levels: each clip reads its own abar
    x0, eps = torch.cat([x0, x0.flip(2)]), torch.cat([eps, -eps])
    a = torch.tensor([0.6, 0.9])
    z = a.sqrt().view(2, 1, 1, 1, 1) * x0 + (1 - a).sqrt().view(2, 1, 1, 1, 1) * eps
    out = anchored_noise(eps, z, a, 1.0)
    for n in range(2):
        assert torch.allclose((z[n] - (1 - a[n]).sqrt() * out[n]) / a[n].sqrt(),
                              anchor_colours(x0[n:n + 1], 1.0)[0], atol=1e-5)


def test_colours_are_anchored_only_once_the_signal_outweighs_the_noise():
    # sigma_t = sqrt((1 - abar) / abar) <= 1, i.e. abar >= 1/2: a clip just below the gate
    # keeps the networks' epsilon exactly, one just above it is anchored, in the same batch
    x0 = pixels_to_model(clip_of_squares([(1, 0, 1), (0, 1, 0), (0, 0, 1)]))
    x0, eps = torch.cat([x0] * 4), torch.randn(4, *x0.shape[1:],
                                               generator=torch.Generator().manual_seed(1))
    a = torch.tensor([0.2, 0.49, 0.5, 0.51])  # sigma 2, 1.02, exactly 1, 0.98
    z = a.sqrt().view(4, 1, 1, 1, 1) * x0 + (1 - a).sqrt().view(4, 1, 1, 1, 1) * eps
    out = anchored_noise(eps, z, a, 1.0)
    assert torch.equal(out[:2], eps[:2])
    for n in (2, 3):
        moved = (z[n] - (1 - a[n]).sqrt() * out[n]) / a[n].sqrt()
        assert torch.allclose(moved, anchor_colours(x0[n:n + 1], 1.0)[0], atol=1e-5)
        assert not torch.allclose(moved, x0[n], atol=0.1)


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), True, "1"])
def test_a_bad_strength_is_refused(bad):
    with pytest.raises(ValueError, match=r"^colour anchoring must be a finite number >= 0, got"):
        check_colour_anchoring(bad)


def test_latents_have_no_colours_to_anchor():
    check_colour_anchoring(0.0, latent=True)
    with pytest.raises(ValueError, match=r"^colour anchoring moves colours of pixels: this "
                                         r"folder samples VAE latents, which have none$"):
        check_colour_anchoring(1.0, latent=True)


def pipeline(default=None, vae=None, channels=3):
    return VideoFusionPipeline.from_components(
        residual=tiny_residual(channels=channels, num_classes=3),
        base=tiny_base(channels=channels, num_classes=3), scheduler=DDPMScheduler(),
        vae=vae, sample_size=8, default_colour_anchoring=default)


def test_the_folder_records_its_default_for_every_scheduler(tmp_path):
    assert pipeline().plan(class_labels=[1]).colour_anchoring == 0.0
    pipeline(default=1.0).save_pretrained(tmp_path / "m")
    again = VideoFusionPipeline.from_pretrained(tmp_path / "m")
    assert again.plan(class_labels=[1]).colour_anchoring == 1.0
    assert again.plan(class_labels=[1], colour_anchoring=0).colour_anchoring == 0.0
    for name in ("ddim", "dpm_sde", "unipc"):
        assert again.use_scheduler(name).plan(class_labels=[1]).colour_anchoring == 1.0, name
    with pytest.raises(ValueError, match="finite number"):
        again.plan(class_labels=[1], colour_anchoring=float("nan"))


def test_the_pipeline_anchors_only_when_asked():
    pipe = pipeline(default=1.0)

    def run(**kwargs):
        return pipe(class_labels=[1], num_frames=4, num_inference_steps=3, progress=False,
                    generator=torch.Generator().manual_seed(0), **kwargs).frames

    default, off, on = run(), run(colour_anchoring=0.0), run(colour_anchoring=1.0)
    assert (default == on).all()
    assert not (default == off).all()


def test_a_latent_folder_refuses_colour_anchoring():
    pipe = pipeline(vae=tiny_vae(), channels=4)
    assert pipe.plan(class_labels=[1], height=16, width=16).colour_anchoring == 0.0
    with pytest.raises(ValueError, match="latents"):
        pipe.plan(class_labels=[1], height=16, width=16, colour_anchoring=1.0)
