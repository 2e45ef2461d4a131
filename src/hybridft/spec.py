"""Base classes of every recipe section, and of a method's recipe entry with its declared capabilities.

``Spec``: unknown keys are errors that name the valid keys. ``MethodSpec``: the entry of a selector or
objective (``{name: lora, r: 8}``) declares what its method supports, so the recipe checks every
method alike and never names one.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, model_validator

from .tasks import ALL_TASKS

STAGE_REF = "stage:"  # teacher: stage:<name>, the model as that earlier stage left it
TEACHER_KEYWORDS = ("pretrained", "previous", "fine_tuned")


def teacher_is_folder(teacher: str) -> bool:
    """A teacher named by a model folder, not by a keyword or an earlier stage."""
    return teacher not in (*TEACHER_KEYWORDS, "current") and not teacher.startswith(STAGE_REF)


class Spec(BaseModel):
    # allow_inf_nan: a nan or inf anywhere in a recipe (lr: .inf, scales: [.nan]) only ever trains or
    # saves a NaN model; every float of every section refuses them, subclasses included
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _unknown_keys(cls, data):
        if isinstance(data, dict):
            valid = set(cls.model_fields)
            unknown = [k for k in data if k not in valid]
            if unknown:
                key = unknown[0]
                close = difflib.get_close_matches(str(key), valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown key {key!r}{hint}; valid keys: {', '.join(sorted(valid))}")
        return data


@dataclass(frozen=True)
class StageContext:
    """What a method's recipe-level check sees of the recipe around its stage."""

    task: str
    index: int  # the stage's position in the recipe
    earlier: tuple[str, ...]  # the names of the stages before it
    mix_before: bool  # a mix stage comes before it


class MethodSpec(Spec):
    role: ClassVar[str] = "method"  # "selector" or "objective", for messages
    tasks: ClassVar[tuple[str, ...]] = ALL_TASKS  # the recipe tasks it works for

    def unsupported(self, task: str) -> str | None:
        """Why this entry, as configured, cannot serve ``task`` (None when it can)."""
        if task in self.tasks:
            return None
        return "is not supported in multi-task recipes" if task == "multi_task" else f"is not supported for {task}"

    def check_in(self, ctx: StageContext) -> None:
        """Checks that need the recipe around the stage (e.g. that a named teacher exists); raise ValueError."""

    def teachers(self) -> list[str]:
        """The frozen models it learns from (most methods: none)."""
        return []
