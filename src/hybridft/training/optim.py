"""Optimizer and learning-rate schedule for the trainable parameters of a stage."""

from __future__ import annotations

import torch
from transformers import get_scheduler

from ..optimizers import OPTIMIZERS, parameter_groups

__all__ = ["build_optimizer", "build_scheduler", "parameter_groups"]


def build_optimizer(spec, model: torch.nn.Module, lr_overrides: dict[str, float] | None = None, extra: tuple = ()):
    if spec.name in OPTIMIZERS.names():  # GaLore, APOLLO, Adam-mini, BAdam: hybridft.optimizers
        return OPTIMIZERS.build(spec, model=model, lr_overrides=lr_overrides, extra=extra)
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
