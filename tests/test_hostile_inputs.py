"""Hostile and broken input: each case ends in a clear one-line error or a counted skip, never a
traceback (the README's table of bad inputs lists these cases and their outcomes)."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridft.cli import main as cli_main
from hybridft.data.prepare import load_rows
from hybridft.errors import HybridftError
from hybridft.recipe import apply_overrides, validate_recipe

from .conftest import base_recipe


def rows_of(tmp_path, tiny_model, name: str, content: bytes, **data):
    path = tmp_path / name
    path.write_bytes(content)
    recipe = base_recipe(tiny_model, path)
    recipe["data"].update(data)
    splits, _, stats = load_rows(validate_recipe(recipe), tmp_path)
    return splits, stats


CSV = (b'text,label\n"good film",pos\n"bad, "broken" quote,neg\nawful,neg,extra field\n'
       b'fine film,pos\nbad film,neg\nnice,pos\nawful film,neg\n')
JSONL = b'{"text": "good film", "label": "pos"}\n{"text": "broken\n[1, 2]\n' + b"".join(
    json.dumps({"text": f"film {i}", "label": ["pos", "neg"][i % 2]}).encode() + b"\n" for i in range(6))


@pytest.mark.parametrize("name, content, first_bad, good", [("d.csv", CSV, 3, 5), ("d.jsonl", JSONL, 2, 7)])
def test_malformed_rows_are_an_error_by_default_and_skipped_with_a_count_on_request(tmp_path, tiny_model, name,
                                                                                     content, first_bad, good):
    with pytest.raises(HybridftError, match=f"malformed.*line {first_bad}.*bad_rows: skip"):
        rows_of(tmp_path, tiny_model, name, content)
    splits, stats = rows_of(tmp_path, tiny_model, name, content, bad_rows="skip")
    assert stats["train"]["skipped_malformed"] == 2
    assert sum(len(v) for v in splits.values()) == good


def test_a_json_line_naming_a_key_twice_is_malformed_not_its_last_value(tmp_path, tiny_model):
    good = b"".join(json.dumps({"text": f"film {i}", "label": ["pos", "neg"][i % 2]}).encode() + b"\n" for i in range(6))
    content = good + b'{"text": "a fine film", "label": "pos", "label": "neg"}\n'
    with pytest.raises(HybridftError, match="malformed: line 7 names the key 'label' twice.*bad_rows: skip"):
        rows_of(tmp_path, tiny_model, "d.jsonl", content)
    splits, stats = rows_of(tmp_path, tiny_model, "d.jsonl", content, bad_rows="skip")
    assert stats["train"]["skipped_malformed"] == 1 and sum(len(v) for v in splits.values()) == 6


def test_extremely_long_texts_are_truncated_and_counted(tmp_path, tiny_model):
    from .helpers import tokenized

    path = tmp_path / "long.csv"
    path.write_text("text,label\n" + "".join(f"{'good film ' * 5000},pos\nbad,neg\n" for _ in range(5)))
    recipe = base_recipe(tiny_model, path)
    recipe["data"]["validation"] = str(path)
    data = tokenized(tiny_model, recipe)
    assert data.stats["truncated"]["train"] == 1 and data.stats["truncated"]["validation"] == 5
    assert max(len(ex["input_ids"]) for ex in data.validation) == 32


@pytest.mark.parametrize("content, expected", [
    (b"text,label\ngood \xff\xfe film,pos\n", "not UTF-8 text (byte 0xff"),
    (b'[{"text": "good", "label": [1, 2]}]', "label column 'label' must hold strings or integers"),
    (b'[{"text": {"a": 1}, "label": "pos"}]', "column 'text' must hold text"),
])
def test_bytes_and_types_that_are_not_what_a_column_needs(tmp_path, tiny_model, content, expected):
    name = "d.csv" if content.startswith(b"text") else "d.json"
    with pytest.raises(HybridftError, match=expected.replace("(", r"\(")):
        rows_of(tmp_path, tiny_model, name, content)


@pytest.mark.parametrize("text, expected", [
    ("- just\n- a list\n", "must be a mapping"),
    ("name: [unclosed\n", "not valid YAML"),
    ("", "must be a mapping"),
])
def test_recipes_that_are_not_mappings(tmp_path, capsys, text, expected):
    (tmp_path / "r.yaml").write_text(text)
    assert cli_main(["validate", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                   st.text(max_size=12), st.lists(st.integers(-3, 3), max_size=3),
                   st.dictionaries(st.text(max_size=6), st.integers(), max_size=2))
PATHS = st.sampled_from(["seed", "task", "metric", "name", "model", "model.max_length", "model.name", "data",
                         "data.train", "data.columns", "data.columns.text", "data.labels", "data.max_train_samples",
                         "data.unlabeled", "data.bad_rows", "stages", "stages.0", "stages.0.select",
                         "stages.0.select.0.name", "stages.0.objectives", "stages.0.objectives.0.weight",
                         "stages.0.optimizer.lr", "stages.0.epochs", "stages.0.data", "stages.0.scheduler.name",
                         "mix", "mix.alphas", "output", "output.keep_checkpoints", "unknown_key"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(PATHS, VALUES), min_size=1, max_size=4))
def test_fuzzed_recipes_validate_or_fail_with_a_one_line_error(tmp_path, edits):
    recipe = base_recipe(tmp_path / "model", tmp_path / "train.csv")
    recipe["stages"][0]["objectives"] = [{"name": "task"}]
    recipe["stages"][0]["select"] = [{"name": "full"}]
    try:
        data = apply_overrides(recipe, [f"{path}={json.dumps(value)}" for path, value in edits])
        validate_recipe(data)
    except HybridftError as e:
        assert "\n" not in str(e) and str(e)


def test_output_paths_never_leave_the_run_folder(tiny_model, sentiment_csv, tmp_path):
    """A recipe names no output path at all: everything is written under --out."""
    from .helpers import train_and_load

    before = set(tmp_path.iterdir())
    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=1)
    recipe["name"] = "../../escape"
    train_and_load(recipe, tmp_path / "run")
    assert set(tmp_path.iterdir()) - before == {tmp_path / "run"}
    assert json.loads((tmp_path / "run" / "report.json").read_text())["name"] == "../../escape"


def test_the_report_says_when_remote_code_was_trusted(tiny_model, sentiment_csv, tmp_path):
    from .helpers import train_and_load

    for trusted in (False, True):
        recipe = base_recipe(tiny_model, sentiment_csv, max_steps=1)
        recipe["model"]["trust_remote_code"] = trusted
        report, _ = train_and_load(recipe, tmp_path / f"run-{trusted}")
        assert report["trust_remote_code"] is trusted
        assert ("trust_remote_code was ON" in (tmp_path / f"run-{trusted}" / "report.md").read_text()) is trusted
