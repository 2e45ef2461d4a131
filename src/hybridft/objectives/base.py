"""What every objective is: a weighted loss term computed from the model, the batch and the shared
forward pass. Objectives never mutate the batch, so their order never matters.

Hook points, called by the training loop:
  on_stage_start(run)                        e.g. build a teacher, label an unlabeled pool
  on_epoch_start(run, epoch)                 e.g. re-label the pool every N epochs
  loss(model, batch, outputs, ctx) -> T      a scalar; the loop adds ``weight * loss`` and logs it
  on_stage_end(run)
An objective may own parameters that train with the stage (an MLM head) and state that a
checkpoint must keep (a pseudo-labeled pool): ``trainable_parameters`` and ``state_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..data.batching import stream_batch
from ..spec import MethodSpec
from ..tasks import GENERATIVE_TASKS, SINGLE_HEAD_TASKS


class ObjectiveSpec(MethodSpec):
    """An objective's recipe entry and what it declares."""

    role: ClassVar[str] = "objective"
    tasks: ClassVar[tuple[str, ...]] = SINGLE_HEAD_TASKS
    needs_labels: ClassVar[bool] = True  # reads the batch's labels
    needs_pretrained_state: ClassVar[bool] = False  # reads M_pre's weights (kept in memory for it)
    # uses the word embeddings outside the model's forward: fsdp keeps them whole on every process then
    reads_embeddings: ClassVar[bool] = False

    @property
    def key(self) -> str:
        """Its name in logs; two terms of one stage need different keys."""
        return self.name

    @property
    def needs_unlabeled(self) -> bool:
        """Reads the unlabeled pool (``data.unlabeled``)."""
        return getattr(self, "source", "batch") != "batch"

    def unsupported(self, task: str) -> str | None:
        why = super().unsupported(task)
        if why is None and self.needs_unlabeled and task not in SINGLE_HEAD_TASKS:
            kind = "language-model" if task in GENERATIVE_TASKS else "multi-task"
            return f"reads unlabeled text, which {kind} recipes do not have; use source: batch"
        return why


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


@dataclass
class StepContext:
    """What one micro-batch offers besides the batch itself."""

    run: object
    seed: int  # of this stage: objectives derive their own streams from it
    draw: int  # micro-batches drawn so far in this stage (checkpointed with the stage)
    batch_ids: list[int]  # indices of the batch in the stage's example list
    labeled: bool  # whether the batch carries labels (a stage may run over unlabeled text)
    batch_size: int  # of the stage: extra batches have this size (across all processes)
    rank: int = 0  # this process and how many there are: each takes its share of every batch
    world: int = 1
    module: object = None  # the model inside its DDP wrapper, for what is not its forward (embeddings)
    _unlabeled: tuple | None = field(default=None, repr=False)

    def shard(self, ids: list[int]) -> list[int]:
        """This process's share of a global batch (never empty: every process must take a step)."""
        if self.world == 1:
            return ids
        return ids[self.rank::self.world] or [ids[self.rank % len(ids)]]

    @property
    def unlabeled(self) -> dict:
        """A batch of the unlabeled pool, the same for every objective of this micro-batch."""
        if self._unlabeled is None:
            self._unlabeled = self.pool_batch(self.run.data.unlabeled, self.batch_size, self.seed + 7)
        return self._unlabeled[1]

    @property
    def unlabeled_ids(self) -> list[int]:
        self.unlabeled  # noqa: B018  (draws the batch if not yet drawn)
        return self._unlabeled[0]

    def stream_ids(self, n: int, size: int, seed: int) -> list[int]:
        """This micro-batch's indices in an endless seeded stream over n examples (this process's share)."""
        return self.shard(stream_batch(n, size, seed, self.draw))

    def pool_batch(self, pool: list[dict], size: int, seed: int) -> tuple[list[int], dict]:
        ids = self.stream_ids(len(pool), size, seed)
        return ids, self.collate([pool[i] for i in ids])

    def collate(self, examples: list[dict]) -> dict:
        return {k: v.to(self.run.device) for k, v in self.run.collator(examples).items()}


class Objective:
    uses_outputs = True  # reads the loop's shared forward pass of the batch
    needs_hidden_states = False  # ... with every layer's hidden states
    teaches_head = False  # trains the task head without gold labels, so an unlabeled stage is worth evaluating

    def __init__(self, config):
        self.config = config

    @property
    def name(self) -> str:
        return self.config.key

    @property
    def weight(self) -> float:
        return self.config.weight

    def on_stage_start(self, run) -> None:
        pass

    def on_epoch_start(self, run, epoch: int) -> None:
        pass

    def loss(self, model, batch: dict, outputs, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def on_stage_end(self, run) -> None:
        pass

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return []

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def summary(self) -> dict:
        return {}

    def inputs_for(self, batch: dict, ctx: StepContext) -> list[dict]:
        """The inputs of ``source``: the stage's batch, a batch of the unlabeled pool, or both."""
        source = getattr(self.config, "source", "batch")
        if source == "batch":
            return [batch]
        return [ctx.unlabeled] if source == "unlabeled" else [batch, ctx.unlabeled]
