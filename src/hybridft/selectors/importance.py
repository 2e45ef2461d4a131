"""`importance`: train only the parameter entries whose gradients matter most for the task.

Scores every entry over K training batches with the mean absolute gradient |dL/dθ| or the
diagonal Fisher (mean squared gradient; Kirkpatrick et al., 2017), then keeps entries by
``density`` (top fraction, global or per tensor), by ``threshold``, or whole tensors ranked by
their mean score (``granularity: tensor``). Related: FISH masks (Sung et al., 2021). The loop
zeroes the gradients of unselected entries and restores them after each step, so they stay
bit-identical even under AdamW weight decay. A list of densities or thresholds is decided by
k-fold cross-validation (``choose_by: cv``) or a held-out split (``holdout``) of the training data.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator

from .. import architecture
from ..data.batching import my_batches
from ..registry import SELECTORS
from ..tasks import GENERATIVE_TASKS, MULTI_TASK, task_loss, token_positions
from .base import Selector, SelectorSpec


class ImportanceSpec(SelectorSpec):
    name: Literal["importance"] = "importance"
    score: Literal["gradient", "fisher"] = "gradient"
    batches: int = Field(16, ge=1, description="K training batches to score on")
    density: float | list[float] | None = Field(None, description="fraction of entries to train, in (0, 1]")
    threshold: float | list[float] | None = Field(None, description="train entries scoring at least this")
    granularity: Literal["global", "per_tensor", "tensor"] = "global"
    choose_by: Literal["cv", "holdout"] | None = Field(None, description="how to pick from a list of values")
    folds: int = Field(3, ge=2)
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    search_steps: int | None = Field(None, gt=0, description="training steps per candidate (default: stage's)")
    head: bool | None = Field(None, description="the task head trains whole; default: when it is new (classification, tagging), not a language model's pretrained LM head")
    data_dependent: ClassVar[bool] = True

    def unsupported(self, task: str) -> str | None:
        if self.choose_by and task in (*GENERATIVE_TASKS, MULTI_TASK):
            where = "single-task recipes" if task == MULTI_TASK else "classification and tagging"
            return f"chooses its value on held-out data, which is for {where}; give one value"
        return super().unsupported(task)

    @model_validator(mode="after")
    def _check(self):
        if (self.density is None) == (self.threshold is None):
            raise ValueError("give exactly one of density or threshold")
        values = self.candidates
        if self.density is not None and not all(0 < v <= 1 for v in values):
            raise ValueError(f"density must be in (0, 1], got {values}")
        if self.threshold is not None and not all(v >= 0 for v in values):
            raise ValueError(f"threshold must be >= 0, got {values}")
        if len(values) > 1 and self.choose_by is None:
            raise ValueError("a list of values needs choose_by: cv or holdout")
        if not values:
            raise ValueError("the list of values is empty")
        return self

    @property
    def candidates(self) -> list[float]:
        value = self.density if self.density is not None else self.threshold
        return list(value) if isinstance(value, list) else [value]


def importance_scores(model, examples, collator, batches: int, batch_size: int, kind: str, seed: int,
                      causal: bool = False, processes=None) -> dict:
    """Mean |g| or mean g² per entry over ``batches`` seeded batches, in eval mode (no dropout), of
    the task loss (a causal LM's next-token loss when ``causal``). With several ``processes`` each
    scores every world-th batch and the scores are added up in the order one process would: the same
    scores, bit for bit."""
    was_training = model.training
    model.eval()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    named = dict(model.named_parameters())
    scores = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in named.items()}
    n = min(batches, math.ceil(len(order) / batch_size))
    world = processes.world if processes is not None else 1
    for turn, b in enumerate(my_batches(n, processes)):
        score = batch_score(model, named, examples, collator, order[b * batch_size:(b + 1) * batch_size], kind, causal)
        shares = processes.gather_tensor(score) if world > 1 else [score]
        for rank, share in enumerate(shares):
            if turn * world + rank < n:  # the last turn's repeated batches are not counted
                add_flat(scores, share)
    for name, p in named.items():
        p.requires_grad_(flags[name])
    model.train(was_training)
    return {k: v / n for k, v in scores.items()}


def batch_score(model, named: dict, examples, collator, chunk: list[int], kind: str, causal: bool) -> torch.Tensor:
    """One batch's |g| or g² of every entry, flat in parameter order (zeros where no gradient)."""
    task = examples[chunk[0]].get("task_index")  # multi-task: a batch holds one task
    chunk = [i for i in chunk if examples[i].get("task_index") == task]
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collator([examples[i] for i in chunk]).items()}
    labels = batch.pop("labels")
    task_loss(*token_positions(model(**batch).logits, labels, causal)).backward()
    parts = []
    for p in named.values():
        grad = torch.zeros_like(p, dtype=torch.float32) if p.grad is None else \
            p.grad.abs() if kind == "gradient" else p.grad.square()
        parts.append(grad.float().flatten())
        p.grad = None
    return torch.cat(parts)


def add_flat(scores: dict, flat: torch.Tensor) -> None:
    start = 0
    for s in scores.values():
        s += flat[start:start + s.numel()].view_as(s)
        start += s.numel()


def select_entries(scores: dict, granularity: str, density: float | None = None,
                   threshold: float | None = None) -> dict[str, torch.Tensor]:
    """Boolean masks of the kept entries (pure function of the scores)."""
    if threshold is not None:
        if granularity == "tensor":
            return {n: torch.full_like(s, bool(s.mean() >= threshold), dtype=torch.bool) for n, s in scores.items()}
        return {n: s >= threshold for n, s in scores.items()}
    if granularity == "per_tensor":
        masks = {}
        for n, s in scores.items():
            keep = torch.zeros(s.numel(), dtype=torch.bool, device=s.device)
            keep[torch.topk(s.flatten(), max(1, math.ceil(density * s.numel()))).indices] = True
            masks[n] = keep.view_as(s)
        return masks
    if granularity == "tensor":
        total, budget, masks = sum(s.numel() for s in scores.values()), 0, {}
        for n in sorted(scores, key=lambda n: -float(scores[n].mean())):
            take = budget < density * total
            masks[n] = torch.full_like(scores[n], take, dtype=torch.bool)
            budget += scores[n].numel() if take else 0
        return masks
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[torch.topk(flat, max(1, math.ceil(density * flat.numel()))).indices] = True
    masks, start = {}, 0
    for n, s in scores.items():
        masks[n] = keep[start:start + s.numel()].view_as(s)
        start += s.numel()
    return masks


@SELECTORS.register(ImportanceSpec)
class Importance(Selector):
    """Gradient-importance masks: only the highest-scoring parameter entries train."""

    def __init__(self, config):
        super().__init__(config)
        self._masks: dict[str, torch.Tensor] = {}
        self.value = config.candidates[0]
        self.candidate_scores: dict[float, float] = {}

    def search_values(self) -> list[float]:
        return self.config.candidates if len(self.config.candidates) > 1 else []

    def trial_config(self, value: float) -> ImportanceSpec:
        key = "density" if self.config.density is not None else "threshold"
        return self.config.model_copy(update={key: value, "choose_by": None})

    def choose(self, value: float, scores: dict[float, float]) -> None:
        self.value, self.candidate_scores = value, scores

    def fit(self, model, run, stage):
        head = set(architecture.head_param_names(model)) if architecture.trains_head(self.config.head, model) else set()
        scores = importance_scores(model, run.data.train, run.collator, self.config.batches, stage.batch_size,
                                   self.config.score, run.recipe.seed, causal=run.data.task == "causal_lm",
                                   processes=run.processes)
        scores = {n: s for n, s in scores.items() if n not in head}
        by_density = self.config.density is not None
        self._masks = select_entries(scores, self.config.granularity, density=self.value if by_density else None,
                                     threshold=None if by_density else self.value)

    def trainable(self, model):
        return set(architecture.head_param_names(model)) if architecture.trains_head(self.config.head, model) else set()

    def masks(self, model):
        return {n: m for n, m in self._masks.items() if bool(m.any())}

    def state_dict(self):
        values = sorted(self.candidate_scores)
        return {**{f"mask/{n}": m for n, m in self._masks.items()}, "value": torch.tensor([self.value]),
                "candidates": torch.tensor(values + [self.candidate_scores[v] for v in values], dtype=torch.float64)}

    def load_state_dict(self, state):
        self._masks = {k[5:]: v for k, v in state.items() if k.startswith("mask/")}
        self.value = float(state["value"][0])
        c = state["candidates"].tolist()
        self.candidate_scores = dict(zip(c[: len(c) // 2], c[len(c) // 2:], strict=True))

    def summary(self):
        selected = {n: int(m.sum()) for n, m in self._masks.items()}
        return {"name": "importance", "value": self.value, "by": "density" if self.config.density is not None
                else "threshold", "selected_entries": sum(selected.values()),
                "scored_entries": sum(m.numel() for m in self._masks.values()),
                "selected_per_tensor": {n: c for n, c in selected.items() if c},
                "candidates": {str(k): v for k, v in self.candidate_scores.items()}}
