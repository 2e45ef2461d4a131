"""What every optimizer entry shares: the registry, the Adam keys, the parameter groups, and the
check that the package an optimizer comes from is installed.

The plain torch optimizers (``adamw``, ``adam``, ``sgd``, ``rmsprop``) are one entry
(``recipe.sections.OptimizerSpec``) built in ``training.optim``; the others are one file each here: a
spec with its keys, and ``@OPTIMIZERS.register(TheSpec)`` on the function ``build(spec, model,
lr_overrides, extra)`` that returns the optimizer of a stage's trained parameters.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Annotated, ClassVar

import torch
from pydantic import ConfigDict, Field
from torch.distributed.tensor import DTensor

from ..errors import HybridftError
from ..registry import Registry
from ..spec import Spec

OPTIMIZERS = Registry("optimizer")

Beta = Annotated[float, Field(ge=0, lt=1)]  # Adam's decay rates: 1 or more never forgets, and diverges


def _name_is_required(schema: dict) -> None:
    """In the JSON Schema an entry is told apart by its name: ``{lr: 1e-4}`` (no name) is adamw's alone."""
    schema["required"] = sorted({*schema.get("required", []), "name"})


class OptimizerEntrySpec(Spec):
    """An optimizer entry beyond torch's own: Adam's keys, and what its method declares."""

    model_config = ConfigDict(json_schema_extra=_name_is_required)
    package: ClassVar[str | None] = None  # the PyPI package it comes from (None: hybridft's own)
    module: ClassVar[str | None] = None  # what that package is imported as
    install: ClassVar[str] = ""  # what to pip install

    name: str  # each entry's Literal; declared here so that it comes first in a saved recipe
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)

    def missing_package(self) -> str | None:
        """The one line that says the package is not installed (None when it is)."""
        if self.module is None or importlib.util.find_spec(self.module) is not None:
            return None
        return (f"{self.name} needs the {self.package} package, which is not installed: pip install "
                f"{self.install}")

    def problem(self, model: torch.nn.Module, trained: set[str]) -> str | None:
        """Why this entry cannot train ``trained`` (parameter names) of ``model``, a weightless skeleton
        with the stage's selectors in place (None when it can)."""
        return self.missing_package()


def import_package(spec: OptimizerEntrySpec):
    """The optimizer's package, or the one line naming it."""
    missing = spec.missing_package()
    if missing:
        raise HybridftError(missing)
    return importlib.import_module(spec.module)


def import_part(spec: OptimizerEntrySpec, part: str):
    """One module of the optimizer's package, without the package's ``__init__``: galore-torch's and
    apollo-torch's import their 8-bit variants, hence bitsandbytes, which hybridft does not use (and
    whose import prints warnings about CPU kernels, or fetches one from the Hub). The package's
    folder is loaded under a private name of hybridft's, so a ``import galore_torch`` elsewhere in the
    process gets the package as its authors wrote it."""
    missing = spec.missing_package()
    if missing:
        raise HybridftError(missing)
    private = f"{__name__.rpartition('.')[0]}._{spec.module}"
    if private not in sys.modules:
        package = types.ModuleType(private)
        package.__path__ = list(importlib.util.find_spec(spec.module).submodule_search_locations)
        sys.modules[private] = package
    return importlib.import_module(f"{private}.{part}")


def parameter_groups(model: torch.nn.Module, weight_decay: float, lr: float,
                     lr_overrides: dict[str, float] | None = None, extra: tuple = ()) -> list[dict]:
    """Biases and norm weights (1-d tensors) get no weight decay, as in BERT's recipe; selectors may
    give some parameters their own learning rate. ``extra`` are parameters outside the model that
    train with it (an objective's MLM head)."""
    groups: dict[tuple[bool, float, bool], list] = {}
    for name, p in trained_parameters(model, extra):
        # sharded (FSDP) and whole tensors never share a group: the fused update takes one kind
        key = (p.ndim >= 2, (lr_overrides or {}).get(name, lr), isinstance(p, DTensor))
        groups.setdefault(key, []).append(p)
    return [{"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr": group_lr}
            for (decay, group_lr, _), ps in groups.items()]


def trained_parameters(model: torch.nn.Module, extra: tuple = ()) -> list[tuple[str, torch.nn.Parameter]]:
    named = [*model.named_parameters(), *((f"objective.{i}", p) for i, p in enumerate(extra))]
    return [(n, p) for n, p in named if p.requires_grad]


def refuse_sharded(spec, model: torch.nn.Module, why: str) -> None:
    """FSDP hands each process a shard of every weight (a DTensor); ``why`` the optimizer needs whole ones."""
    if any(isinstance(p, DTensor) for p in model.parameters()):
        raise HybridftError(f"optimizer {spec.name} does not run under distributed.strategy fsdp: {why}; use "
                            "ddp (distributed.strategy: ddp) or one process")
