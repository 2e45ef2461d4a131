"""Selectors decide WHICH PARAMETERS TRAIN. One file per method, registered by name."""

from ..pooling import pooled_as
from ..registry import SELECTORS
from . import adapter, full, groups, importance, layers, lora, peft_tuner  # noqa: F401  (importing registers them)
from .base import Selector, SelectorSpec

__all__ = ["Selector", "SelectorSpec", "since_restart", "stage_structure"]


def stage_structure(model, spec):
    """The model with the modules a completed stage left in it (adapters, LoRA) inserted again, and
    the head's mean pooling where the stage used it."""
    model = pooled_as(model, spec)
    for config in getattr(spec, "select", ()):  # mix stages change no structure
        model = SELECTORS.build(config).restore_structure(model)
    return model


def since_restart(stages: list) -> list:
    """The stages whose inserted modules a model still has after running them: none from before the
    last stage that started again from the pretrained weights (``init: pretrained``)."""
    restarts = [i for i, spec in enumerate(stages) if getattr(spec, "init", "continue") == "pretrained"]
    return list(stages[restarts[-1]:]) if restarts else list(stages)
