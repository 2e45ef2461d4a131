"""Optimizer and learning-rate schedule for the trainable parameters of a stage."""

from __future__ import annotations

import torch
from transformers import get_scheduler


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Biases and norm weights (1-d tensors) get no weight decay, as in BERT's recipe."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0})
            if g["params"]]


def build_optimizer(spec, model: torch.nn.Module) -> torch.optim.Optimizer:
    groups = parameter_groups(model, spec.weight_decay)
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
