"""Recipes in and out: YAML files, ``extends:``, ``key.path=value`` overrides, validation errors as
one line, and the JSON Schema editors validate recipes with.

Relative paths in a recipe are resolved against the recipe file's folder, so a recipe works from any
working directory; paths given as command-line overrides are resolved against the shell's working
directory, where the user typed them.

A recipe may start from another one: ``extends: base.yaml`` (relative to the file) takes the base's
keys; the variant's mappings are merged into the base's key by key, and its other values (lists
included) replace the base's. A key with dots patches one place inside the base, lists by index:
``stages.3.objectives.0.temperature: 1.0``. Paths in the base stay relative to the base's folder.
"""

from __future__ import annotations

import ast
import copy
import os
import re
from pathlib import Path

import yaml
from pydantic import ValidationError

from ..data.memory import is_placeholder
from ..embedded import EMBEDDED
from ..errors import HybridftError
from ..generative.models import decoder_source
from ..spec import STAGE_REF, teacher_is_folder
from .edits import OPTIMIZER_TAGS, format_validation_error, set_path, yaml_text  # noqa: F401
from .schema import Recipe

EXTENDS = "extends"


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML whose mappings may not repeat a key (plain YAML keeps the last one silently)."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *anchor``: the anchor's keys, then ours win
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise HybridftError(f"recipe {path} is a folder; give the YAML file")
    if path.exists() and not path.is_file():  # /dev/null, a pipe: "not found" would be wrong
        raise HybridftError(f"recipe {path} is not a regular file; give the YAML file")
    if not path.is_file():
        raise HybridftError(f"recipe not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError:
        raise HybridftError(f"recipe {path} is not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise HybridftError(f"recipe {path} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        raise HybridftError(f"recipe {path} is empty; it must be a mapping of keys to values")
    if not isinstance(data, dict):
        raise HybridftError(f"recipe {path} must be a mapping of keys to values, got {type(data).__name__}")
    return data


def read_recipe_data(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """The recipe's keys with its ``extends:`` chain resolved."""
    path = Path(path).resolve()
    if path in _chain:
        raise HybridftError(f"recipe {path.name}: extends forms a loop ({' -> '.join(p.name for p in (*_chain, path))})")
    data = read_yaml(path)
    base_name = data.pop(EXTENDS, None)
    if base_name is None:
        return data
    if not isinstance(base_name, str):
        raise HybridftError(f"recipe {path.name}: extends names one recipe file")
    base_path = path.parent / base_name
    if not base_path.is_file():
        raise HybridftError(f"recipe {path.name}: extends {base_name}, which is not found")
    base = rebase_paths(read_recipe_data(base_path, (*_chain, path)), base_path.parent, path.parent)
    patches = {k: v for k, v in data.items() if "." in str(k)}
    merged = deep_merge(base, {k: v for k, v in data.items() if k not in patches})
    for key, value in patches.items():
        set_path(merged, str(key), value, f"recipe {path.name}: key {key}")
    return merged


def deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


# Every recipe key whose value names a file or folder (or a list of them), with the rule that tells a
# path from the other values the key takes. The one list serves every place that moves a relative
# path to another folder: a base recipe's paths under ``extends:`` (relative to the base's folder),
# command-line and API overrides (relative to the working directory), the resolved recipe a run keeps.
# "*" stands for a list index; a key whose value is a list names a path in each entry.
def _data_file(value: str, folder: Path) -> bool:
    return not is_placeholder(value)  # else a table held in memory (data.memory)


def _local_model(value: str, folder: Path) -> bool:
    """As ``models.resolve_model`` tells a local model from an embedded or a hub name."""
    if value in EMBEDDED or value == "embedded":
        return False
    return value.startswith((".", "/", "~")) or value.lower().endswith(".gguf") or (folder / value).exists()


def _template_file(value: str, folder: Path) -> bool:
    return "{" not in value  # else a Jinja template itself


def _teacher_folder(value: str, folder: Path) -> bool:
    return teacher_is_folder(value)


def _merged_folder(value: str, folder: Path) -> bool:
    return not value.startswith(STAGE_REF)


def _recipe_file(value: str, folder: Path) -> bool:
    return value.endswith((".yaml", ".yml"))  # else a preset's name


PATH_KEYS = {
    **{f"{section}.{key}": _data_file for section in ("data", "tasks.*.data")
       for key in ("train", "validation", "test", "unlabeled.path")},
    "model.name": _local_model, "model.decoder": _local_model, "model.chat_template": _template_file,
    "stages.*.objectives.*.teacher": _teacher_folder,
    "stages.*.mix.models": _merged_folder, "mix.models": _merged_folder,  # top-level mix: a last stage
    "compare.strategies": _recipe_file,
}


def _path_rule(location: tuple):
    """The rule of the path key at ``location`` (its parts; list indexes as int or digits), or None."""
    def is_index(part) -> bool:
        return isinstance(part, int) or str(part).lstrip("-").isdigit()

    for key, rule in PATH_KEYS.items():
        pattern = key.split(".")
        parts = location[:-1] if len(location) == len(pattern) + 1 and is_index(location[-1]) else location
        if len(parts) == len(pattern) and all(p == str(q) or (p == "*" and is_index(q))
                                              for p, q in zip(pattern, parts, strict=True)):
            return rule
    return None


def map_paths(value, move, folder: Path, location: tuple = ()):
    """``value`` (found at ``location`` in a recipe) with ``move(path)`` in place of each path in it:
    every value of a path key that is a path by its key's rule, checked against ``folder``."""
    if isinstance(value, dict):
        return {k: map_paths(v, move, folder, (*location, str(k))) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [map_paths(v, move, folder, (*location, i)) for i, v in enumerate(value)]
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str) and value:
        rule = _path_rule(location)
        if rule is not None and rule(value, folder):
            return move(value)
    return value


def _relative(value: str) -> bool:
    return not Path(value).expanduser().is_absolute()


def rebase_paths(data: dict, from_dir: Path, to_dir: Path) -> dict:
    """The base recipe's relative paths, made relative to the extending recipe's folder."""
    if from_dir == to_dir:
        return data

    def moved(value: str) -> str:
        return os.path.relpath(from_dir / value, to_dir) if _relative(value) else value

    return map_paths(data, moved, from_dir)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.0.c=value`` overrides; the value is parsed as a YAML scalar (1e-4, true, null...)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise HybridftError(f"override {item!r} must look like key.path=value")
        set_path(data, key, override_value(key, raw), f"override {key}")
    return data


def override_value(key: str, raw: str):
    """An override's value, read as YAML (1e-4, true, null, [a, b]); safe_load builds no object a
    tag names (``!!python/...``), and refuses it as it refuses broken YAML: one line."""
    if not raw:
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise HybridftError(f"override {key}={raw}: not a valid value ({problem}); quote text that is meant "
                            "literally, e.g. 'name=\"[draft]\"'") from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> tuple[Recipe, Path]:
    """Read, extend, override and validate a recipe; returns it with the folder its paths are relative to."""
    data = apply_overrides(read_recipe_data(path), overrides or [])
    return validate_recipe(data, path), Path(path).resolve().parent


def validate_recipe(data: dict, path: str | Path = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        problems = every_problem(data, e)
        raise HybridftError(f"{path}: {len(problems)} problem(s): " + "; ".join(problems)) from None


UNKNOWN_KEY = re.compile(r"unknown key (.+?)(?: \(did you mean .*\?\))?; valid keys: ")


def every_problem(data: dict, error: ValidationError) -> list[str]:
    """Every problem at once. An unknown key stops the checks of its section and of the sections
    inside it, so each one found is noted, set aside (in a copy), and the recipe checked again."""
    data, noted = copy.deepcopy(data), []
    for _ in range(100):  # at most one pass per unknown key; a bound all the same
        details, lines = error.errors(), format_validation_error(error)
        unknown = [i for i, e in enumerate(details) if _drop_unknown_key(data, e)]
        if not unknown:
            return noted + lines
        noted += [lines[i] for i in unknown]
        try:
            Recipe.model_validate(data)
            return noted
        except ValidationError as e:
            error = e
    return noted + format_validation_error(error)


def _drop_unknown_key(data: dict, detail: dict) -> bool:
    """Remove the key an "unknown key" error names from the mapping at its location; False for any
    other error, or where the key cannot be found again."""
    match = UNKNOWN_KEY.match(str(detail.get("msg", "")).removeprefix("Value error, "))
    if match is None:
        return False
    try:
        key = ast.literal_eval(match.group(1))
    except (ValueError, SyntaxError):
        return False
    node = data
    for part in detail["loc"]:  # a part that is no key is a union's tag pydantic inserts (stages.0.train)
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
    if not isinstance(node, dict) or key not in node:
        return False
    del node[key]
    return True


def cwd_path(key: str, value, moved: list | None = None):
    """An override's value (``key`` its dotted key) with each relative path in it made absolute: a
    path given on the command line or to the API names a file relative to the shell's (or the
    script's) folder, not the recipe's. ``value`` may hold paths further in (``data={train: ...}``,
    ``stages.1.mix.models=[...]``); the paths are those of ``PATH_KEYS``, by their rules. ``moved``
    collects the paths that were made absolute."""
    def absolute(path: str) -> str:
        if not _relative(path):
            return path
        if moved is not None:
            moved.append(path)
        return str(Path(path).resolve())

    return map_paths(value, absolute, Path.cwd(), tuple(key.split(".")))


def apply_cwd_paths(overrides: list[str]) -> list[str]:
    """``cwd_path`` on command-line overrides (``key=value``); an override without a relative path
    stays as the user wrote it."""
    out = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        moved = []
        value = cwd_path(key, override_value(key, raw), moved) if sep and key else None
        out.append(f"{key}={yaml_text(value)}" if moved else item)
    return out


def resolved_recipe_text(recipe, base_dir: Path, source: str) -> str:
    """The recipe as run: every default filled in, every path absolute (so that the text runs from
    any folder: ``compare`` runs it from its own)."""
    def absolute(path: str) -> str:
        return str((base_dir / Path(path).expanduser()).resolve())

    data = map_paths(recipe.model_dump(mode="json"), absolute, base_dir)
    data["model"]["name"] = source
    if recipe.model.decoder:
        data["model"]["decoder"] = decoder_source(recipe.model.decoder, base_dir)
    return yaml.safe_dump(data, sort_keys=False)


def recipe_json_schema() -> dict:
    """The JSON Schema of a recipe file, for editors (yaml-language-server) and ``hybridft schema``.
    A file with ``extends:`` states only what differs from its base, so it is checked against the
    same keys with none required, and may patch with dotted keys."""
    full = Recipe.model_json_schema()
    defs = full.pop("$defs", {})
    full["properties"]["mix"] = {"$ref": "#/$defs/MixSpec", "description": "shorthand for a last stage "
                                 "{name: mix, mix: ...}: mix the trained model with the pretrained one"}
    variant = {"type": "object", "required": [EXTENDS],
               "properties": {EXTENDS: {"type": "string", "description": "the recipe file this one starts from"},
                              **full["properties"]},
               "patternProperties": {r"^[A-Za-z_]+(\.[A-Za-z0-9_-]+)+$": {"description": "one value inside the base"}},
               "additionalProperties": False}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "hybridft recipe",
            "anyOf": [full, variant], "$defs": defs}
