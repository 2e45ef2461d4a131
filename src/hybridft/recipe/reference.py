"""The recipe reference, generated from the schema: every key path, its type, default and description.

``reference_markdown()`` walks ``Recipe`` (pydantic models: ``model_fields``, annotations, defaults,
``Field(description=...)``) and the selector and objective registries, so the reference cannot drift
from what ``validate`` accepts. The docs site puts it into its reference page at build time;
``hybridft schema --markdown`` prints it.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ..optimizers import OPTIMIZERS
from ..registry import OBJECTIVES, SELECTORS, Entry
from .schema import MixStageSpec, Recipe, StageSpec
from .sections import TORCH_OPTIMIZERS, OptimizerSpec

_CONSTRAINTS = (("gt", "> {}"), ("ge", "≥ {}"), ("lt", "< {}"), ("le", "≤ {}"),
                ("min_length", "at least {} entries"), ("max_length", "at most {} entries"),
                ("pattern", "matches `{}`"))


class _TorchOptimizers:
    """torch's own optimizers: AdamW (the default, fused), Adam, SGD and RMSprop, by `name`."""


# the optimizer entry's sections: torch's optimizers (one entry), then each registered one
OPTIMIZER_ENTRIES = [Entry(", ".join(TORCH_OPTIMIZERS), OptimizerSpec, _TorchOptimizers), *OPTIMIZERS.entries()]


def _method_union(annotation) -> str | None:
    """'selector', 'objective' or 'optimizer' when the annotation is (a list of) such a union."""
    configs = set(_models_in(annotation))
    if configs and configs <= set(SELECTORS.configs()):
        return "selector"
    if configs and configs <= set(OBJECTIVES.configs()):
        return "objective"
    if len(configs) > 1 and configs <= {e.config for e in OPTIMIZER_ENTRIES}:
        return "optimizer"
    return None


def _models_in(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, list, Union, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _strip(annotation):
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _is_list(annotation) -> bool:
    """A list, or an optional list."""
    annotation = _strip(annotation)
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return any(_is_list(a) for a in typing.get_args(annotation))
    return typing.get_origin(annotation) is list


def _type_name(annotation) -> str:
    annotation = _strip(annotation)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args) if len(args) > 1 else f"`{args[0]}`"
    if origin in (Union, types.UnionType):
        kinds = [a for a in args if _strip(a) is not type(None)]
        method = _method_union(annotation)
        if method:
            return f"{'an' if method[0] in 'aeiou' else 'a'} {method} entry"
        if all(isinstance(_strip(a), type) and issubclass(_strip(a), BaseModel) for a in kinds):
            return "mapping"
        name = " or ".join(_type_name(a) for a in kinds)
        return name + " or null" if len(kinds) < len(args) else name
    if origin in (list, tuple, set) or annotation in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return "[" + ", ".join(_type_name(a) for a in args) + "]"
        inner = _type_name(args[0]) if args else "any"
        return f"list of {inner[2:].replace('entry', 'entries')}" if inner.startswith("a ") else f"list of {inner}"
    if origin is dict or annotation is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _constraints(field: FieldInfo) -> str:
    found = []
    for meta in field.metadata:
        for attr, text in _CONSTRAINTS:
            value = getattr(meta, attr, None)
            if value is not None:
                found.append(text.format(value).replace("1 entries", "1 entry"))
    return ", ".join(found)


def _plain(value):
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _default(field: FieldInfo, nested: bool) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "**required**"
    else:
        value = field.default
    if nested and (isinstance(value, BaseModel) or value is None):
        return "(the defaults of its keys)" if value is not None else "`null`"
    text = yaml.safe_dump(_plain(value), default_flow_style=True, width=10_000).strip()
    text = text.removesuffix("...").strip()
    return f"`{text}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _rows(model: type[BaseModel], prefix: str, seen: dict[type, str], skip: tuple[str, ...] = ()) -> list[str]:
    """One table row per key of ``model``, nested sections expanded under their path."""
    rows = []
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        path = f"{prefix}{name}"
        annotation = field.annotation
        method = _method_union(annotation)
        models = [] if method else [m for m in _models_in(annotation) if m is not model]
        is_list = _is_list(annotation)
        type_text = _type_name(annotation)
        description = field.description or ""
        if method:
            anchor = method + "s"
            description += f" (each entry's keys: see [{anchor.title()}](#{anchor}))"
        elif name == "select" and model.__name__ == "GroupSpec":
            type_text = "list of selector entries"
            description += " (any selector but groups; each entry's keys: see [Selectors](#selectors))"
        elif models and models[0] in seen:
            description += f" (the keys of `{seen[models[0]]}`)"
        extra = _constraints(field)
        if extra:
            type_text += f"; {extra}"
        rows.append(f"| `{path}` | {_cell(type_text)} | {_cell(_default(field, bool(models)))} | "
                    f"{_cell(description)} |")
        for sub in models:
            if sub in seen:
                continue
            seen[sub] = path + ("[]" if is_list else "")
            rows += _rows(sub, seen[sub] + ".", seen)
    return rows


_HEADER = ["| key | type | default | description |", "|---|---|---|---|"]


def _table(rows: list[str]) -> list[str]:
    return [*_HEADER, *rows, ""]


def _method_sections(title: str, entries: list[Entry], prefix: str, intro: str) -> list[str]:
    out = [f"## {title}", "", intro, ""]
    for entry in entries:
        out += [f"### `{entry.name}`", "", _cell(entry.doc), ""]
        facts = []
        tasks = getattr(entry.config, "tasks", None)
        if isinstance(tasks, (tuple, list)) and tasks:
            facts.append("tasks: " + ", ".join(f"`{t}`" for t in tasks))
        saves = getattr(entry.config, "saves", ())
        if isinstance(saves, (tuple, list)) and saves:
            facts.append("writes next to the model: " + ", ".join(f"`{s}`" for s in saves))
        if getattr(entry.config, "data_dependent", False) is True:
            facts.append("what it selects is found from the training data when the stage starts")
        if facts:
            out += ["; ".join(facts).capitalize() + ".", ""]
        out += _table(_rows(entry.config, prefix, {}))
    return out


def reference_markdown() -> str:
    """The recipe reference as markdown: a section per recipe section, a table per selector and objective."""
    seen: dict[type, str] = {}
    fields = Recipe.model_fields
    top = [n for n, f in fields.items() if not _models_in(f.annotation) or n == "stages"]
    out = [
        "Every key a recipe accepts, generated from the schema that `hybridft validate` checks "
        "(`hybridft schema --markdown` prints this page). Key paths use `[]` for a list's entries: "
        "`stages[].optimizer.lr` is the `lr` of the `optimizer` of each entry of `stages`. Unknown keys "
        "are errors. Relative paths are relative to the recipe file's folder.",
        "",
        "## Top level",
        "",
        "Besides these keys, `extends: base.yaml` starts the recipe from another one, and a top-level "
        "`mix:` is shorthand for a last stage `{name: mix, mix: {...}}` (see [Mix stages](#mix-stages)).",
        "",
    ]
    top_rows = []
    anchors = {"tasks": "tasks-multi-task"}
    for name, field in fields.items():
        type_text = _type_name(field.annotation)
        description = field.description or ""
        if name == "stages":
            type_text = "list of stages"
            description += " (keys: see [Training stages](#training-stages) and [Mix stages](#mix-stages))"
        elif name not in top:
            type_text = "list of mappings" if _is_list(field.annotation) else "mapping"
            description += f" (keys: see [`{name}`](#{anchors.get(name, name)}))"
        extra = _constraints(field)
        if extra:
            type_text += f"; {extra}"
        top_rows.append(f"| `{name}` | {_cell(type_text)} | {_cell(_default(field, name not in top))} | "
                        f"{_cell(description)} |")
    out += _table(top_rows)
    titles = {"model": "`model`", "data": "`data`", "tasks": "`tasks[]` (multi-task)", "sampling": "`sampling`",
              "generation": "`generation`", "output": "`output`", "compare": "`compare`"}
    for name, field in fields.items():
        if name in top:
            continue
        model = _models_in(field.annotation)[0]
        path = name + ("[]" if _is_list(field.annotation) else "")
        out += [f"## {titles.get(name, f'`{name}`')}", ""]
        if field.description or model.__doc__:
            out += [_cell(field.description or model.__doc__ or ""), ""]
        if model in seen:
            out += [f"The keys of `{seen[model]}`.", ""]
            continue
        seen[model] = path
        out += _table(_rows(model, path + ".", seen))
        if name == "data":
            out += ["In a multi-task recipe each task's `data` (`tasks[].data`) has these keys too.", ""]
    out += ["## Training stages", "", _cell(StageSpec.__doc__ or ""), ""]
    out += _table(_rows(StageSpec, "stages[].", seen))
    out += ["## Mix stages", "", _cell(MixStageSpec.__doc__ or ""), ""]
    out += _table(_rows(MixStageSpec, "stages[].", seen))
    out += _method_sections("Selectors", SELECTORS.entries(), "stages[].select[].",
                            "Which parameters a stage trains: the union of its `select` entries. An entry "
                            "is chosen by its `name`.")
    out += _method_sections("Objectives", OBJECTIVES.entries(), "stages[].objectives[].",
                            "The loss of a stage: the weighted sum of its `objectives` entries. An entry is "
                            "chosen by its `name`.")
    out += _method_sections("Optimizers", OPTIMIZER_ENTRIES, "stages[].optimizer.",
                            "What updates a stage's trained parameters: its `optimizer` entry, chosen by its "
                            "`name` (none: adamw). torch's optimizers share one set of keys; each low-memory "
                            "one (GaLore, APOLLO, Adam-mini, BAdam) has its own.")
    return "\n".join(out).rstrip() + "\n"
