"""`layers`: train chosen transformer layers, optionally the embeddings, the head, or name patterns.

Everything else stays frozen. ``top_k: 0, head: true`` is linear probing (head only).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .. import architecture
from ..errors import HybridftError
from ..registry import SELECTORS
from .base import Selector, SelectorSpec


class LayersConfig(SelectorSpec):
    name: Literal["layers"] = "layers"
    top_k: int | None = Field(None, ge=0, description="train the top k layers of the main stack")
    indices: list[int] | None = Field(None, description="train these layers (negative counts from the top)")
    embeddings: bool = Field(False, description="also train the embeddings")
    head: bool | None = Field(None, description="also train the task head (and BERT's pooler); default: when it is new (classification, tagging), not a language model's pretrained LM head")
    patterns: list[str] = Field(default_factory=list, description="regexes on parameter names to train too")

    @model_validator(mode="after")
    def _one_way_to_pick_layers(self):
        if self.top_k is not None and self.indices is not None:
            raise ValueError("give either top_k or indices, not both")
        return self

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, patterns):
        for p in patterns:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"pattern {p!r} is not a valid regular expression: {e}") from None
        return patterns


def chosen_layer_indices(config: LayersConfig, model) -> list[int]:
    n_layers = architecture.num_layers(model)
    if config.top_k is not None:
        if config.top_k > n_layers:
            raise HybridftError(f"layers.top_k={config.top_k} but the model has only {n_layers} layers")
        return list(range(n_layers - config.top_k, n_layers))
    return architecture.checked_layer_indices(config.indices or [], model, "layers.indices")


@SELECTORS.register(LayersConfig)
class Layers(Selector):
    """Chosen layers (top-k or indices), optionally embeddings, head and name patterns train."""

    def trainable(self, model):
        c = self.config
        names: set[str] = set()
        for i in chosen_layer_indices(c, model):
            names.update(architecture.layer_param_names(model, i))
        if c.embeddings:
            names.update(architecture.embedding_param_names(model))
        if architecture.trains_head(c.head, model):
            names.update(architecture.head_param_names(model))
        all_names = [n for n, _ in model.named_parameters()]
        for p in c.patterns:
            matched = [n for n in all_names if re.search(p, n)]
            if not matched:
                raise HybridftError(f"layers.patterns: {p!r} matches no parameter of the model")
            names.update(matched)
        return names
