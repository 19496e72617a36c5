"""The residual generator R_psi of spec §2: a space-time UNet.

Per-frame 2D convolutions and spatial attention, temporal convolution and temporal attention
across frames, conditioned on the timestep, the frame index (embedded like the timestep) and a
class label or a sequence of text embeddings. The same network, without a base generator, is the
VDM baseline (``videofusion.models.videofusion.VideoFusionModel(base=None, ...)``).

Input and output layout: ``(batch, channels, frames, height, width)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .blocks import (
    Downsample,
    ResBlock,
    SpatialAttention,
    TemporalAttention,
    TemporalConv,
    Upsample,
    fold_frames,
    group_norm,
    sinusoidal_embedding,
    unfold_frames,
)


class SpaceTimeLayer(nn.Module):
    """ResBlock, then the optional temporal conv, spatial attention and temporal attention."""

    def __init__(self, in_channels, out_channels, emb_dim, groups, dropout, *, temporal_conv,
                 spatial_attention, temporal_attention, heads, context_dim):
        super().__init__()
        self.res = ResBlock(in_channels, out_channels, emb_dim, groups, dropout)
        self.tconv = TemporalConv(out_channels, groups) if temporal_conv else None
        self.sattn = (SpatialAttention(out_channels, heads, groups, context_dim)
                      if spatial_attention else None)
        self.tattn = TemporalAttention(out_channels, heads, groups) if temporal_attention else None

    def forward(self, x, emb, context, num_frames: int):
        x = self.res(x, emb)
        if self.tconv is not None:
            x = self.tconv(x, num_frames)
        if self.sattn is not None:
            x = self.sattn(x, context)
        if self.tattn is not None:
            x = self.tattn(x, num_frames)
        return x


class SpaceTimeUNet(ModelMixin, ConfigMixin):
    """Space-time UNet predicting per-frame noise; saved and loaded as a diffusers model."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        block_out_channels: Sequence[int] = (32, 64),
        layers_per_block: int = 1,
        spatial_attention: Sequence[bool] = (False, True),
        temporal_attention: Sequence[bool] = (True, True),
        temporal_conv: bool = True,
        attention_heads: int = 4,
        norm_num_groups: int = 8,
        dropout: float = 0.0,
        num_classes: int | None = None,
        cross_attention_dim: int | None = None,
    ):
        super().__init__()
        levels = len(block_out_channels)
        if len(spatial_attention) != levels or len(temporal_attention) != levels:
            raise ValueError(
                "spatial_attention and temporal_attention need one flag per entry of "
                f"block_out_channels ({levels})"
            )
        if cross_attention_dim is not None and not any(spatial_attention):
            raise ValueError("cross_attention_dim needs at least one spatial_attention level")
        ch0 = block_out_channels[0]
        emb_dim = 4 * ch0
        self.gradient_checkpointing = False

        def embedder(in_dim: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(in_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        self.time_embedding = embedder(ch0)
        self.frame_embedding = embedder(ch0)
        # labels 0..num_classes-1, and num_classes as the null label of classifier-free guidance
        self.class_embedding = (nn.Embedding(num_classes + 1, emb_dim)
                                if num_classes is not None else None)
        # pooled text joins the embedding; the token sequence feeds cross-attention
        self.text_embedding = (nn.Linear(cross_attention_dim, emb_dim)
                               if cross_attention_dim is not None else None)

        def layer(cin, cout, level):
            return SpaceTimeLayer(
                cin, cout, emb_dim, norm_num_groups, dropout, temporal_conv=temporal_conv,
                spatial_attention=spatial_attention[level],
                temporal_attention=temporal_attention[level], heads=attention_heads,
                context_dim=cross_attention_dim if spatial_attention[level] else None,
            )

        self.conv_in = nn.Conv2d(in_channels, ch0, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [ch0]
        ch = ch0
        for level, cout in enumerate(block_out_channels):
            for _ in range(layers_per_block):
                self.down.append(layer(ch, cout, level))
                ch = cout
                skip_channels.append(ch)
            if level < levels - 1:
                self.down.append(Downsample(ch))
                skip_channels.append(ch)
        self.mid = nn.ModuleList([layer(ch, ch, levels - 1), layer(ch, ch, levels - 1)])
        self.up = nn.ModuleList()
        for level in reversed(range(levels)):
            cout = block_out_channels[level]
            for _ in range(layers_per_block + 1):
                self.up.append(layer(ch + skip_channels.pop(), cout, level))
                ch = cout
            if level > 0:
                self.up.append(Upsample(ch))
        self.norm_out = group_norm(ch, norm_num_groups)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        frame_index: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict noise for ``sample`` ``(B, C, F, H, W)``.

        ``timestep``: scalar or ``(B,)``. ``frame_index``: ``(F,)`` or ``(B, F)``, default
        ``0..F-1``. ``class_labels``: ``(B,)`` with ``num_classes`` as the null label.
        ``encoder_hidden_states``: ``(B, tokens, cross_attention_dim)``.
        """
        b, c, f, h, w = self._check_input(sample)
        emb = self._embedding(sample, timestep, frame_index, class_labels, encoder_hidden_states)
        context = encoder_hidden_states
        x = self.conv_in(fold_frames(sample))  # (B*F, C0, H, W)
        skips = [x]
        for block in self.down:
            x = self._run(block, x, emb, context, f)
            skips.append(x)
        for block in self.mid:
            x = self._run(block, x, emb, context, f)
        for block in self.up:
            if isinstance(block, SpaceTimeLayer):
                x = torch.cat([x, skips.pop()], dim=1)
            x = self._run(block, x, emb, context, f)
        x = self.conv_out(nn.functional.silu(self.norm_out(x)))
        return unfold_frames(x, f)

    def _run(self, block, x, emb, context, num_frames):
        if not isinstance(block, SpaceTimeLayer):
            return block(x)
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(block, x, emb, context, num_frames)
        return block(x, emb, context, num_frames)

    def _check_input(self, sample: torch.Tensor):
        if sample.ndim != 5:
            raise ValueError(
                "sample must be (batch, channels, frames, height, width), "
                f"got {tuple(sample.shape)}"
            )
        b, c, f, h, w = sample.shape
        if c != self.config.in_channels:
            raise ValueError(f"sample has {c} channels, the model takes {self.config.in_channels}")
        factor = self.downsampling_factor
        if h % factor or w % factor:
            raise ValueError(
                f"resolution {h}x{w} is not divisible by {factor}, the model's down-sampling factor"
            )
        return b, c, f, h, w

    def _embedding(self, sample, timestep, frame_index, class_labels, encoder_hidden_states):
        """One embedding per frame, ``(B*F, D)``: timestep + frame index (+ class, + text)."""
        b, _, f = sample.shape[:3]
        device = sample.device
        ch0 = self.config.block_out_channels[0]
        timestep = torch.as_tensor(timestep, device=device, dtype=torch.float32).flatten()
        timestep = timestep.expand(b) if timestep.numel() == 1 else timestep
        emb = self.time_embedding(sinusoidal_embedding(timestep, ch0).to(sample.dtype))  # (B, D)
        if frame_index is None:
            frame_index = torch.arange(f, device=device)
        frame_index = torch.as_tensor(frame_index, device=device).expand(b, f)
        frame_emb = self.frame_embedding(
            sinusoidal_embedding(frame_index.flatten(), ch0).to(sample.dtype)
        ).view(b, f, -1)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("this model is class-conditioned: pass class_labels")
            emb = emb + self.class_embedding(class_labels.to(device).long())
        if self.text_embedding is not None:
            if encoder_hidden_states is None:
                raise ValueError("this model is text-conditioned: pass encoder_hidden_states")
            emb = emb + self.text_embedding(encoder_hidden_states.mean(dim=1))
        return (emb[:, None] + frame_emb).reshape(b * f, -1)
