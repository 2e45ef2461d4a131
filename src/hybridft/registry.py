"""Name -> (config model, builder) registries for selectors and objectives.

Adding a method is one file that defines a pydantic config with ``name: Literal["<name>"]`` and a
class registered here; the recipe's discriminated unions are built from these registries.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    name: str
    config: type
    builder: type

    @property
    def doc(self) -> str:
        text = (self.builder.__doc__ or "").strip()
        return text.splitlines()[0] if text else ""


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, config: type):
        """Class decorator: ``@SELECTORS.register(FullConfig)`` on the builder class."""
        name = config.model_fields["name"].default

        def wrap(builder: type) -> type:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = Entry(name, config, builder)
            return builder

        return wrap

    def build(self, config, **kwargs):
        return self._entries[config.name].builder(config, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def configs(self) -> tuple[type, ...]:
        return tuple(e.config for e in self.entries())


SELECTORS = Registry("selector")
OBJECTIVES = Registry("objective")
