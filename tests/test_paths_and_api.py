"""Issue 37, paths and API: one rule for every path key (a base recipe's paths under ``extends:``,
overrides relative to the working directory, the resolved recipe a run keeps), the Python API's
arguments refused in one line, stage names unique, interpolate's flags by the recipe's rules."""

import copy
import json
from pathlib import Path

import pytest
import yaml

import hybridft
from hybridft.api import overrides_of
from hybridft.errors import HybridftError
from hybridft.preflight import check_paths, resolve
from hybridft.recipe import (
    apply_cwd_paths,
    load_recipe,
    read_recipe_data,
    resolved_recipe_text,
    validate_recipe,
)
from hybridft.recipe.io import override_value, set_path

from .conftest import base_recipe, write_recipe
from .helpers import one_line_error, run_cli

# Every key that holds a path once: the lists a key's index needs are there (two stages, two tasks).
SKELETON = {"data": {"unlabeled": {}}, "tasks": [{"data": {}}, {"data": {}}], "model": {},
            "stages": [{"objectives": [{"name": "task"}, {"name": "distill", "teacher": ["previous", "x"]}]},
                       {"mix": {"models": ["x"]}}],
            "mix": {"models": ["x"]}, "compare": {"strategies": ["x"]}}

# (key, the path as written, a folder or a file)
PATHS = [
    ("data.train", "files/train.csv", "file"),
    ("data.validation", "files/dev.csv", "file"),
    ("data.test", "files/test.csv", "file"),
    ("data.unlabeled.path", "files/pool.csv", "file"),
    ("tasks.0.data.train", "files/a.csv", "file"),
    ("tasks.1.data.validation", "files/b.csv", "file"),
    ("tasks.1.data.test", "files/c.csv", "file"),
    ("model.name", "models/encoder", "folder"),
    ("model.name", "models/small.gguf", "file"),
    ("model.decoder", "models/decoder", "folder"),
    ("model.chat_template", "files/chat.jinja", "file"),
    ("stages.0.objectives.1.teacher", "models/teacher", "folder"),
    ("stages.0.objectives.1.teacher.1", "models/second", "folder"),  # one of an ensemble
    ("stages.1.mix.models.0", "models/merged", "folder"),
    ("mix.models.0", "models/other", "folder"),  # top-level mix: shorthand
    ("compare.strategies.0", "files/lora.yaml", "file"),
]

# (key, a value that is no path; a folder of that name is made beside it where that could mislead)
NOT_PATHS = [
    ("model.name", "smollm2", True),  # an embedded model wins over a folder of its name
    ("model.name", "bert-base-uncased", False),  # a hub name
    ("model.decoder", "embedded", True),
    ("model.chat_template", "{{ messages[0].content }}", False),  # a Jinja template
    ("stages.0.objectives.1.teacher", "previous", True),
    ("stages.0.objectives.1.teacher.1", "stage:s0", False),
    ("stages.1.mix.models.0", "stage:s0", False),
    ("compare.strategies.0", "lora", True),  # a preset
]


def recipe_with(key: str, value) -> dict:
    data = copy.deepcopy(SKELETON)
    set_path(data, key, value, key)
    return data


def value_at(data, key: str):
    for part in key.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def make(path: Path, kind: str) -> Path:
    if kind == "folder":
        path.mkdir(parents=True, exist_ok=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x\n", encoding="utf-8")
    return path


# --- extends: a base's paths stay relative to the base's folder, for every path key ----------------


def variant_of(tmp_path, base: dict) -> Path:
    write_recipe(make(tmp_path / "recipes", "folder") / "base.yaml", base)
    return write_recipe(make(tmp_path / "studies" / "deep", "folder") / "v.yaml",
                        {"extends": "../../recipes/base.yaml"})


@pytest.mark.parametrize("key, value, kind", PATHS, ids=[f"{k}={v}" for k, v, _ in PATHS])
def test_extends_rebases_every_path_key_of_the_base(tmp_path, key, value, kind):
    target = make(tmp_path / "recipes" / value, kind)
    variant = variant_of(tmp_path, recipe_with(key, value))
    rebased = value_at(read_recipe_data(variant), key)
    assert (variant.parent / rebased).resolve() == target.resolve()


@pytest.mark.parametrize("key, value, beside", NOT_PATHS, ids=[f"{k}={v}" for k, v, _ in NOT_PATHS])
def test_extends_leaves_names_that_are_no_paths(tmp_path, key, value, beside):
    if beside:
        make(tmp_path / "recipes" / value, "folder")
    variant = variant_of(tmp_path, recipe_with(key, value))
    assert value_at(read_recipe_data(variant), key) == value


def test_a_teacher_folder_of_the_base_is_rebased_before_it_exists(tmp_path):
    """A teacher trained by another run later on is a folder all the same (no hub name)."""
    variant = variant_of(tmp_path, recipe_with("stages.0.objectives.1.teacher", "runs/t/model"))
    rebased = value_at(read_recipe_data(variant), "stages.0.objectives.1.teacher")
    assert (variant.parent / rebased).resolve() == (tmp_path / "recipes" / "runs/t/model").resolve()


# --- overrides: a path given on the command line or to the API starts from the working directory ---


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The shell's folder, apart from the recipe's (tmp_path/recipes)."""
    folder = make(tmp_path / "work", "folder")
    monkeypatch.chdir(folder)
    return folder


@pytest.mark.parametrize("key, value, kind", PATHS, ids=[f"{k}={v}" for k, v, _ in PATHS])
def test_an_override_path_starts_from_the_working_directory(workdir, key, value, kind):
    target = make(workdir / value, kind).resolve()
    [command_line] = apply_cwd_paths([f"{key}={value}"])
    name, _, raw = command_line.partition("=")
    assert name == key and Path(override_value(key, raw)) == target
    [api] = overrides_of({key: value}, {})
    assert Path(override_value(key, api.partition("=")[2])) == target
    [keyword] = overrides_of(None, {key.replace(".", "__"): Path(value)})
    assert Path(override_value(key, keyword.partition("=")[2])) == target


@pytest.mark.parametrize("key, value, beside", NOT_PATHS, ids=[f"{k}={v}" for k, v, _ in NOT_PATHS])
def test_an_override_that_is_no_path_stays_as_written(workdir, key, value, beside):
    if beside:
        make(workdir / value, "folder")
    written = f"{key}={json.dumps(value)}"  # quoted: a Jinja template is not YAML
    assert apply_cwd_paths([written]) == [written]


@pytest.mark.parametrize("override, key, expected", [
    ("stages.1.mix.models=[models/m, stage:s0]", "stages.1.mix.models", ["models/m", "stage:s0"]),
    ("stages.0.objectives=[{name: task}, {name: distill, teacher: [previous, models/t]}]",
     "stages.0.objectives.1.teacher", ["previous", "models/t"]),
    ("data={train: files/t.csv, unlabeled: {path: files/p.csv}}", "data.unlabeled.path", "files/p.csv"),
    ("data.unlabeled={path: files/p.csv, max_samples: .nan}", "data.unlabeled.max_samples", ".nan"),
])
def test_override_paths_inside_lists_and_mappings_start_from_the_working_directory(workdir, override, key,
                                                                                   expected):
    [item] = apply_cwd_paths([override])
    name, _, raw = item.partition("=")
    value = copy.deepcopy(SKELETON)
    set_path(value, name, override_value(name, raw), name)
    got = value_at(value, key)
    if expected == ".nan":  # a value beside the path reads back as it was written
        assert got != got
        return
    wanted = [e if e in ("previous", "stage:s0") else str(workdir / e) for e in expected] \
        if isinstance(expected, list) else str(workdir / expected)
    assert got == wanted


def test_a_missing_data_file_in_an_override_is_looked_for_in_the_working_directory(workdir, tmp_path,
                                                                                   tiny_model, sentiment_csv):
    recipe = write_recipe(make(tmp_path / "recipes", "folder") / "r.yaml", base_recipe(tiny_model, sentiment_csv))
    make(tmp_path / "recipes" / "missing.csv", "file")  # beside the recipe: not what the user meant
    validated, folder = load_recipe(recipe, apply_cwd_paths(["data.train=missing.csv"]))
    assert check_paths(validated, folder) == [f"data.train: not found: {workdir / 'missing.csv'}"]


def test_validate_finds_teacher_and_pool_given_on_the_command_line_relative_to_the_shell(
        workdir, tmp_path, tiny_model, sentiment_csv, unlabeled_csv, capsys):
    """The issue's case: a teacher folder and data.unlabeled.path typed relative to the shell."""
    import shutil

    shutil.copytree(tiny_model, workdir / "models" / "teacher")
    shutil.copy(unlabeled_csv, workdir / "pool.csv")
    recipe = write_recipe(make(tmp_path / "recipes", "folder") / "r.yaml", base_recipe(tiny_model, sentiment_csv))
    assert run_cli("validate", recipe, "data.unlabeled.path=pool.csv",
                   "stages.0.objectives=[{name: task}, {name: distill, teacher: models/teacher, source: unlabeled}]"
                   ) == 0, capsys.readouterr().err


def test_the_resolved_recipe_names_every_path_absolutely(tmp_path, tiny_model, sentiment_csv):
    """The recipe a run keeps (and compare runs from its own folder) holds no path relative to a folder
    it no longer sits in: teachers, mix.models and a chat template file included."""
    data = base_recipe(tiny_model, sentiment_csv)
    data["data"] = {"train": "train.csv", "unlabeled": {"path": "pool.csv"}}
    data["stages"].append({"name": "s1", "objectives": [
        {"name": "task"}, {"name": "distill", "teacher": ["previous", "models/t"], "source": "unlabeled"}]})
    data["stages"].append({"name": "merge", "mix": {"method": "task_arithmetic", "models": ["models/m", "stage:s0"]}})
    data["compare"] = {"strategies": ["lora", "more/full.yaml"]}
    text = yaml.safe_load(resolved_recipe_text(validate_recipe(data), tmp_path, str(tiny_model)))
    assert text["data"]["train"] == str(tmp_path / "train.csv")
    assert text["data"]["unlabeled"]["path"] == str(tmp_path / "pool.csv")
    assert text["stages"][1]["objectives"][1]["teacher"] == ["previous", str(tmp_path / "models/t")]
    assert text["stages"][2]["mix"]["models"] == [str(tmp_path / "models/m"), "stage:s0"]
    assert text["compare"]["strategies"] == ["lora", str(tmp_path / "more/full.yaml")]
    assert resolve(text["stages"][2]["mix"]["models"][0], Path("/elsewhere")) == tmp_path / "models/m"


# --- the Python API: one line for each argument it cannot use ---------------------------------------


@pytest.mark.parametrize("call, expected", [
    (lambda r: hybridft.run(None), "recipe: give a YAML file's path, a dict or a Recipe, not NoneType"),
    (lambda r: hybridft.validate(42), "recipe: give a YAML file's path, a dict or a Recipe, not int"),
    (lambda r: hybridft.run(r, overrides="seed=1"), "overrides: give a dict"),
    (lambda r: hybridft.run(r, overrides=[1]), "overrides: give a dict"),
    (lambda r: hybridft.validate(r, overrides={1: 2}), "overrides: give a dict"),
    (lambda r: hybridft.run(r, out=123), "out: give a folder's path (a str or a Path), not int 123"),
    (lambda r: hybridft.run(r, out="x", base_dir=3.5), "base_dir: give a folder's path"),
])
def test_the_api_refuses_arguments_it_cannot_use_in_one_line(tiny_model, sentiment_csv, tmp_path, call, expected):
    with pytest.raises(HybridftError, match="^" + expected.replace("(", r"\(").replace(")", r"\)")) as error:
        call(base_recipe(tiny_model, sentiment_csv))
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == [sentiment_csv]  # nothing written


def test_the_api_takes_overrides_as_a_tuple_too(tiny_model, sentiment_csv):
    assert hybridft.validate(base_recipe(tiny_model, sentiment_csv), overrides=("seed=5",)).seed == 5


@pytest.fixture(scope="module")
def single_text_folder(tmp_path_factory, tiny_model) -> Path:
    """A classification model hybridft trained (its hybridft.json says it reads single texts)."""
    from .conftest import sentiment_rows

    folder = tmp_path_factory.mktemp("single")
    data = folder / "data.csv"
    data.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in sentiment_rows(40)))
    return hybridft.run(base_recipe(tiny_model, data, max_steps=1), out=folder / "run", progress=False).model_dir


@pytest.fixture(scope="module")
def single_text_model(single_text_folder):
    return hybridft.load(single_text_folder)


@pytest.mark.parametrize("call, expected", [
    (lambda m: m.predict([None]), "texts: item 0 is NoneType None, not a str"),
    (lambda m: m.predict(["good", 3]), "texts: item 1 is int 3, not a str"),
    (lambda m: m.predict(None), "texts: give a str or a list of str, not NoneType"),
    (lambda m: m.predict("good", batch_size=0), "batch_size must be a whole number above 0, got 0"),
    (lambda m: m.predict("good", batch_size=2.5), "batch_size must be a whole number above 0, got 2.5"),
    (lambda m: m.predict("good", seed=-1), "seed must be a whole number from 0 to 2**32 - 1, got -1"),
    (lambda m: m.predict("good\tfilm", pairs=True), "pairs=True (--pair): this model was trained on single texts"),
])
def test_predict_refuses_what_it_cannot_use_in_one_line(single_text_model, call, expected):
    with pytest.raises(HybridftError) as error:
        call(single_text_model)
    assert str(error.value).startswith(expected) and "\n" not in str(error.value)


def test_predict_takes_any_sequence_of_texts_and_a_numpy_batch_size(single_text_model):
    import numpy as np

    records = single_text_model.predict(np.array(["good film", "awful"]), batch_size=np.int64(1))
    assert [r["text"] for r in records] == ["good film", "awful"]
    assert single_text_model.predict(("good film",), pairs=False)[0]["text"] == "good film"


def test_pairs_still_decides_for_a_plain_transformers_folder(single_text_folder, tmp_path):
    """A folder hybridft did not train says nothing of what it reads (an MNLI model reads pairs)."""
    import shutil

    shutil.copytree(single_text_folder, tmp_path / "plain")
    (tmp_path / "plain" / "hybridft.json").unlink()
    plain = hybridft.load(tmp_path / "plain")
    assert plain.predict("good\tfilm", pairs=True)[0]["text"] == "good\tfilm"
    with pytest.raises(HybridftError, match="line 1 has no tab"):
        plain.predict("good film", pairs=True)


# --- stage names name one stage; interpolate's flags follow the recipe's rules ----------------------


@pytest.mark.parametrize("names, expected", [
    (["first", "first"], "stages.1: the name 'first' is already stage 0's"),
    (["stage1", None], "stages.1: the name 'stage1' is already stage 0's"),  # an unnamed stage is stage<i>
])
def test_two_stages_of_one_name_are_refused_naming_it(tiny_model, sentiment_csv, names, expected):
    recipe = base_recipe(tiny_model, sentiment_csv)
    recipe["stages"] = [{"name": n} if n else {} for n in names]
    with pytest.raises(HybridftError, match=expected):
        validate_recipe(recipe)


def test_a_stage_teacher_naming_a_repeated_stage_is_refused_naming_it(tiny_model, sentiment_csv, tmp_path, capsys):
    recipe = base_recipe(tiny_model, sentiment_csv)
    recipe["stages"] = [{"name": "first"}, {"name": "first", "init": "pretrained"},
                        {"objectives": [{"name": "task"}, {"name": "distill", "teacher": "stage:first"}]}]
    assert run_cli("validate", write_recipe(tmp_path / "r.yaml", recipe)) == 2
    assert "the name 'first' is already stage 0's" in one_line_error(capsys)


@pytest.mark.parametrize("flags, expected", [
    (["--method", "task_arithmetic", "--scale", "-1"], "--scale must be a finite number above 0, got -1.0"),
    (["--method", "dare_linear", "--density", ".5", "--seed", "-5"], "--seed must be a whole number from 0"),
    (["--method", "ties", "--density", ".5", "--model", "other", "--weights=-1,2"],
     "--weights must each be above 0, got [-1.0, 2.0]"),
    (["--method", "ties", "--density", ".5", "--model", "other", "--weights=0,2"], "--weights must each be above 0"),
])
def test_interpolate_refuses_what_a_recipe_refuses(tmp_path, capsys, flags, expected):
    """Refused before any model is read (the folders here do not even exist), nothing written."""
    assert run_cli("interpolate", tmp_path / "pre", tmp_path / "fine", *flags, "-o", tmp_path / "out") == 2
    assert expected in one_line_error(capsys)
    assert not (tmp_path / "out").exists()
