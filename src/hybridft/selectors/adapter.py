"""`adapter`: bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2020).

Each adapter is down-projection -> nonlinearity -> up-projection with a residual connection, the
up-projection initialised at zero so a fresh adapter is the identity. It wraps the output
projection of the attention and/or feed-forward sublayer, i.e. it acts on the sublayer output
before the residual add and LayerNorm, as in Houlsby's placement (Pfeiffer's is ``[ffn]`` only).

Adapters cannot be merged into the linear weights (the nonlinearity is in the way): a model saved
with adapters holds the base weights in standard form plus ``adapters.safetensors``; load it with
``hybridft.model_io.load_saved`` (what ``hybridft predict``/``eval`` do).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from .. import architecture
from ..errors import HybridftError
from ..registry import SELECTORS
from .base import Selector, SelectorSpec


class AdapterSpec(SelectorSpec):
    name: Literal["adapter"] = "adapter"
    reduction_factor: int = Field(16, ge=1, description="bottleneck size = hidden size / reduction_factor")
    placement: list[Literal["attention", "ffn"]] = Field(default_factory=lambda: ["attention", "ffn"], min_length=1)
    nonlinearity: Literal["relu", "gelu", "tanh"] = "relu"
    layers: list[int] | None = Field(None, description="only these layer indices (default: all)")
    head: bool | None = Field(None, description="the task head trains too; default: when it is new (classification, tagging), not a language model's pretrained LM head")
    saves: ClassVar[tuple[str, ...]] = ("adapters.safetensors",)  # they cannot merge into the weights


class Bottleneck(nn.Module):
    def __init__(self, size: int, bottleneck: int, nonlinearity: str):
        super().__init__()
        self.nonlinearity = nonlinearity
        self.down = nn.Linear(size, bottleneck)
        self.act = {"relu": nn.ReLU(), "gelu": nn.GELU(), "tanh": nn.Tanh()}[nonlinearity]
        self.up = nn.Linear(bottleneck, size)
        nn.init.normal_(self.down.weight, std=1e-3)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)  # near-identity at the start: the pretrained function is kept
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


class WithAdapter(nn.Module):
    """A sublayer's output projection followed by its adapter."""

    def __init__(self, base: nn.Module, adapter: Bottleneck):
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, *args, **kwargs):
        return self.adapter(self.base(*args, **kwargs))

    @property
    def weight(self) -> torch.Tensor:
        """The wrapped projection's, for models that read it (T5's feed-forward checks its dtype)."""
        return self.base.weight


def wrap_with_adapter(model: nn.Module, module_name: str, bottleneck: int, nonlinearity: str) -> None:
    module = model.get_submodule(module_name)
    projection = architecture.projections(module)[0][2]
    adapter = Bottleneck(architecture.out_features(projection), bottleneck, nonlinearity).to(
        next(module.parameters()).device)
    parent, _, child = module_name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, WithAdapter(module, adapter))


def adapter_layout(model: nn.Module) -> list[dict]:
    """Where the adapters of a model sit, enough to rebuild them on a fresh copy of the base model."""
    return [{"module": name, "bottleneck": m.adapter.down.out_features, "nonlinearity": m.adapter.nonlinearity}
            for name, m in model.named_modules() if isinstance(m, WithAdapter)]


def insert_adapters(model: nn.Module, spec: AdapterSpec) -> list[str]:
    """Wrap the chosen sublayer outputs in place; returns the wrapped module names."""
    prefix, stack = architecture.main_layer_stack(model)
    indices = architecture.checked_layer_indices(spec.layers, model, "adapter.layers") \
        if spec.layers is not None else range(len(stack))
    hidden, wrapped = architecture.hidden_size(model), []
    for i in indices:
        layer = stack[i]
        outputs = architecture.sublayer_outputs(layer, hidden)
        order = [name for name, _ in layer.named_modules()]  # model order, whatever the placement order
        for rel in sorted((outputs[p] for p in spec.placement if p in outputs), key=order.index):
            if not isinstance(layer.get_submodule(rel), WithAdapter):  # an earlier stage's is kept, not doubled
                wrap_with_adapter(model, f"{prefix}.{i}.{rel}", max(1, hidden // spec.reduction_factor),
                                  spec.nonlinearity)
            wrapped.append(f"{prefix}.{i}.{rel}")
    if not wrapped:
        raise HybridftError(f"adapter: found no {'/'.join(spec.placement)} sublayer output in {type(model).__name__} "
                            "(no projection to the hidden size in its blocks)")
    return wrapped


@SELECTORS.register(AdapterSpec)
class Adapter(Selector):
    """Bottleneck adapters after attention and/or feed-forward sublayers (plus the head)."""

    keeps_structure = True

    def prepare(self, model, run=None):
        self.wrapped = insert_adapters(model, self.config)
        return model

    def trainable(self, model):
        names = {n for n, _ in model.named_parameters() if ".adapter." in n}
        if architecture.trains_head(self.config.head, model):
            names.update(architecture.head_param_names(model))
        return names
