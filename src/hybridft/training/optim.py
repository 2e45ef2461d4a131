"""Optimizer and learning-rate schedule for the trainable parameters of a stage."""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor
from transformers import get_scheduler


def parameter_groups(model: torch.nn.Module, weight_decay: float, lr: float,
                     lr_overrides: dict[str, float] | None = None, extra: tuple = ()) -> list[dict]:
    """Biases and norm weights (1-d tensors) get no weight decay, as in BERT's recipe; selectors may
    give some parameters their own learning rate. ``extra`` are parameters outside the model that
    train with it (an objective's MLM head)."""
    groups: dict[tuple[bool, float, bool], list] = {}
    named = [*model.named_parameters(), *((f"objective.{i}", p) for i, p in enumerate(extra))]
    for name, p in named:
        if p.requires_grad:
            # sharded (FSDP) and whole tensors never share a group: the fused update takes one kind
            key = (p.ndim >= 2, (lr_overrides or {}).get(name, lr), isinstance(p, DTensor))
            groups.setdefault(key, []).append(p)
    return [{"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr": group_lr}
            for (decay, group_lr, _), ps in groups.items()]


def build_optimizer(spec, model: torch.nn.Module, lr_overrides: dict[str, float] | None = None, extra: tuple = ()):
    groups = parameter_groups(model, spec.weight_decay, spec.lr, lr_overrides, extra)
    if spec.name in ("adamw", "adam"):
        cls = torch.optim.AdamW if spec.name == "adamw" else torch.optim.Adam
        # fused: one kernel for the whole update (CPU and GPU), the fastest implementation in torch
        return cls(groups, lr=spec.lr, betas=spec.betas, eps=spec.eps, fused=True)
    if spec.name == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum)
    if spec.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=spec.lr, momentum=spec.momentum, eps=spec.eps)
    raise ValueError(spec.name)


def build_scheduler(spec, optimizer, total_steps: int):
    warmup = spec.warmup_steps if spec.warmup_steps is not None else int(spec.warmup_ratio * total_steps)
    return get_scheduler(spec.name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
