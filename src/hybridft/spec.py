"""Base class of every recipe section: unknown keys are errors that name the valid keys."""

from __future__ import annotations

import difflib

from pydantic import BaseModel, ConfigDict, model_validator


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

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
