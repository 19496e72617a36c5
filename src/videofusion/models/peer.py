"""The ecosystem's video UNet as a benchmark peer: diffusers' ``UNet3DConditionModel``.

``UNet3DConditionModel`` is the network of diffusers' ``TextToVideoSDPipeline`` (ModelScope
text-to-video): per-frame 2D ResNet blocks with a temporal convolution after each, spatial
self-attention, cross attention to text and temporal attention in every level but the lowest,
and a temporal transformer after the input convolution. ``PeerUNet3D`` wraps it with the
residual generator's call signature so that the VDM baseline's sampler (plain epsilon
prediction on all frames, ``VideoFusionModel(base=None)``) samples it unchanged; the benchmark
(``videofusion.bench``) times it next to VideoFusion at the same parameter count.

The network needs ``encoder_hidden_states``: the wrapper holds a small fixed text embedding
(``tokens`` x ``text_dim``, a seeded random buffer, not a parameter) per class label and the
null label, so class-conditioned sampling and classifier-free guidance (null and conditional
passes batched) go through the same ``Condition`` as the other models. Unconditioned, every
call gets the one embedding of the null label.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import UNet3DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

# diffusers' default block_out_channels (320, 640, 1280, 1280), as ratios to the first level
WIDTH_RATIOS = (1, 2, 4, 4)


class PeerUNet3D(ModelMixin, ConfigMixin):
    """``UNet3DConditionModel`` with the residual generator's ``forward`` (``(B, C, F, H, W)``
    in and out) and a fixed text embedding per class label (see the module docstring)."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        block_out_channels: Sequence[int] = (16, 32, 64, 64),
        layers_per_block: int = 1,
        heads: int = 8,
        norm_num_groups: int = 8,
        text_dim: int = 384,
        tokens: int = 4,
        num_classes: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        levels = len(block_out_channels)
        self.unet = UNet3DConditionModel(
            in_channels=in_channels, out_channels=out_channels,
            down_block_types=("CrossAttnDownBlock3D",) * (levels - 1) + ("DownBlock3D",),
            up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (levels - 1),
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups, cross_attention_dim=text_dim,
            attention_head_dim=heads,  # diffusers reads this as the number of heads
        )
        rows = 1 if num_classes is None else num_classes + 1  # the last row: the null label
        generator = torch.Generator().manual_seed(seed)
        text = torch.randn(rows, tokens, text_dim, generator=generator, device="cpu")
        self.register_buffer("text", text.to(self.unet.conv_in.weight.device))
        # what ``Conditioning.of`` reads: class labels, never a prompt (the text is fixed)
        self.register_to_config(cross_attention_dim=None)

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def forward(self, sample, timestep, frame_index=None, class_labels=None,
                encoder_hidden_states=None):
        rows = (torch.full((sample.shape[0],), self.text.shape[0] - 1, device=sample.device)
                if class_labels is None else class_labels)
        return self.unet(sample, timestep, encoder_hidden_states=self.text[rows].to(sample.dtype)
                         ).sample


def peer_widths(scale: float, levels: int) -> tuple[int, ...]:
    """Block widths ``WIDTH_RATIOS[:levels]`` times ``scale / 8``, in multiples of 8 (so that 8
    norm groups and 8 heads divide them)."""
    return tuple(max(8, round(r * scale / 8) * 8) for r in WIDTH_RATIOS[:levels])


def matched_peer(target: int, channels: int = 3, levels: int = 4, num_classes: int | None = None,
                 text_dim: int = 384, tokens: int = 4, heads: int = 8,
                 layers_per_block: int = 1) -> PeerUNet3D:
    """The ``PeerUNet3D`` whose parameter count is nearest to ``target``: its widths are
    diffusers' default ratios (1, 2, 4, 4), first ``levels`` of them, scaled one channel of the
    first level at a time (candidates counted on the meta device, only the chosen one built)."""
    if not 1 <= levels <= len(WIDTH_RATIOS):
        raise ValueError(f"levels must be in [1, {len(WIDTH_RATIOS)}], got {levels}")

    def build(widths):
        return PeerUNet3D(channels, channels, widths, layers_per_block, heads,
                          text_dim=text_dim, tokens=tokens, num_classes=num_classes)

    best, seen = None, set()
    for scale in range(8, 8 * 256):
        widths = peer_widths(scale, levels)
        if widths in seen:
            continue
        seen.add(widths)
        with torch.device("meta"):
            count = sum(p.numel() for p in build(widths).unet.parameters())
        gap = abs(count - target)
        if best is not None and gap > best[0] and count > target:
            break
        if best is None or gap < best[0]:
            best = (gap, widths)
    return build(best[1])
