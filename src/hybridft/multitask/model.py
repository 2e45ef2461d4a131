"""A shared encoder with one transformers task model per task.

Each task keeps a plain transformers model (``BertForSequenceClassification``,
``BertForTokenClassification``...) whose base model *is* the shared encoder object, so selectors,
LoRA and adapters see one encoder, and each task model saves and loads with plain transformers.
Parameter names: ``encoder.*`` for the shared encoder, ``heads.<task>.*`` for each head.
"""

from __future__ import annotations

import torch
from torch import nn


class MultiTaskModel(nn.Module):
    base_model_prefix = "encoder"  # what architecture.py treats as the pretrained base

    def __init__(self, task_models: dict[str, nn.Module], share: bool = True):
        """``share=False`` keeps each task model's own encoder (after task-specific stages);
        ``encoder`` is then the first task's."""
        super().__init__()
        first = next(iter(task_models.values()))
        prefix = first.base_model_prefix
        self.encoder = getattr(first, prefix)
        self.shared = share
        if share:
            for model in task_models.values():
                setattr(model, prefix, self.encoder)  # one encoder object for every task
        self.heads = nn.ModuleDict(task_models)
        self.task_names = list(task_models)
        self.config = self.encoder.config

    def forward(self, task_index, **inputs):
        index = int(task_index.flatten()[0]) if torch.is_tensor(task_index) else int(task_index)
        return self.heads[self.task_names[index]](**inputs)

    def get_input_embeddings(self):
        return self.encoder.get_input_embeddings()

    def task_model(self, name: str) -> nn.Module:
        return self.heads[name]


def unshared(model: MultiTaskModel) -> MultiTaskModel:
    """The same tasks, each with its own copy of the encoder (MT-DNN's task-specific stage)."""
    import copy

    return MultiTaskModel({n: copy.deepcopy(model.task_model(n)) for n in model.task_names}, share=False)
