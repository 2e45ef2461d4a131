"""`task`: the supervised loss of the task head (cross-entropy, optional label smoothing)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ..registry import OBJECTIVES
from ..tasks import ALL_TASKS, task_loss, token_positions
from .base import Objective, ObjectiveSpec


class TaskConfig(ObjectiveSpec):
    name: Literal["task"] = "task"
    weight: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    tasks: ClassVar[tuple[str, ...]] = ALL_TASKS


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
