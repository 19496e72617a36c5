"""The temporal layers of the residual generator (spec §2: "temporal layers mix frames") with
non-zero weights, against reference implementations written from their definitions.

They start zero-initialised (an identity), so every other test sees them as no-ops; here all
their weights are random.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_residual

from videofusion.models import blocks
from videofusion.models.blocks import (
    TemporalAttention,
    TemporalConv,
    fold_frames,
    sinusoidal_embedding,
    unfold_frames,
)

B, C, FRAMES, H, W = 2, 8, 5, 3, 4
GROUPS, HEADS = 4, 2


def randomised(module, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.4)
    return module


def video(seed=1):
    return torch.randn(B, C, FRAMES, H, W, generator=torch.Generator().manual_seed(seed))


def run(layer, v):
    """The layer on a video ``(B, C, F, H, W)``, through the folded layout it works in."""
    return unfold_frames(layer(fold_frames(v), v.shape[2]), v.shape[2])


def norm_per_frame(norm, v):
    return torch.stack([F.group_norm(v[:, :, f], norm.num_groups, norm.weight, norm.bias,
                                     norm.eps) for f in range(v.shape[2])], dim=2)


def reference_conv(layer, v):
    """x + bias + sum_d W[:, :, d] a[i + d - 1] over d = 0, 1, 2 (zero beyond the clip),
    a = silu(group_norm(frame))."""
    a = F.silu(norm_per_frame(layer.norm, v))
    weight, bias = layer.conv.weight[:, :, :, 0, 0], layer.conv.bias  # (C, C, 3), (C,)
    out = []
    for i in range(v.shape[2]):
        h = bias.view(1, -1, 1, 1).expand(v.shape[0], -1, v.shape[3], v.shape[4])
        for d in range(3):
            j = i + d - 1
            if 0 <= j < v.shape[2]:
                h = h + torch.einsum("oc,bchw->bohw", weight[:, :, d], a[:, :, j])
        out.append(v[:, :, i] + h)
    return torch.stack(out, dim=2)


def position_encoding(frames, dim):
    """[cos(f w_0), ..., cos(f w_{h-1}), sin(f w_0), ...], w_j = 10000^(-j / h), h = dim / 2."""
    half = dim // 2
    return torch.tensor([[math.cos(f * 10000 ** (-j / half)) for j in range(half)]
                         + [math.sin(f * 10000 ** (-j / half)) for j in range(half)]
                         for f in range(frames)])


def reference_attention(layer, v, positions=True):
    """x + to_out(multi-head softmax attention over the frames of each pixel)."""
    a = norm_per_frame(layer.norm, v)  # (B, C, F, H, W)
    if positions:
        a = a + position_encoding(v.shape[2], v.shape[1]).T.reshape(1, C, -1, 1, 1)
    attn = layer.attn
    out = torch.empty_like(v)
    dh = C // attn.heads
    for b in range(v.shape[0]):
        for y in range(v.shape[3]):
            for x in range(v.shape[4]):
                tokens = a[b, :, :, y, x].T  # (F, C)
                q = tokens @ attn.to_q.weight.T
                k, val = (tokens @ attn.to_kv.weight.T).chunk(2, dim=-1)
                heads = []
                for h in range(attn.heads):
                    s = slice(h * dh, (h + 1) * dh)
                    weights = torch.softmax(q[:, s] @ k[:, s].T / math.sqrt(dh), dim=-1)
                    heads.append(weights @ val[:, s])
                mixed = torch.cat(heads, dim=-1) @ attn.to_out.weight.T + attn.to_out.bias
                out[b, :, :, y, x] = v[b, :, :, y, x] + mixed.T
    return out


def test_temporal_conv_matches_its_definition():
    layer = randomised(TemporalConv(C, GROUPS))
    v = video()
    with torch.no_grad():
        torch.testing.assert_close(run(layer, v), reference_conv(layer, v), rtol=1e-4, atol=1e-5)


def test_temporal_attention_matches_its_definition():
    layer = randomised(TemporalAttention(C, HEADS, GROUPS))
    v = video()
    with torch.no_grad():
        torch.testing.assert_close(run(layer, v), reference_attention(layer, v),
                                   rtol=1e-4, atol=1e-5)


def test_sinusoidal_embedding_is_the_transformer_encoding():
    torch.testing.assert_close(sinusoidal_embedding(torch.arange(7), 10),
                               position_encoding(7, 10).float(), rtol=1e-5, atol=1e-5)
    odd = sinusoidal_embedding(torch.arange(3), 5)  # an odd width is zero-padded
    assert odd.shape == (3, 5) and torch.equal(odd[:, -1], torch.zeros(3))


def changed_frames(layer, frame):
    """Which output frames move when only input frame ``frame`` changes."""
    v = video()
    w = v.clone()
    w[:, :, frame] += torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        diff = (run(layer, v) - run(layer, w)).abs().amax(dim=(0, 1, 3, 4))
    return [f for f in range(FRAMES) if diff[f] > 1e-6]


def test_conv_mixes_neighbouring_frames_only_and_attention_mixes_all():
    conv = randomised(TemporalConv(C, GROUPS))
    attention = randomised(TemporalAttention(C, HEADS, GROUPS))
    assert changed_frames(conv, 0) == [0, 1]
    assert changed_frames(conv, 2) == [1, 2, 3]
    assert changed_frames(attention, 4) == list(range(FRAMES))
    assert changed_frames(attention, 0) == list(range(FRAMES))


def test_attention_runs_across_frames_of_one_pixel_not_within_a_frame():
    layer = randomised(TemporalAttention(C, HEADS, GROUPS))
    layer.norm = torch.nn.Identity()  # the group norm mixes the pixels of a frame; drop it
    v = video()
    w = v.clone()
    w[:, :, 4, 1, 2] += 3.0  # one pixel of the last frame
    with torch.no_grad():
        diff = (run(layer, v) - run(layer, w)).abs().amax(dim=(0, 1))  # (F, H, W)
    moved = diff > 1e-6
    assert moved[:, 1, 2].all()  # that pixel in every frame
    moved[:, 1, 2] = False
    assert not moved.any()  # no other pixel


def test_reversing_the_frames_of_the_conv_is_the_conv_with_a_reversed_kernel():
    layer = randomised(TemporalConv(C, GROUPS))
    flipped = TemporalConv(C, GROUPS)
    flipped.load_state_dict(layer.state_dict())
    with torch.no_grad():
        flipped.conv.weight.copy_(layer.conv.weight.flip(2))
        v = video()
        reversed_out = run(layer, v.flip(2))
        torch.testing.assert_close(reversed_out, run(flipped, v).flip(2), rtol=1e-5, atol=1e-6)
        assert (reversed_out - run(layer, v).flip(2)).abs().max() > 1e-2  # not symmetric


def test_attention_is_order_aware_only_through_its_frame_positions(monkeypatch):
    layer = randomised(TemporalAttention(C, HEADS, GROUPS))
    v = video()
    with torch.no_grad():
        # with positions, reversing the frames is not just reversing the output
        assert (run(layer, v.flip(2)) - run(layer, v).flip(2)).abs().max() > 1e-2
        monkeypatch.setattr(blocks, "sinusoidal_embedding",
                            lambda positions, dim: torch.zeros(len(positions), dim))
        # without them, attention over a set of frames is permutation-equivariant
        torch.testing.assert_close(run(layer, v.flip(2)), run(layer, v).flip(2),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(run(layer, v), reference_attention(layer, v, positions=False),
                                   rtol=1e-4, atol=1e-5)


def space_time_unet(randomise=True):
    model = tiny_residual(channels=2)
    if randomise:  # the zero-initialised temporal layers too
        torch.manual_seed(4)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".tconv." in name or ".tattn." in name:
                    p.normal_(0.0, 0.2)
    return model


def test_the_frame_index_embedding_changes_the_output():
    model = space_time_unet(randomise=False)  # temporal layers off: frames are separate
    still = torch.randn(1, 2, 1, 8, 8, generator=torch.Generator().manual_seed(0)).expand(
        1, 2, 4, 8, 8).contiguous()  # four identical frames
    t = torch.tensor([300])
    with torch.no_grad():
        out = model(still, t)
        torch.testing.assert_close(model(still, t, frame_index=torch.arange(4)), out)
        shifted = model(still, t, frame_index=torch.arange(4) + 3)
        # identical frames, different outputs: only the frame index tells them apart
        assert (out[:, :, 0] - out[:, :, 1]).abs().max() > 1e-4
        torch.testing.assert_close(shifted[:, :, 0], model(still, t, frame_index=torch.full(
            (4,), 3))[:, :, 0])
        assert (shifted - out).abs().max() > 1e-4
        # a frame's output follows its index, not its position in the clip
        swapped = model(still, t, frame_index=torch.tensor([1, 0, 2, 3]))
        torch.testing.assert_close(swapped[:, :, 0], out[:, :, 1])
        model.frame_embedding[2].weight.zero_()
        model.frame_embedding[2].bias.zero_()
        flat = model(still, t)
        torch.testing.assert_close(flat[:, :, 0], flat[:, :, 1])


def test_the_space_time_unet_mixes_frames_once_temporal_weights_are_non_zero():
    v = torch.randn(1, 2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    w = v.clone()
    w[:, :, 3] += 1.0
    t = torch.tensor([300])
    with torch.no_grad():
        for model, mixes in ((space_time_unet(False), False), (space_time_unet(True), True)):
            diff = (model(v, t) - model(w, t))[:, :, 0].abs().max()
            assert (diff > 1e-4) == mixes


def test_gradient_checkpointing_gives_the_same_gradients():
    v = torch.randn(2, 2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 700])
    grads = []
    for checkpointing in (False, True):
        model = space_time_unet()
        if checkpointing:
            model.enable_gradient_checkpointing()
        model.train()
        model(v, t).pow(2).mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7,
                                   msg=name)
    assert grads[0]["down.0.tattn.attn.to_q.weight"].abs().max() > 0


@pytest.mark.parametrize("frames", [2, 3])
def test_short_clips_keep_their_shape_and_mix(frames):
    layer = randomised(TemporalConv(C, GROUPS))
    v = torch.randn(1, C, frames, H, W)
    with torch.no_grad():
        torch.testing.assert_close(run(layer, v), reference_conv(layer, v), rtol=1e-4, atol=1e-5)


# ---- the per-frame blocks around them (found by mutation survivors) ------------------------


def mha(attn, queries, keys):
    """Multi-head softmax attention of ``queries`` (n, C) over ``keys`` (m, D), written out."""
    q = queries @ attn.to_q.weight.T
    k, val = (keys @ attn.to_kv.weight.T).chunk(2, dim=-1)
    dh = q.shape[1] // attn.heads
    heads = []
    for h in range(attn.heads):
        s = slice(h * dh, (h + 1) * dh)
        heads.append(torch.softmax(q[:, s] @ k[:, s].T / math.sqrt(dh), dim=-1) @ val[:, s])
    return torch.cat(heads, dim=-1) @ attn.to_out.weight.T + attn.to_out.bias


def test_spatial_attention_with_text_matches_its_definition():
    """Self-attention over the pixels of each frame, then cross-attention of each frame to its
    own clip's text states."""
    from videofusion.models.blocks import SpatialAttention

    layer = randomised(SpatialAttention(C, HEADS, GROUPS, context_dim=6))
    v = video()
    context = torch.randn(B, 3, 6, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = unfold_frames(layer(fold_frames(v), context), FRAMES)
        a = norm_per_frame(layer.norm, v)
        expected = torch.empty_like(v)
        for b in range(B):
            for f in range(FRAMES):
                tokens = a[b, :, f].reshape(C, -1).T  # (H*W, C)
                delta = mha(layer.attn, tokens, tokens)
                delta = delta + mha(layer.cross, layer.cross_norm(tokens + delta), context[b])
                expected[b, :, f] = v[b, :, f] + delta.T.reshape(C, H, W)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"^this model is text-conditioned: pass "
                                         r"encoder_hidden_states$"):
        layer(fold_frames(v))


@pytest.mark.parametrize("c_out", [C, 12])
def test_res_block_matches_its_definition(c_out):
    """h = conv1(silu(norm1(x))) + proj(silu(emb)); out = conv2(silu(norm2(h))) + skip(x), the
    skip an identity when the widths match."""
    from videofusion.models.blocks import ResBlock

    block = randomised(ResBlock(C, c_out, 16, GROUPS)).eval()
    x = fold_frames(video())
    emb = torch.randn(x.shape[0], 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        h = F.conv2d(F.silu(F.group_norm(x, GROUPS, block.norm1.weight, block.norm1.bias,
                                         1e-6)), block.conv1.weight, block.conv1.bias, padding=1)
        h = h + (F.silu(emb) @ block.emb_proj.weight.T + block.emb_proj.bias)[:, :, None, None]
        h = F.conv2d(F.silu(F.group_norm(h, GROUPS, block.norm2.weight, block.norm2.bias, 1e-6)),
                     block.conv2.weight, block.conv2.bias, padding=1)
        skip = x if c_out == C else F.conv2d(x, block.skip.weight, block.skip.bias)
        torch.testing.assert_close(block(x, emb), h + skip, rtol=1e-4, atol=1e-5)
    assert isinstance(block.skip, torch.nn.Identity) == (c_out == C)


def test_attention_refuses_channels_its_heads_do_not_divide():
    from videofusion.models.blocks import Attention

    with pytest.raises(ValueError, match=r"^channels 10 are not divisible by attention heads 4$"):
        Attention(10, 4)
