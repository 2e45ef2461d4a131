"""What every merge method is: a function of one tensor's versions (M_pre's and the fine-tuned
models') and a point of its parameters, plus the parameters it searches on validation data."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch


@dataclass(frozen=True)
class MergePoint:
    """One setting of a method's parameters (those it does not use stay None)."""

    alpha: float | None = None  # linear, slerp: the weight of M_pre (0 is the fine-tuned model)
    scale: float | None = None  # task-vector methods: lambda, the merged task vector's factor
    density: float | None = None  # ties, dare: the share of each task vector's entries kept

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in self.as_dict().items())


class MergeMethod:
    name: ClassVar[str]
    about: ClassVar[str]
    searches: ClassVar[tuple[str, ...]]  # the point fields it takes, each searched over mix.<field>s
    several_models: ClassVar[bool] = True  # can merge more than one fine-tuned model with M_pre
    random: ClassVar[bool] = False  # draws random numbers (seeded per tensor)

    def merged(self, pre: torch.Tensor, fines: list[torch.Tensor], weights: torch.Tensor,
               point: MergePoint) -> torch.Tensor:
        raise NotImplementedError


class TaskVectorMethod(MergeMethod):
    """M_pre + scale * combine(task vectors), a task vector being a fine-tuned model minus M_pre
    (Ilharco et al., 2023); ``combine`` is the method."""

    def merged(self, pre, fines, weights, point):
        vectors = [f - pre for f in fines]
        return pre + point.scale * self.combine(vectors, weights, point)

    def combine(self, vectors: list[torch.Tensor], weights: torch.Tensor, point: MergePoint) -> torch.Tensor:
        raise NotImplementedError


def weighted_mean(tensors: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """The fine-tuned models' weighted mean (one model: its tensor, bit for bit)."""
    if len(tensors) == 1:
        return tensors[0].clone()
    w = weights.to(tensors[0].dtype)
    return sum(wi * t for wi, t in zip(w, tensors, strict=True)) / w.sum()


@contextmanager
def quiet_density():
    """peft warns that a density of 1 prunes nothing: here that is a point of the search, not a slip."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The density .* no pruning will be performed")
        yield
