"""Selectors decide WHICH PARAMETERS TRAIN. One file per method, registered by name."""

from ..errors import HybridftError
from ..pooling import pooled_as
from ..registry import SELECTORS
from . import adapter, full, groups, importance, layers, lisa, lora, peft_tuner, spectrum  # noqa: F401  (importing registers them)
from .base import Selector, SelectorSpec

__all__ = ["Selector", "SelectorSpec", "check_one_entry_per_module", "since_restart", "stage_structure"]


def check_one_entry_per_module(selectors, model) -> None:
    """Two entries of one selector type on one module (``[{lora r:8 query}, {lora r:4 query}]``):
    the second's modules would replace the first's there, which would then silently not train."""
    adapted: dict[tuple, dict[str, int]] = {}  # (selector type, peft type) -> module -> the entry adapting it
    for index, selector in enumerate(selectors):
        name = selector.config.name
        earlier = adapted.setdefault((name, getattr(selector.config, "type", None)), {})
        mine = selector.adapts(model)
        both = sorted(m for m in mine if m in earlier)
        if both:
            more = f" (and {len(both) - 1} more)" if len(both) > 1 else ""
            raise HybridftError(f"select entries {earlier[both[0]]} and {index} are both {name} on {both[0]}{more}: one "
                                f"{name} per module; give the entries other modules (target_modules, layers) or "
                                "make them one entry")
        earlier.update(dict.fromkeys(mine, index))


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
