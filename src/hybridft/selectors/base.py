"""What every selector is: it may change the model (insert modules) and names what trains.

Hook points, called by the training loop in this order:
  prepare(model) -> model      before the optimizer exists (may wrap or insert modules)
  trainable(model) -> names    the parameters this selector trains (the stage takes the union)
  after_backward(model)        e.g. zero the gradients of masked entries
  after_step(model)            e.g. restore masked entries that weight decay moved
  finish(model) -> model       at stage end (e.g. merge LoRA back into plain weights)
"""

from __future__ import annotations

from torch import nn


class Selector:
    def __init__(self, config):
        self.config = config

    def prepare(self, model: nn.Module) -> nn.Module:
        return model

    def trainable(self, model: nn.Module) -> set[str]:
        raise NotImplementedError

    def after_backward(self, model: nn.Module) -> None:
        pass

    def after_step(self, model: nn.Module) -> None:
        pass

    def finish(self, model: nn.Module) -> nn.Module:
        return model
