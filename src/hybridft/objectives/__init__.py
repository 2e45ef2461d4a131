"""Objectives decide WHAT THE LOSS IS. One file per method, registered by name."""

from . import adversarial, contrastive, distill, mlm, pseudo_label, regularize, task  # noqa: F401  (registers them)
from .base import Objective

__all__ = ["Objective"]
