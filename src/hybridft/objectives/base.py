"""What every objective is: a weighted loss term computed from the model, the batch and the shared
forward pass. Objectives never mutate the batch, so their order never matters.

Hook points, called by the training loop:
  on_stage_start(run)                  e.g. build a teacher, label an unlabeled pool
  loss(model, batch, outputs) -> T     a scalar; the loop adds ``weight * loss`` and logs it
  on_stage_end(run)
"""

from __future__ import annotations

import torch


class Objective:
    def __init__(self, config):
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def weight(self) -> float:
        return self.config.weight

    def on_stage_start(self, run) -> None:
        pass

    def loss(self, model, batch: dict, outputs) -> torch.Tensor:
        raise NotImplementedError

    def on_stage_end(self, run) -> None:
        pass
