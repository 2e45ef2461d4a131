"""What every selector is: it may change the model (insert modules) and names what trains.

Hook points, called by the training loop in this order:
  prepare(model, run) -> model   structure only: insert or wrap modules (LoRA, adapters)
  search_values(), choose(...)   a value chosen on held-out training data (importance densities)
  fit(model, run, stage)         data-dependent state (importance scores); skipped on resume,
                                 where state_dict()/load_state_dict() restore it instead
  trainable(model) -> names      parameters this selector trains whole
  lr_overrides(model, lr)        per-parameter learning rates, if it has its own (lr: what they
                                 would have otherwise)
  masks(model) -> {name: bool}   parameters it trains only in part (entry masks)
  with_others(names)             what the other selectors of the stage train whole
  before_step(model, stage)      before each optimizer step's first micro-batch (LISA's draws)
  after_backward(model), after_step(model)
  export(model, run_dir)         at stage end, what it saves beside the model (a PEFT adapter folder)
  finish(model) -> model         at stage end (e.g. merge LoRA back into plain weights)
The stage trains the union: a tensor named whole by any selector trains whole; otherwise the OR of
the masks that name it.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..spec import MethodSpec


def peft_targets(config, model: nn.Module) -> set[str]:
    """The modules a peft config (LoRA, LoHa...) wraps in ``model``, by peft's own matching rule."""
    from peft.tuners.tuners_utils import check_target_module_exists

    return {name for name, _ in model.named_modules() if name and check_target_module_exists(config, name)}


class SelectorSpec(MethodSpec):
    """A selector's recipe entry and what it declares."""

    role: ClassVar[str] = "selector"
    data_dependent: ClassVar[bool] = False  # what it selects is found from the data at stage start
    saves: ClassVar[tuple[str, ...]] = ()  # what it writes next to the saved model


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

    def lr_overrides(self, model: nn.Module, lr: float) -> dict[str, float]:
        """Learning rates for some parameters, instead of ``lr`` (the stage's, or its group's)."""
        return {}

    def adapts(self, model: nn.Module) -> set[str]:
        """The modules this entry will insert its own modules into (LoRA's projections), before
        ``prepare``: a second entry of its type on one of them would replace what this one inserted."""
        return set()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def summary(self) -> dict:
        return {}

    def with_others(self, names: set[str]) -> None:
        """What the stage's other selectors train whole (a selector that switches its own parameters
        on and off during the stage leaves these alone)."""

    def before_step(self, model: nn.Module, stage) -> None:
        """Before the first micro-batch of each optimizer step (``stage``: the running Stage)."""

    def after_backward(self, model: nn.Module) -> None:
        pass

    def after_step(self, model: nn.Module) -> None:
        pass

    def finish(self, model: nn.Module) -> nn.Module:
        return model

    def parts(self) -> list[Selector]:
        """The selectors it is made of (itself, or a group's members)."""
        return [self]

    def search_values(self) -> list:
        """Values to choose between on held-out training data before the stage (none: it has one)."""
        return []

    def trial_config(self, value):
        """Its recipe entry with ``value`` chosen, for the trial runs that score the values."""
        raise NotImplementedError

    def choose(self, value, scores: dict) -> None:
        """Take the value the search chose (and remember every value's score for the report)."""

    def export(self, model: nn.Module, run_dir) -> None:
        """Write what it ``saves`` beside the model, when it is the whole recipe (see Recipe.single_selector)."""
