"""`task`: the supervised loss of the task head (cross-entropy, optional label smoothing)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..registry import OBJECTIVES
from ..spec import Spec
from .base import Objective

IGNORE_INDEX = -100  # labels of padding and of non-first word pieces


class TaskConfig(Spec):
    name: Literal["task"] = "task"
    weight: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    needs_labels: ClassVar[bool] = True


def task_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over labeled positions; works for [B, C] and token-level [B, T, C] logits."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
    )


def token_positions(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the labels they predict: a causal LM's position t predicts token t + 1."""
    if causal:
        return logits[:, :-1], labels[:, 1:]
    return logits, labels


def is_causal(run) -> bool:
    return getattr(run.data, "task", None) == "causal_lm"


@OBJECTIVES.register(TaskConfig)
class Task(Objective):
    """Cross-entropy of the task head on the labeled batch (with optional label smoothing)."""

    def loss(self, model, batch, outputs, ctx):
        logits, labels = token_positions(outputs.logits, batch["labels"], is_causal(ctx.run))
        loss = task_loss(logits, labels, self.config.label_smoothing)
        if "task_index" in batch:  # multi-task: each task's loss has its weight
            loss = loss * ctx.run.data.weights[int(batch["task_index"][0])]
        return loss
