"""What every selector is: it may change the model (insert modules) and names what trains.

Hook points, called by the training loop in this order:
  prepare(model, run) -> model   structure only: insert or wrap modules (LoRA, adapters)
  fit(model, run, stage)         data-dependent state (importance scores); skipped on resume,
                                 where state_dict()/load_state_dict() restore it instead
  trainable(model) -> names      parameters this selector trains whole
  lr_overrides(model)            per-parameter learning rates, if it has its own
  masks(model) -> {name: bool}   parameters it trains only in part (entry masks)
  after_backward(model), after_step(model)
  finish(model) -> model         at stage end (e.g. merge LoRA back into plain weights)
The stage trains the union: a tensor named whole by any selector trains whole; otherwise the OR of
the masks that name it.
"""

from __future__ import annotations

import torch
from torch import nn


class Selector:
    # True when modules this selector inserts stay in the model after its stage (adapters)
    keeps_structure = False

    def __init__(self, config):
        self.config = config

    def prepare(self, model: nn.Module, run=None) -> nn.Module:
        return model

    def restore_structure(self, model: nn.Module) -> nn.Module:
        """Re-insert what a completed stage of this selector left in the model (for resume)."""
        return self.prepare(model, None) if self.keeps_structure else model

    def fit(self, model: nn.Module, run, stage) -> None:
        pass

    def trainable(self, model: nn.Module) -> set[str]:
        raise NotImplementedError

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {}

    def lr_overrides(self, model: nn.Module) -> dict[str, float]:
        """Learning rates for some parameters, instead of the stage optimizer's lr."""
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def summary(self) -> dict:
        return {}

    def after_backward(self, model: nn.Module) -> None:
        pass

    def after_step(self, model: nn.Module) -> None:
        pass

    def finish(self, model: nn.Module) -> nn.Module:
        return model
