"""`full`: every parameter trains (plain fine-tuning)."""

from __future__ import annotations

from typing import Literal

from ..registry import SELECTORS
from .base import Selector, SelectorSpec


class FullConfig(SelectorSpec):
    name: Literal["full"] = "full"


@SELECTORS.register(FullConfig)
class Full(Selector):
    """All parameters train: classic full fine-tuning."""

    def trainable(self, model):
        return {n for n, _ in model.named_parameters()}
