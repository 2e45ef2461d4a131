"""The documentation cannot drift: the recipe reference lists every key of the schema, the committed
JSON Schema is the code's, every shipped recipe validates against it, and the front door stays short."""

import importlib.util
import json
import re
import types
import typing
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from hybridft.cli import main
from hybridft.recipe import Recipe, recipe_json_schema
from hybridft.recipe.reference import reference_markdown
from hybridft.registry import OBJECTIVES, SELECTORS

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = ROOT / "docs" / "recipe.schema.json"
SHIPPED = sorted(ROOT.glob("recipes/*.yaml")) + sorted(ROOT.glob("benchmarks/recipes/*.yaml"))
METHOD_CONFIGS = set(SELECTORS.configs()) | set(OBJECTIVES.configs())


def models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in models_in(arg)]


def is_list(annotation) -> bool:
    if typing.get_origin(annotation) is typing.Annotated:
        return is_list(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(is_list(a) for a in typing.get_args(annotation))
    return typing.get_origin(annotation) is list


def reachable(root: type[BaseModel], prefix: str, found: dict) -> dict:
    """{schema class: the key paths it sits at}, method entries left to their own walk."""
    for name, field in root.model_fields.items():
        path = f"{prefix}{name}" + ("[]" if is_list(field.annotation) else "")
        for sub in models_in(field.annotation):
            if sub in METHOD_CONFIGS or path in found.get(sub, set()):
                continue
            found.setdefault(sub, set()).add(path)
            reachable(sub, path + ".", found)
    return found


def schema_classes() -> dict:
    found = reachable(Recipe, "", {Recipe: {""}})
    for prefix, registry in (("stages[].select[]", SELECTORS), ("stages[].objectives[]", OBJECTIVES)):
        for config in registry.configs():
            found.setdefault(config, set()).add(prefix)
            reachable(config, prefix + ".", found)
    return found


def key_rows(markdown: str) -> set[str]:
    return set(re.findall(r"^\| `([^`]+)` \|", markdown, flags=re.M))


def test_the_reference_lists_every_key_of_every_schema_class():
    rows = key_rows(reference_markdown())
    classes = schema_classes()
    assert {c.__name__ for c in classes} >= {"ModelSpec", "DataSpec", "Columns", "UnlabeledSpec", "TaskSpec",
                                            "StageSpec", "OptimizerSpec", "MixStageSpec", "MixSpec", "GroupSpec"}
    missing = [f"{cls.__name__}.{name} (at {' or '.join(sorted(paths))})"
               for cls, paths in classes.items() for name in cls.model_fields
               if not any((f"{p}.{name}" if p else name) in rows for p in paths)]
    assert not missing, f"keys missing from the recipe reference: {missing}"


@pytest.mark.parametrize("entry", SELECTORS.entries() + OBJECTIVES.entries(), ids=lambda e: e.name)
def test_every_registered_method_has_its_own_table_of_keys(entry):
    markdown = reference_markdown()
    heading = f"### `{entry.name}`"
    assert heading in markdown
    section = markdown.split(heading, 1)[1].split("\n#", 1)[0]
    prefix = "stages[].select[]" if entry in SELECTORS.entries() else "stages[].objectives[]"
    assert {f"{prefix}.{name}" for name in entry.config.model_fields} <= key_rows(section)


def test_the_reference_shows_types_defaults_and_descriptions():
    markdown = reference_markdown()
    assert "| `stages[].optimizer.lr` | float; > 0 | `5.0e-05` |" in markdown.replace("&gt;", ">")
    description = Recipe.model_fields["seed"].description
    assert f"| `seed` | int; ≥ 0, &lt; 4294967296 | `42` | {description} |" in markdown
    assert "| `data.train` | str | **required** |" in markdown


def test_the_docs_hook_puts_the_reference_into_its_page():
    spec = importlib.util.spec_from_file_location("docs_hook", ROOT / "docs" / "hooks" / "reference.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = (ROOT / "docs" / "reference" / "recipe.md").read_text(encoding="utf-8")
    assert hook.MARKER in page
    built = hook.on_page_markdown(page)
    assert hook.MARKER not in built and reference_markdown() in built
    assert hook.on_page_markdown("# another page\n") == "# another page\n"


def test_the_committed_json_schema_is_the_codes():
    assert SCHEMA_FILE.read_text(encoding="utf-8") == json.dumps(recipe_json_schema(), indent=2) + "\n", \
        "docs/recipe.schema.json is stale: hybridft schema > docs/recipe.schema.json"


def test_hybridft_schema_prints_it(capsys):
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == recipe_json_schema()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_recipe_validates_against_the_json_schema(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    modeline = "# yaml-language-server: $schema="
    assert lines[0].startswith(modeline), "a shipped recipe starts with the yaml-language-server comment"
    assert (path.parent / lines[0][len(modeline):]).resolve() == SCHEMA_FILE
    assert lines[1].startswith("# ") and len(lines[1]) > 10, "then a one-line purpose"
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))
    errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text(encoding="utf-8")))]
    assert not errors


def test_the_json_schema_refuses_a_wrong_recipe():
    validator = jsonschema.Draft202012Validator(recipe_json_schema())
    good = {"data": {"train": "x.csv"}, "stages": [{"select": [{"name": "lora", "r": 8}]}]}
    assert validator.is_valid(good)
    for bad in ({**good, "optimiser": {}},
                {**good, "stages": [{"select": [{"name": "lora", "r": "eight"}]}]},
                {**good, "stages": [{"select": [{"name": "fulll"}]}]}):
        assert not validator.is_valid(bad)


def test_the_readme_is_a_front_door_and_recipes_hold_only_examples():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 350
    assert "DESIGN.md" not in readme
    assert len(list((ROOT / "recipes").glob("*.yaml"))) <= 25


def test_every_recipe_the_docs_name_exists():
    texts = [p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]]
    named = {m for text in texts for m in re.findall(r"\b((?:benchmarks/)?recipes/[\w.-]+\.yaml)", text)}
    assert named, "the docs name recipes"
    assert not [n for n in sorted(named) if not (ROOT / n).is_file()]
