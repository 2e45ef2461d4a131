"""`regularize`: L1, L2 or L2-SP penalties on the trainable parameters.

L2-SP (Li, Grandvalet & Davoine, 2018, "Explicit Inductive Bias for Transfer Learning with
Convolutional Networks") pulls the weights towards their pretrained values instead of towards zero,
the classic guard against forgetting; parameters with no pretrained value (the new head) get a
plain L2 term weighted by ``new_weight``. Only parameters that train in the stage are penalised.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from ..mixing import align_keys
from ..registry import OBJECTIVES
from ..spec import Spec
from .base import Objective


class RegularizeSpec(Spec):
    name: Literal["regularize"] = "regularize"
    weight: float = Field(1e-3, ge=0)
    kind: Literal["l1", "l2", "l2_sp"] = "l2_sp"
    new_weight: float = Field(0.0, ge=0, description="L2-SP only: plain L2 on parameters with no pretrained value")
    needs_labels: ClassVar[bool] = False


def l1_penalty(params: list[torch.Tensor]) -> torch.Tensor:
    return sum(p.abs().sum() for p in params)


def l2_penalty(params: list[torch.Tensor]) -> torch.Tensor:
    return sum(p.square().sum() for p in params)


def l2_sp_penalty(params: list[torch.Tensor], references: list[torch.Tensor]) -> torch.Tensor:
    return sum((p - r).square().sum() for p, r in zip(params, references, strict=True))


@OBJECTIVES.register(RegularizeSpec)
class Regularize(Objective):
    """L1 / L2 / L2-SP (distance to the pretrained weights) on the trainable parameters."""

    uses_outputs = False

    def on_stage_start(self, run) -> None:
        model = run.model
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.references: dict[str, torch.Tensor] = {}
        if self.config.kind == "l2_sp":
            pretrained = align_keys(run.artifacts["pretrained_state"], dict(model.named_parameters()))
            self.references = {n: pretrained[n].to(p.device) for n, p in self.params if n in pretrained}

    def loss(self, model, batch, outputs, ctx):
        params = [p for _, p in self.params]
        if self.config.kind == "l1":
            return l1_penalty(params)
        if self.config.kind == "l2":
            return l2_penalty(params)
        anchored = [(p, self.references[n]) for n, p in self.params if n in self.references]
        new = [p for n, p in self.params if n not in self.references]
        penalty = l2_sp_penalty([p for p, _ in anchored], [r for _, r in anchored]) if anchored else 0.0
        if new and self.config.new_weight:
            penalty = penalty + self.config.new_weight * l2_penalty(new)
        return penalty if torch.is_tensor(penalty) else torch.zeros((), device=params[0].device)
