"""Recipe files: ``extends:``, dotted patches, path rebasing, duplicate keys, the JSON Schema, seeds."""

import json
from pathlib import Path

import pytest
import yaml

from hybridft.cli import main
from hybridft.errors import HybridftError
from hybridft.recipe import load_recipe, read_recipe_data, recipe_json_schema, validate_recipe


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


BASE = {"name": "base", "seed": 1, "data": {"train": "data/train.csv", "labels": ["neg", "pos"]},
        "stages": [{"name": "teacher", "epochs": 3, "optimizer": {"lr": 1e-4, "weight_decay": 0.01}},
                   {"name": "student", "objectives": [{"name": "distill", "teacher": "previous",
                                                       "temperature": 2.0}]}]}


def test_a_variant_states_only_what_differs(tmp_path):
    write(tmp_path / "base.yaml", BASE)
    variant = write(tmp_path / "variant.yaml", {
        "extends": "base.yaml", "name": "variant",
        "data": {"max_train_samples": 10},  # mappings merge key by key
        "stages.0.optimizer.lr": 3e-4,  # a dotted key patches one place, lists by index
        "stages.1.objectives.0.temperature": 1.0})
    data = read_recipe_data(variant)
    assert data["name"] == "variant" and data["seed"] == 1
    assert data["data"] == {"train": "data/train.csv", "labels": ["neg", "pos"], "max_train_samples": 10}
    assert data["stages"][0]["optimizer"] == {"lr": 3e-4, "weight_decay": 0.01}
    assert data["stages"][1]["objectives"][0] == {"name": "distill", "teacher": "previous", "temperature": 1.0}
    assert "extends" not in data
    recipe, base_dir = load_recipe(variant)
    assert recipe.stages[1].objectives[0].temperature == 1.0 and base_dir == tmp_path


def test_lists_are_replaced_and_chains_resolve(tmp_path):
    write(tmp_path / "base.yaml", BASE)
    write(tmp_path / "mid.yaml", {"extends": "base.yaml", "stages": [{"name": "only"}]})
    last = write(tmp_path / "last.yaml", {"extends": "mid.yaml", "seed": 9})
    data = read_recipe_data(last)
    assert data["stages"] == [{"name": "only"}] and data["seed"] == 9 and data["name"] == "base"


def test_paths_of_the_base_stay_relative_to_the_base(tmp_path):
    write(tmp_path / "recipes" / "base.yaml", {**BASE, "stages": [{"objectives": [
        {"name": "task"}, {"name": "distill", "teacher": ["previous", "../models/teacher"]}]}]})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("text,label\n")
    (tmp_path / "models" / "teacher").mkdir(parents=True)
    write(tmp_path / "recipes" / "data" / "train.csv", "text,label\n")
    variant = write(tmp_path / "studies" / "deep" / "v.yaml", {"extends": "../../recipes/base.yaml"})
    data = read_recipe_data(variant)
    folder = variant.parent
    assert (folder / data["data"]["train"]).resolve() == (tmp_path / "recipes" / "data" / "train.csv").resolve()
    assert (folder / data["stages"][0]["objectives"][1]["teacher"][1]).resolve() == \
        (tmp_path / "models" / "teacher").resolve()
    assert data["stages"][0]["objectives"][1]["teacher"][0] == "previous"  # keywords are not paths


@pytest.mark.parametrize("files, expected", [
    ({"a.yaml": {"extends": "b.yaml"}, "b.yaml": {"extends": "a.yaml"}}, "extends forms a loop"),
    ({"a.yaml": {"extends": "missing.yaml"}}, "not found"),
    ({"a.yaml": {"extends": ["b.yaml"]}}, "names one recipe file"),
    ({"a.yaml": {"extends": "b.yaml", "stages.5.epochs": 2}, "b.yaml": BASE}, "not an index"),
])
def test_bad_extends_is_one_clear_error(tmp_path, files, expected):
    for name, data in files.items():
        write(tmp_path / name, data)
    with pytest.raises(HybridftError, match=expected):
        load_recipe(tmp_path / "a.yaml")


def test_a_key_given_twice_is_an_error_not_a_silent_last_wins(tmp_path):
    path = write(tmp_path / "r.yaml", "name: a\nseed: 1\nseed: 2\nstages: [{}]\ndata: {train: x.csv}\n")
    with pytest.raises(HybridftError, match="line 3: duplicate key 'seed'"):
        load_recipe(path)
    anchors = write(tmp_path / "ok.yaml", "data: {train: x.csv}\nstages:\n  - &s {name: a, epochs: 2}\n"
                                          "  - {<<: *s, name: b}\n")
    assert [s.name for s in load_recipe(anchors)[0].stages] == ["a", "b"]  # a merge key is not a duplicate


@pytest.mark.parametrize("seed", [-1, 2**32, 99999999999])
def test_seeds_numpy_cannot_take_are_refused_by_validate(seed):
    with pytest.raises(HybridftError, match="seed"):
        validate_recipe({"seed": seed, "data": {"train": "x.csv"}, "stages": [{}]})


def test_schema_command_prints_the_json_schema_that_accepts_recipes_and_variants(capsys, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema == json.loads(json.dumps(recipe_json_schema()))
    jsonschema.validate(BASE, schema)
    jsonschema.validate({"extends": "base.yaml", "stages.0.epochs": 2}, schema)
    jsonschema.validate({**BASE, "mix": {"alphas": [0.0, 0.5]}}, schema)  # the mix-stage shorthand
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**BASE, "stages": [{"optimiser": {}}]}, schema)  # a misspelt key


def test_version_flag(capsys):
    import hybridft

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"hybridft {hybridft.__version__}"
