"""`contrastive`: in-batch contrastive loss on sentence embeddings (SimCSE, Gao et al., 2021).

Unsupervised: the same sentences encoded twice under different dropout masks are positives, the
other sentences of the batch negatives (InfoNCE over cosine similarity / temperature). Supervised:
label-aware (SupCon, Khosla et al., 2020): over both views, every example with the same label is a
positive. When the source is the stage's batch, the loop's forward pass is the first view.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from ..registry import OBJECTIVES
from ..tasks import MULTI_TASK, SINGLE_HEAD_TASKS, TAGGING
from .base import Objective, ObjectiveSpec, model_inputs


class ContrastiveSpec(ObjectiveSpec):
    name: Literal["contrastive"] = "contrastive"
    weight: float = Field(0.1, ge=0)
    mode: Literal["unsupervised", "supervised"] = "unsupervised"
    temperature: float = Field(0.05, gt=0)
    pooling: Literal["cls", "mean"] = "mean"
    source: Literal["batch", "unlabeled", "both"] = "batch"

    @property
    def needs_labels(self) -> bool:
        return self.mode == "supervised"

    tasks: ClassVar[tuple[str, ...]] = (*SINGLE_HEAD_TASKS, MULTI_TASK)

    def unsupported(self, task: str) -> str | None:
        if self.mode == "supervised" and task == TAGGING:  # its positives share a sentence label
            return "in supervised mode needs one label per sentence; the task tags tokens"
        if self.mode == "supervised" and task == MULTI_TASK:
            return "in supervised mode is not supported in multi-task recipes"
        return super().unsupported(task)

    @model_validator(mode="after")
    def _supervised_needs_labels(self):
        if self.mode == "supervised" and self.source != "batch":
            raise ValueError("supervised contrastive needs labels: use source: batch")
        return self


def sentence_embeddings(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCSE: row i of z1 should be closest to row i of z2 among all rows of z2."""
    sim = F.normalize(z1, dim=-1) @ F.normalize(z2, dim=-1).T / temperature
    return F.cross_entropy(sim, torch.arange(len(z1), device=z1.device))


def supervised_contrastive(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon over 2B views: for each anchor, the mean log-probability of its positives (same
    label, itself excluded) against all other views."""
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    y = torch.cat([labels, labels])
    sim = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positives = (y[:, None] == y[None, :]) & ~self_mask
    return -(log_prob.masked_fill(~positives, 0).sum(1) / positives.sum(1)).mean()


@OBJECTIVES.register(ContrastiveSpec)
class Contrastive(Objective):
    """SimCSE-style in-batch contrastive loss: dropout views (unsupervised) or same-label positives."""

    needs_hidden_states = True

    @property
    def uses_outputs(self) -> bool:
        return self.config.source != "unlabeled"

    def loss(self, model, batch, outputs, ctx):
        terms = []
        for inputs in self.inputs_for(batch, ctx):
            first = outputs if inputs is batch else model(**model_inputs(inputs), output_hidden_states=True)
            second = model(**model_inputs(inputs), output_hidden_states=True)  # another dropout mask
            z1, z2 = (sentence_embeddings(o.hidden_states[-1], inputs["attention_mask"], self.config.pooling)
                      for o in (first, second))
            if self.config.mode == "supervised":
                terms.append(supervised_contrastive(z1, z2, inputs["labels"], self.config.temperature))
            else:
                terms.append(info_nce(z1, z2, self.config.temperature))
        return sum(terms) / len(terms)
