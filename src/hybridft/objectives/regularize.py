"""`regularize`: L1, L2 or L2-SP penalties on the trainable parameters.

L2-SP (Li, Grandvalet & Davoine, 2018, "Explicit Inductive Bias for Transfer Learning with
Convolutional Networks") pulls the weights towards their pretrained values instead of towards zero,
the classic guard against forgetting. LoRA layers and bottleneck adapters, which have no pretrained
value of their own, are pulled towards the pretrained function (see ``Regularize``); the new head
gets a plain L2 term weighted by ``new_weight``. Only parameters that train in the stage are penalised.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from ..errors import HybridftError
from ..mixing import align_keys
from ..registry import OBJECTIVES
from ..selectors.adapter import Bottleneck
from ..selectors.lora import lora_layers, lora_parameters
from ..tasks import ALL_TASKS
from .base import Objective, ObjectiveSpec


class RegularizeSpec(ObjectiveSpec):
    name: Literal["regularize"] = "regularize"
    weight: float = Field(1e-3, ge=0)
    kind: Literal["l1", "l2", "l2_sp"] = "l2_sp"
    new_weight: float = Field(0.0, ge=0, description="L2-SP only: plain L2 on parameters with no pretrained value")
    needs_labels: ClassVar[bool] = False
    tasks: ClassVar[tuple[str, ...]] = ALL_TASKS

    @property
    def needs_pretrained_state(self) -> bool:
        return self.kind == "l2_sp"


def l1_penalty(params: list[torch.Tensor]) -> torch.Tensor:
    return sum(p.abs().sum() for p in params)


def l2_penalty(params: list[torch.Tensor]) -> torch.Tensor:
    return sum(p.square().sum() for p in params)


def l2_sp_penalty(params: list[torch.Tensor], references: list[torch.Tensor]) -> torch.Tensor:
    return sum((p - r).square().sum() for p, r in zip(params, references, strict=True))


def lora_deltas(model, pretrained: dict) -> list[tuple[object, torch.Tensor]]:
    """(LoRA layer, the pretrained weight minus its frozen base weight) for every LoRA layer that
    trains: its effective weight's distance to the pretrained one is ``delta + B A``."""
    out = []
    for name, layer in lora_layers(model):
        adapter = next(iter(layer.lora_A))
        if not layer.lora_A[adapter].weight.requires_grad:
            continue
        base = layer.get_base_layer().weight
        reference = pretrained.get(name.replace(".base_layer", "") + ".weight")
        out.append((layer, (base - reference.to(base.device)).detach() if reference is not None
                    else torch.zeros_like(base)))
    return out


@OBJECTIVES.register(RegularizeSpec)
class Regularize(Objective):
    """L1 / L2 / L2-SP (distance to the pretrained weights) on the trainable parameters.

    L2-SP where a parameter has no pretrained value of its own: a LoRA layer is penalised by its
    effective weight's distance to the pretrained one (``||W0 - W_pre + B A||^2``, its merged L2-SP);
    a bottleneck adapter by its up-projection, which is zero exactly when the adapter is the identity
    (the pretrained function); what remains (the new head) by ``new_weight`` times plain L2."""

    uses_outputs = False

    def on_stage_start(self, run) -> None:
        model = run.model
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.references: dict[str, torch.Tensor] = {}
        self.lora: list = []
        self.adapter_up: list[torch.Tensor] = []
        if self.config.kind != "l2_sp":
            return
        pretrained = align_keys(run.artifacts.pretrained_state, dict(model.named_parameters()))
        self.references = {n: pretrained[n].to(p.device) for n, p in self.params if n in pretrained}
        self.lora = lora_deltas(model, pretrained)
        self.adapter_up = [p for m in model.modules() if isinstance(m, Bottleneck) for p in m.up.parameters()
                           if p.requires_grad]
        covered = {id(p) for p in self.adapter_up} | {id(p) for layer, _ in self.lora for p in lora_parameters(layer)}
        self.new = [p for n, p in self.params if n not in self.references and id(p) not in covered]
        if not (self.references or self.lora or self.adapter_up or (self.new and self.config.new_weight)):
            raise HybridftError("regularize l2_sp: no trainable parameter has a pretrained value to be pulled "
                                "towards (and new_weight is 0), so the term would be zero")

    def loss(self, model, batch, outputs, ctx):
        params = [p for _, p in self.params]
        if self.config.kind == "l1":
            return l1_penalty(params)
        if self.config.kind == "l2":
            return l2_penalty(params)
        anchored = [(p, self.references[n]) for n, p in self.params if n in self.references]
        penalty = l2_sp_penalty([p for p, _ in anchored], [r for _, r in anchored]) if anchored else 0.0
        for layer, delta in self.lora:
            adapter = next(iter(layer.lora_A))
            penalty = penalty + (delta + layer.get_delta_weight(adapter)).square().sum()
        if self.adapter_up:
            penalty = penalty + l2_penalty(self.adapter_up)
        if self.new and self.config.new_weight:
            penalty = penalty + self.config.new_weight * l2_penalty(self.new)
        return penalty if torch.is_tensor(penalty) else torch.zeros((), device=params[0].device)

    def summary(self) -> dict:
        if self.config.kind != "l2_sp":
            return {}
        return {"anchored_tensors": len(self.references), "lora_layers": len(self.lora),
                "adapter_up_tensors": len(self.adapter_up), "new_tensors": len(self.new)}
