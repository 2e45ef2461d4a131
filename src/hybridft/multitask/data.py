"""The tasks' data side by side: each task read and encoded as a single-task recipe would, then
tagged with its task index so that one collator and one model can serve every task."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.prepare import TaskData, load_task_data


@dataclass
class MultiTaskData:
    names: list[str]
    tasks: list[TaskData]
    weights: list[float]
    metrics: list[str]  # each task's primary metric
    train: list[dict] = field(default_factory=list)  # all tasks' examples, tagged with task_index
    stats: dict = field(default_factory=dict)
    task: str = "multi_task"
    validation: list[dict] = field(default_factory=list)
    test: list[dict] | None = None
    unlabeled: None = None
    unlabeled_gold: None = None

    @property
    def label_names(self) -> dict[str, list[str]]:
        return {n: t.label_names for n, t in zip(self.names, self.tasks, strict=True)}

    def task_rows(self) -> list[list[int]]:
        """Indices into ``train`` of each task's examples."""
        rows: list[list[int]] = [[] for _ in self.names]
        for i, ex in enumerate(self.train):
            rows[ex["task_index"]].append(i)
        return rows

    def subset(self, index: int) -> MultiTaskData:
        """Task ``index`` alone (its examples tagged as task 0)."""
        sub = MultiTaskData([self.names[index]], [self.tasks[index]], [self.weights[index]], [self.metrics[index]])
        sub.train, sub.validation = sub.split(0, "train"), sub.split(0, "validation")
        sub.stats = {self.names[index]: self.tasks[index].stats}
        return sub

    def split(self, index: int, name: str) -> list[dict] | None:
        examples = getattr(self.tasks[index], name)
        return None if examples is None else [{**ex, "task_index": index} for ex in examples]


def task_recipe(recipe, task):
    """The single-task view of one task (its data, head type and the shared settings)."""
    return recipe.model_copy(update={"task": task.task, "data": task.data, "tasks": None})


def load_multitask_data(recipe, base_dir: Path, tokenizer) -> MultiTaskData:
    tasks = [load_task_data(task_recipe(recipe, t), base_dir, tokenizer) for t in recipe.tasks]
    data = MultiTaskData([t.name for t in recipe.tasks], tasks, [t.weight for t in recipe.tasks],
                         [t.primary_metric for t in recipe.tasks])
    for i in range(len(tasks)):
        data.train += data.split(i, "train")
        data.validation += data.split(i, "validation")
    data.stats = {n: t.stats for n, t in zip(data.names, tasks, strict=True)}
    return data


class MultiTaskCollator:
    """Batches hold one task: its own collator pads them, and ``task_index`` tells the model."""

    def __init__(self, collators: list):
        self.collators = collators

    def __call__(self, examples: list[dict]) -> dict:
        index = examples[0]["task_index"]
        batch = self.collators[index]([{k: v for k, v in ex.items() if k != "task_index"} for ex in examples])
        batch["task_index"] = torch.full((len(examples),), index, dtype=torch.long)
        return batch
