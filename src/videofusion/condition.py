"""Conditioning vocabulary: what a model accepts vs the tensors one batch gets.

``Conditioning`` is what a model was trained to take (class labels, text, both or nothing, and
the null value of each, which classifier-free guidance uses); it is read off the residual
generator's config (``num_classes``, ``cross_attention_dim``) and named as ``TrainConfig.condition``
names it. ``Condition`` is what one batch is conditioned on: the tensors the networks get, and
their null counterparts for guidance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Conditioning:
    """What a model accepts. Class labels are ``0 .. num_classes - 1``; the label ``num_classes``
    is the null (dropped) one. Text is a prompt; the empty prompt is the null one."""

    num_classes: int | None = None
    text: bool = False

    @classmethod
    def of(cls, residual) -> Conditioning:
        """The conditioning of a model, read off its residual generator's config."""
        config = residual.config
        return cls(config.num_classes, config.cross_attention_dim is not None)

    @property
    def classes(self) -> bool:
        return self.num_classes is not None

    @property
    def is_conditioned(self) -> bool:
        return self.classes or self.text

    @property
    def null_class_label(self) -> int | None:
        return self.num_classes

    @property
    def name(self) -> str:
        """``"none"``, ``"class"``, ``"text"`` or ``"class+text"`` (``TrainConfig.condition``)."""
        kinds = [kind for kind, used in (("class", self.classes), ("text", self.text)) if used]
        return "+".join(kinds) or "none"


@dataclass
class Condition:
    """What one batch is conditioned on, and its null counterpart for guidance."""

    class_labels: torch.Tensor | None = None  # (B,)
    encoder_hidden_states: torch.Tensor | None = None  # (B, tokens, dim)
    null_class_labels: torch.Tensor | None = None
    null_encoder_hidden_states: torch.Tensor | None = None

    def for_guidance(self) -> dict:
        """The unconditional and conditional inputs stacked on the batch axis (null first)."""
        null, cond = self.null(), self.plain()
        return {name: None if cond[name] is None else torch.cat([null[name], cond[name]])
                for name in cond}

    def null(self) -> dict:
        """The unconditional inputs: the null counterpart of each input that is given."""
        def null_of(null, cond):
            if cond is None:
                return None
            if null is None:
                raise ValueError("classifier-free guidance needs the null condition")
            return null

        return {"class_labels": null_of(self.null_class_labels, self.class_labels),
                "encoder_hidden_states": null_of(self.null_encoder_hidden_states,
                                                 self.encoder_hidden_states)}

    def plain(self) -> dict:
        return {"class_labels": self.class_labels,
                "encoder_hidden_states": self.encoder_hidden_states}
