"""`task_arithmetic`: M_pre + scale * the weighted sum of the task vectors (Ilharco et al., 2023),
through ``peft.utils.merge_utils``."""

from __future__ import annotations

from peft.utils import merge_utils

from .base import TaskVectorMethod


class TaskArithmetic(TaskVectorMethod):
    name = "task_arithmetic"
    about = "M_pre + scale * weighted sum of the task vectors (fine-tuned - M_pre)"
    searches = ("scale",)

    def combine(self, vectors, weights, point):
        return merge_utils.task_arithmetic(vectors, weights.to(vectors[0].dtype))
