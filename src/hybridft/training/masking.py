"""The union of a stage's selectors, and entry masks that keep unselected entries bit-identical.

Zeroing masked gradients is not enough: AdamW's decoupled weight decay (and momentum carried from
earlier updates) still moves entries whose gradient is zero. So after every optimizer step the
unselected entries are copied back from their values at the start of the stage.
"""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor


def union_selection(model, selectors) -> tuple[set[str], dict[str, torch.Tensor]]:
    """Names trained whole, and masks of the names trained in part."""
    whole: set[str] = set()
    partial: dict[str, torch.Tensor] = {}
    named = [s.trainable(model) for s in selectors]
    for s, mine in zip(selectors, named, strict=True):
        whole |= mine
        s.with_others(set().union(*(other for other in named if other is not mine)))  # e.g. LISA leaves them on
        for name, mask in s.masks(model).items():
            partial[name] = mask if name not in partial else (partial[name] | mask)
    for name in list(partial):
        if name in whole or bool(partial[name].all()):
            whole.add(name)
            del partial[name]
    return whole, partial


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded (FSDP) tensor, which in-place changes reach; a plain tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


class EntryMasks:
    """On each process's shard of each tensor: ``shard(mask, param)`` cuts a whole mask as the
    parameter is cut (the identity when nothing is sharded)."""

    def __init__(self, model, masks: dict[str, torch.Tensor], shard=lambda mask, param: mask):
        params = dict(model.named_parameters())
        self.items = [(params[n], shard(m, params[n]).to(local(params[n]).device), local(params[n]).detach().clone())
                      for n, m in masks.items()]

    def zero_unselected_grads(self) -> None:
        for p, mask, _ in self.items:
            if p.grad is not None:
                local(p.grad).mul_(mask)

    def restore_unselected(self) -> None:
        with torch.no_grad():
            for p, mask, original in self.items:
                values = local(p)
                torch.where(mask, values, original, out=values)

    @staticmethod
    def count(masks: dict[str, torch.Tensor]) -> int:
        return sum(int(m.sum()) for m in masks.values())
