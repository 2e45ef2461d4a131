"""`lisa`: Layerwise Importance Sampled AdamW (Pan et al. 2024): a few transformer layers train at a
time, drawn at random every ``every`` optimizer steps; the embeddings, the head and the norms outside
the layers always train.

The draw for period k (steps k x every ... (k + 1) x every - 1) depends only on the stage's seed and
k, so a resumed run draws what the interrupted one would have. A layer that goes inactive loses its
optimizer state (AdamW's moments are freed, as in the paper's implementation) and starts it afresh
when it is drawn again; while inactive its entries stay bit for bit as they were (no gradient, no
weight decay). On one process the inactive layers are frozen outright (``requires_grad`` off: no
gradients computed or held); on several, where DDP and FSDP need every process to hand in the same
parameters, their gradients are dropped after the backward, before clipping and the step. A
parameter another selector of the stage trains (LoRA on the attention of every layer, in a union)
trains all the time, whatever the draw.
"""

from __future__ import annotations

import re
from typing import Literal

import torch
from pydantic import Field

from .. import architecture
from ..registry import SELECTORS
from .base import Selector, SelectorSpec

_NORM = re.compile(r"norm", re.IGNORECASE)


class LisaSpec(SelectorSpec):
    name: Literal["lisa"] = "lisa"
    layers: int = Field(2, ge=1, description="transformer layers that train at a time, drawn at random")
    every: int = Field(50, ge=1, description="optimizer steps between draws")
    embeddings: bool = Field(True, description="the embeddings train all the time")
    head: bool = Field(True, description="the head (a language model's LM head too) trains all the time")
    norms: bool = Field(True, description="the norms outside the layers (a decoder's final norm) train all the time")


@SELECTORS.register(LisaSpec)
class Lisa(Selector):
    """A few whole layers at a time, redrawn every ``every`` steps; embeddings, head and norms always."""

    def __init__(self, config):
        super().__init__(config)
        self.others: set[str] = set()  # what the stage's other selectors train
        self.period: int | None = None
        self.active: list[int] = []
        self.draws: list[dict] = []  # {step, layers}: the report's record of the draws

    def always(self, model) -> set[str]:
        c, names = self.config, set()
        inside = {n for i in range(architecture.num_layers(model)) for n in architecture.layer_param_names(model, i)}
        if c.embeddings:
            names.update(architecture.embedding_param_names(model))
        if c.head:
            names.update(architecture.head_param_names(model))
        if c.norms:
            names.update(n for n, _ in model.named_parameters() if _NORM.search(n) and n not in inside)
        return names

    def trainable(self, model):
        n = architecture.num_layers(model)
        return self.always(model) | {p for i in range(n) for p in architecture.layer_param_names(model, i)}

    def with_others(self, names: set[str]) -> None:
        self.others = names

    def layer_params(self, model, index: int) -> list[torch.nn.Parameter]:
        params = dict(model.named_parameters())
        return [params[n] for n in architecture.layer_param_names(model, index) if n not in self.others]

    def draw(self, layers: int, seed: int, period: int) -> list[int]:
        order = torch.randperm(layers, generator=torch.Generator().manual_seed(seed * 7919 + period)).tolist()
        return sorted(order[:min(self.config.layers, layers)])

    def before_step(self, model, stage) -> None:
        """At the start of each period: the new draw, and the optimizer state of the layers leaving."""
        period = stage.state.step // self.config.every
        if period == self.period:
            return
        n = architecture.num_layers(model)
        active = self.draw(n, stage.seed, period)
        for i in sorted(set(self.active if self.period is not None else range(n)) - set(active)):
            self.release_state(stage.optimizer, self.layer_params(model, i))
        self.one_process = stage.run.processes.world == 1
        if self.one_process:
            for i in range(n):
                for p in self.layer_params(model, i):
                    p.requires_grad_(i in active)
        self.period, self.active = period, active
        self.draws.append({"step": stage.state.step, "layers": active})

    @staticmethod
    def release_state(optimizer, params: list[torch.nn.Parameter]) -> None:
        """A leaving layer's optimizer state (AdamW's moments) is freed; it starts fresh on return."""
        for p in params:
            optimizer.state.pop(p, None)

    def after_backward(self, model) -> None:
        if self.period is None or getattr(self, "one_process", True):
            return
        for i in set(range(architecture.num_layers(model))) - set(self.active):
            for p in self.layer_params(model, i):
                p.grad = None  # several processes: every gradient was reduced; the inactive ones are dropped

    def summary(self) -> dict:
        return {"layers": self.config.layers, "every": self.config.every, "draws": self.draws}
