"""Editing recipe data before it is validated, and saying why validation refused it: the pieces that
the command line's overrides and a search space's trials share. Below the schema: nothing here
imports it."""

from __future__ import annotations

import yaml
from pydantic import ValidationError

from ..errors import HybridftError
from ..optimizers import OPTIMIZERS

OPTIMIZER_TAGS = ("torch", *OPTIMIZERS.names())  # the optimizer union's tags (recipe.sections.AnyOptimizer)


def format_validation_error(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        parts = list(e["loc"])
        # drop the stage-kind tag pydantic inserts (stages.0.train.optimizer -> stages.0.optimizer)
        parts = [p for i, p in enumerate(parts) if not (p in ("train", "mix") and i >= 2 and parts[i - 2] == "stages")]
        # and the optimizer entry's (stages.0.optimizer.galore_adamw.rank -> stages.0.optimizer.rank)
        parts = [p for i, p in enumerate(parts) if not (i >= 1 and parts[i - 1] == "optimizer" and p in OPTIMIZER_TAGS)]
        loc = ".".join(str(p) for p in parts) or "(recipe)"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return lines


def set_path(data: dict, key: str, value, what: str) -> None:
    """``data[a][b][0][c] = value`` for the key ``a.b.0.c`` (mappings are created on the way)."""
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts):
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise HybridftError(f"{what}: {part!r} is not an index of a list of {len(node)}")
            part = int(part)
        elif not isinstance(node, dict):
            raise HybridftError(f"{what}: {'.'.join(parts[:i])} is not a mapping")
        if i == len(parts) - 1:
            node[part] = value
        else:
            if isinstance(node, dict) and node.get(part) is None:
                node[part] = {}
            node = node[part]


def yaml_text(value) -> str:
    """``value`` as one YAML flow value that ``override_value`` reads back as it was (.nan included)."""
    return yaml.safe_dump(value, default_flow_style=True, width=float("inf")).removesuffix("\n...\n").strip()
