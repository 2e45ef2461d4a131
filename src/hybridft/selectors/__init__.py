"""Selectors decide WHICH PARAMETERS TRAIN. One file per method, registered by name."""

from . import adapter, full, groups, importance, layers, lora  # noqa: F401  (importing registers them)
from .base import Selector

__all__ = ["Selector", "stage_structure"]


def stage_structure(model, spec):
    """The model with the modules a completed stage left in it (adapters, LoRA) inserted again."""
    from ..registry import SELECTORS

    for config in getattr(spec, "select", ()):  # mix stages change no structure
        model = SELECTORS.build(config).restore_structure(model)
    return model
