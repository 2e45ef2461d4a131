"""Objectives decide WHAT THE LOSS IS. One file per method, registered by name."""

from . import regularize, task  # noqa: F401  (importing registers them)
from .base import Objective

__all__ = ["Objective"]
