"""Space-time building blocks shared by the residual generator and the VDM baseline (spec §2).

Inside these blocks a video is kept with its frames folded into the batch,
``(batch * frames, channels, height, width)``, so that every 2D operation runs on all frames in
one call. The folded tensor is channels-last (physically ``(batch, frames, height, width,
channels)``): oneDNN convolutions run on it without reordering, spatial tokens
``(batch * frames, pixels, channels)`` and the temporal convolution's ``(batch, channels, frames,
pixels)`` image are views of it, so only temporal attention needs a copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fold_frames(video: torch.Tensor) -> torch.Tensor:
    """``(B, C, F, H, W)`` -> channels-last ``(B * F, C, H, W)`` (one copy)."""
    b, c, f, h, w = video.shape
    return video.permute(0, 2, 3, 4, 1).reshape(b * f, h, w, c).permute(0, 3, 1, 2)


def unfold_frames(frames: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``(B * F, C, H, W)`` -> ``(B, C, F, H, W)`` (a view)."""
    bf, c, h, w = frames.shape
    return frames.view(bf // num_frames, num_frames, c, h, w).transpose(1, 2)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def pixel_tokens(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Channels-last ``(B * F, C, H, W)`` -> ``(B, F, H * W, C)``, a view."""
    bf, c, h, w = x.shape
    return channels_last(x).permute(0, 2, 3, 1).reshape(bf // num_frames, num_frames, h * w, c)


def add_pixel_tokens(x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``x + tokens`` for tokens laid out like ``pixel_tokens(x)``; the result is channels-last."""
    bf, c, h, w = x.shape
    out = pixel_tokens(x, tokens.shape[1]) + tokens  # written in x's (contiguous) layout
    return out.view(bf, h, w, c).permute(0, 3, 1, 2)


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels, eps=1e-6)


def zero_init(module: nn.Module) -> nn.Module:
    """Start a residual branch as the identity, so new temporal layers do not disturb training."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Per-frame 2D residual block conditioned on a per-frame embedding (time + frame + class)."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, groups: int,
                 dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_channels)
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = (nn.Identity() if in_channels == out_channels
                     else nn.Conv2d(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # x: (B*F, C, H, W), emb: (B*F, D); the in-place adds write into fresh conv outputs,
        # which nothing saves for backward
        h = self.conv1(F.silu(self.norm1(x)))
        h += self.emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h.add_(self.skip(x))


class TemporalConv(nn.Module):
    """A 1D convolution across frames at every pixel (kernel 3), zero-initialised.

    The weight is kept as a ``Conv3d`` ``(C, C, 3, 1, 1)``; it runs as a 2D ``(3, 1)`` convolution
    on the channels-last ``(B, C, F, H * W)`` view of the folded frames, which oneDNN handles
    without the copies and the slow path of a CPU ``Conv3d``.
    """

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.conv = zero_init(nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)))

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        tokens = pixel_tokens(F.silu(self.norm(x)), num_frames)  # (B, F, H*W, C)
        h = F.conv2d(tokens.permute(0, 3, 1, 2), self.conv.weight[..., 0], self.conv.bias,
                     padding=(1, 0))  # (B, C, F, H*W), channels-last
        return add_pixel_tokens(x, h.permute(0, 2, 3, 1))


class Attention(nn.Module):
    """Multi-head attention on ``(batch, tokens, dim)`` through ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"channels {dim} are not divisible by attention heads {heads}")
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim or dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        k, v = self.to_kv(x if context is None else context).chunk(2, dim=-1)
        q = self.to_q(x)
        q, k, v = (t.view(b, -1, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)  # (b, heads, n, d / heads)
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class SpatialAttention(nn.Module):
    """Self-attention over the pixels of each frame, then optional cross-attention to text."""

    def __init__(self, channels: int, heads: int, groups: int, context_dim: int | None = None):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.attn = Attention(channels, heads)
        self.cross = None
        if context_dim is not None:
            self.cross_norm = nn.LayerNorm(channels)
            self.cross = Attention(channels, heads, context_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        bf, c, h, w = x.shape
        tokens = pixel_tokens(self.norm(x), 1)[:, 0]  # (B*F, H*W, C), a view
        delta = self.attn(tokens)
        if self.cross is not None:
            if context is None:
                raise ValueError("this model is text-conditioned: pass encoder_hidden_states")
            # one text sequence per clip, repeated for each of its frames
            context = context.repeat_interleave(bf // context.shape[0], dim=0)
            delta = delta + self.cross(self.cross_norm(tokens + delta), context)
        return add_pixel_tokens(x, delta[:, None])


class TemporalAttention(nn.Module):
    """Self-attention across the frames at each pixel, with a sinusoidal frame position."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.attn = Attention(channels, heads)
        zero_init(self.attn.to_out)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        c = x.shape[1]
        tokens = pixel_tokens(self.norm(x), num_frames)  # (B, F, H*W, C)
        position = sinusoidal_embedding(torch.arange(num_frames, device=x.device), c)
        tokens = tokens + position.to(tokens.dtype)[:, None]
        b, _, hw, _ = tokens.shape
        out = self.attn(tokens.transpose(1, 2).reshape(b * hw, num_frames, c))  # (B*H*W, F, C)
        return add_pixel_tokens(x, out.view(b, hw, num_frames, c).transpose(1, 2))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def sinusoidal_embedding(positions: torch.Tensor, dim: int, max_period: float = 10000.0):
    """Transformer-style sinusoidal embedding of (possibly fractional) positions, ``(n, dim)``."""
    half = dim // 2
    freqs = torch.exp(
        -torch.log(torch.tensor(max_period)) * torch.arange(half, device=positions.device) / half
    )
    args = positions.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))
