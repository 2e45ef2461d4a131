"""Selectors decide WHICH PARAMETERS TRAIN. One file per method, registered by name."""

from . import adapter, full, groups, importance, layers, lora  # noqa: F401  (importing registers them)
from .base import Selector

__all__ = ["Selector"]
