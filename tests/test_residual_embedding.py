"""The residual generator's conditioning (spec §2: timestep, frame index i, class or text),
replayed from its sub-modules with independent arithmetic, and its input checks."""

import math

import pytest
import torch
from conftest import tiny_residual


def sinusoid(positions, dim):
    half = dim // 2
    out = torch.zeros(len(positions), dim)
    for n, p in enumerate(positions):
        for j in range(half):
            angle = float(p) * math.exp(-math.log(10000.0) * j / half)
            out[n, j], out[n, half + j] = math.cos(angle), math.sin(angle)
    return out


@pytest.fixture
def model():
    torch.manual_seed(3)
    net = tiny_residual(num_classes=10, cross_attention_dim=6)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)  # nothing zero-initialised: every path shows
    return net.eval()


def reference(model, timestep, frames, labels, text, frame_index=None):
    b = len(labels)
    steps = timestep.expand(b) if timestep.numel() == 1 else timestep
    frame_index = torch.arange(frames) if frame_index is None else frame_index
    clip = (model.time_embedding(sinusoid(steps, 8)) + model.class_embedding(labels)
            + model.text_embedding(text.mean(dim=1)))  # (B, D)
    frame = model.frame_embedding(sinusoid(frame_index, 8))  # (F, D)
    return (clip[:, None] + frame[None]).reshape(b * frames, -1)


@pytest.mark.parametrize("timestep", [torch.tensor([17, 900]), torch.tensor(250)])
def test_embedding_is_time_plus_condition_per_clip_plus_frame_index_per_frame(model, timestep):
    sample = torch.zeros(2, 3, 5, 8, 8)
    labels = torch.tensor([3, 10])
    text = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model._embedding(sample, timestep, None, labels, text)
        torch.testing.assert_close(got, reference(model, timestep, 5, labels, text),
                                   atol=1e-5, rtol=1e-5)
        shifted = torch.tensor([4, 3, 2, 1, 0])
        got = model._embedding(sample, timestep, shifted, labels, text)
        torch.testing.assert_close(got, reference(model, timestep, 5, labels, text, shifted),
                                   atol=1e-5, rtol=1e-5)


def test_conditioned_model_refuses_a_missing_condition(model):
    sample = torch.zeros(1, 3, 4, 8, 8)
    with pytest.raises(ValueError, match="^this model is class-conditioned: pass class_labels$"):
        model(sample, torch.tensor([1]), encoder_hidden_states=torch.zeros(1, 2, 6))
    text_missing = "^this model is text-conditioned: pass encoder_hidden_states$"
    with pytest.raises(ValueError, match=text_missing):
        model(sample, torch.tensor([1]), class_labels=torch.tensor([0]))


def test_input_checks_name_the_problem(model):
    cond = {"class_labels": torch.tensor([0]), "encoder_hidden_states": torch.zeros(1, 2, 6)}
    with pytest.raises(ValueError, match=r"sample must be \(batch, channels, frames, height"):
        model(torch.zeros(1, 3, 8, 8), torch.tensor([1]), **cond)
    with pytest.raises(ValueError, match="sample has 4 channels, the model takes 3"):
        model(torch.zeros(1, 4, 4, 8, 8), torch.tensor([1]), **cond)
    with pytest.raises(ValueError, match="resolution 5x8 is not divisible by 2"):
        model(torch.zeros(1, 3, 4, 5, 8), torch.tensor([1]), **cond)
    with pytest.raises(ValueError, match="resolution 8x5 is not divisible by 2"):
        model(torch.zeros(1, 3, 4, 8, 5), torch.tensor([1]), **cond)


def randomised(**kwargs):
    from videofusion import SpaceTimeUNet

    torch.manual_seed(5)
    net = SpaceTimeUNet(in_channels=3, out_channels=3, block_out_channels=(8, 16),
                        attention_heads=2, norm_num_groups=4, **kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    return net.eval()


def frame_influence(net, frames=8):
    """Per output frame: how much it moves when only input frame 0 changes."""
    x = torch.randn(1, 3, frames, 8, 8, generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[:, :, 0] += 1.0
    with torch.no_grad():
        diff = (net(x, torch.tensor([10])) - net(y, torch.tensor([10]))).abs()
    return diff.amax(dim=(0, 1, 3, 4))  # (frames,)


def test_frames_mix_only_through_the_temporal_layers_the_config_asks_for():
    flat = {"spatial_attention": (False, False)}
    none = frame_influence(randomised(temporal_attention=(False, False), temporal_conv=False,
                                      **flat))
    assert none[0] > 0 and none[1:].max() == 0  # no temporal layer: frames stay apart
    conv = frame_influence(randomised(temporal_attention=(False, False), **flat))
    assert conv[1] > 1e-3  # the temporal convolution reaches the next frame
    attention = frame_influence(randomised(temporal_attention=(True, True),
                                           temporal_conv=False, **flat))
    assert attention[-1] > 1e-3  # attention reaches the farthest frame


def test_spatial_attention_only_where_asked():
    from videofusion.models.residual import SpaceTimeUNet

    net = SpaceTimeUNet(block_out_channels=(8, 16), spatial_attention=(False, False),
                        temporal_attention=(False, False), temporal_conv=False,
                        norm_num_groups=4, attention_heads=2)
    names = [type(m).__name__ for m in net.modules()]
    assert not any("Attention" in n for n in names)


def test_gradient_checkpointing_keeps_the_text_condition():
    net = randomised(spatial_attention=(False, True), cross_attention_dim=6).train()
    x = torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    text = torch.randn(1, 2, 6, generator=torch.Generator().manual_seed(2))
    plain = net(x, torch.tensor([5]), encoder_hidden_states=text)
    net.enable_gradient_checkpointing()
    checkpointed = net(x, torch.tensor([5]), encoder_hidden_states=text)
    torch.testing.assert_close(checkpointed, plain)
