"""Objectives decide WHAT THE LOSS IS. One file per method, registered by name."""

from . import task  # noqa: F401  (importing registers it)
from .base import Objective

__all__ = ["Objective"]
