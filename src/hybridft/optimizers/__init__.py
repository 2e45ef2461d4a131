"""Optimizers beyond torch's own (low-memory full-parameter training), one file each, registered by
name; the recipe's ``optimizer`` entry is torch's (``adamw``, ``adam``, ``sgd``, ``rmsprop``) or one of these."""

from . import adam_mini, apollo, badam, galore  # noqa: F401  (importing registers them)
from .base import OPTIMIZERS, OptimizerEntrySpec, parameter_groups

__all__ = ["OPTIMIZERS", "OptimizerEntrySpec", "parameter_groups"]
