"""Issue 37, data reading under hostile use: stray and missing labels, repeated columns, compressed
files, a CSV read as TSV, chat rows the trainer cannot honour, and messages that name the wrong line.
Each test fails without its fix."""

import bz2
import gzip
import json

import pytest

from hybridft.cli import main
from hybridft.data.prepare import load_rows
from hybridft.errors import HybridftError
from hybridft.recipe import validate_recipe

from .conftest import base_recipe, write_recipe


def recipe_for(train, task="classification", **data):
    return validate_recipe({"task": task, "data": {"train": str(train), **data}, "stages": [{}]})


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


ZERO_ONE = "".join(f"film number {i}\t{i % 2}\n" for i in range(10))  # lines 2-11 under a header


# --- 5. stray labels become classes -------------------------------------------------------------------


def test_one_text_label_among_numbers_is_refused_naming_its_line(tmp_path):
    data = tmp_path / "d.tsv"
    data.write_text("sentence\tlabel\n" + ZERO_ONE + "\n" + "a nice film\tpos\n" + ZERO_ONE.replace("film", "movie"))
    with pytest.raises(HybridftError, match=r"mixes numbers and text \(e.g. '0' and 'pos'\): line 13 has 'pos' "
                                            r"\(1 such row\(s\)\)"):
        load_rows(recipe_for(data, columns={"text": "sentence"}), tmp_path)


@pytest.mark.parametrize("label", ["", "nan", "NaN", "None", "  "])
def test_a_row_without_a_label_is_refused_naming_its_line(tmp_path, label):
    data = tmp_path / "d.tsv"
    data.write_text("text\tlabel\n" + ZERO_ONE + f"a film\t{label}\n" + ZERO_ONE.replace("film", "movie"))
    with pytest.raises(HybridftError, match="d.tsv: line 12 has no label"):
        load_rows(recipe_for(data), tmp_path)


def test_a_json_null_label_is_refused_naming_its_line(tmp_path):
    data = tmp_path / "d.jsonl"
    rows = [{"text": f"film {i}", "label": [0, 1, None][i % 3]} for i in range(9)]
    data.write_text("".join(json.dumps(r) + "\n\n" for r in rows))  # records on odd lines
    with pytest.raises(HybridftError, match=r"line 5 has no label \(column 'label' is empty\)"):
        load_rows(recipe_for(data), tmp_path)


def test_blank_rows_are_still_dropped_and_counted_not_refused(tmp_path):
    data = tmp_path / "d.tsv"
    data.write_text("text\tlabel\n" + ZERO_ONE + "\t\n\n \t nan\n")
    splits, labels, stats = load_rows(recipe_for(data), tmp_path)
    assert labels == ["0", "1"] and stats["train"]["dropped_missing"] == 2


def test_the_unlabeled_pool_keeps_rows_without_a_gold_label(tmp_path):
    from hybridft.data.prepare import load_unlabeled_rows

    train, pool = tmp_path / "t.tsv", tmp_path / "pool.tsv"
    train.write_text("text\tlabel\n" + ZERO_ONE)
    pool.write_text("text\tlabel\nan unseen film\t\nanother one\t1\n")
    recipe = recipe_for(train, unlabeled={"path": str(pool)})
    rows, counts = load_unlabeled_rows(recipe, tmp_path, {})
    assert [r["label"] for r in rows] == [None, "1"] and counts["rows_used"] == 2


def test_a_quoted_newline_and_blank_lines_keep_line_numbers_right(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text('text,label\n"two\nlines",1\nc,0\n\n"three\n\nlines",pos\n')
    with pytest.raises(HybridftError, match="line 6 has 'pos'"):
        load_rows(recipe_for(data), tmp_path)


def test_validate_shows_the_label_set_and_refuses_a_stray_label(tiny_model, sentiment_csv, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, sentiment_csv))
    assert main(["validate", str(recipe)]) == 0
    assert "  labels (72 training rows): negative, positive" in capsys.readouterr().out.splitlines()
    stray = tmp_path / "stray.tsv"
    stray.write_text("text\tlabel\n" + ZERO_ONE + "a film\tpos\n")
    assert main(["validate", str(write_recipe(tmp_path / "s.yaml", base_recipe(tiny_model, stray)))]) == 2
    assert "line 12 has 'pos'" in one_line_error(capsys)


# --- 6. repeated column names -------------------------------------------------------------------------


@pytest.mark.parametrize("name, header", [("d.tsv", "sentence\tsentence\tlabel"), ("d.csv", "sentence,label,sentence")])
def test_a_column_named_twice_is_refused(tmp_path, name, header):
    data = tmp_path / name
    sep = "\t" if name.endswith("tsv") else ","
    data.write_text(header + "\n" + "".join(sep.join([f"a{i}", f"b{i}", "x"]) + "\n" for i in range(4)))
    with pytest.raises(HybridftError, match="names column 'sentence' twice"):
        load_rows(recipe_for(data, columns={"text": "sentence"}), tmp_path)


# --- messages -----------------------------------------------------------------------------------------


def test_gzip_files_are_read_and_other_compression_is_named(tmp_path):
    rows = [{"text": f"film {i}", "label": i % 2} for i in range(8)]
    for name in ("d.jsonl.gz", "gzip-named-plainly.jsonl"):
        (tmp_path / name).write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
        assert load_rows(recipe_for(tmp_path / name), tmp_path)[1] == ["0", "1"]
    (tmp_path / "d.tsv.gz").write_bytes(gzip.compress(("text\tlabel\n" + ZERO_ONE).encode()))
    assert load_rows(recipe_for(tmp_path / "d.tsv.gz"), tmp_path)[1] == ["0", "1"]
    (tmp_path / "b.jsonl").write_bytes(bz2.compress(b'{"text": "a", "label": 1}\n'))
    with pytest.raises(HybridftError, match="b.jsonl is bzip2-compressed; decompress it first"):
        load_rows(recipe_for(tmp_path / "b.jsonl"), tmp_path)


@pytest.mark.parametrize("name, text, said", [
    ("d.tsv", "sentence,label\n" + "".join(f"a{i},{i % 2}\n" for i in range(4)), "separated by commas: set data.format: csv"),
    ("d.csv", "sentence\tlabel\n" + "".join(f"a, b{i}\t{i % 2}\n" for i in range(4)), "separated by tabs: set data.format: tsv"),
])
def test_a_csv_read_as_tsv_or_the_reverse_says_so(tmp_path, name, text, said):
    (tmp_path / name).write_text(text)
    with pytest.raises(HybridftError, match=said):
        load_rows(recipe_for(tmp_path / name, columns={"text": "sentence"}), tmp_path)


def test_a_recipe_that_is_not_a_regular_file_or_is_empty_says_so(tmp_path, capsys):
    assert main(["validate", "/dev/null"]) == 2
    assert "recipe /dev/null is not a regular file" in one_line_error(capsys)
    (tmp_path / "empty.yaml").write_text("")
    assert main(["validate", str(tmp_path / "empty.yaml")]) == 2
    assert "empty.yaml is empty" in one_line_error(capsys)


def test_a_bad_weights_value_is_named_by_argparse(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["interpolate", "a", "b", "--weights", "abc", "-o", "x"])
    assert exit_.value.code == 2 and "invalid weights value: 'abc'" in capsys.readouterr().err


def test_the_lora_refusal_reads_as_a_sentence(tiny_model, sentiment_csv):
    from hybridft.api import validate

    with pytest.raises(HybridftError, match="it has a selector of its own: use the lora selector"):
        validate(base_recipe(tiny_model, sentiment_csv, select=[{"name": "peft", "type": "lora"}], max_steps=1))


def test_a_pair_line_without_a_tab_is_named_by_its_real_line_number(tiny_model):
    from hybridft.inference import predict_with
    from hybridft.models import load_model, load_tokenizer

    model = load_model(str(tiny_model), "pair_classification", ["no", "yes"])
    with pytest.raises(HybridftError, match="line 4 has no tab"):
        predict_with(model, load_tokenizer(str(tiny_model)), {"task": "pair_classification"}, ["no", "yes"],
                     ["a\tb", "", "", "no tab here"], batch_size=2)


def test_an_empty_line_gets_the_key_of_the_tasks_other_records(monkeypatch):
    from hybridft import inference

    monkeypatch.setattr(inference, "generate_lines", lambda model, tok, meta, lines, *rest: [
        {"input": line, "generated": "..."} for line in lines])
    records = inference.predict_with(None, None, {"task": "causal_lm"}, [], ["hello", ""], None)
    assert records[1] == {"input": "", "error": "empty text"}


# --- chat ---------------------------------------------------------------------------------------------


def chat_recipe(path, **data):
    return validate_recipe({"task": "causal_lm", "model": {"chat_template": "{{ messages }}"},
                            "data": {"train": str(path), "columns": {"messages": "messages"}, **data},
                            "stages": [{}]})


def talk(answer="fine", **extra):
    return {"messages": [{"role": "user", "content": "how are you"},
                         {"role": "assistant", "content": answer, **extra}]}


def test_a_conversation_with_an_empty_answer_is_skipped_and_counted(tmp_path):
    from hybridft.generative.data import read_generative_rows

    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [talk(), talk(""), talk("  \n"), talk("well")]))
    rows, counts = read_generative_rows(chat_recipe(data).data, "causal_lm", tmp_path, "train", True)
    assert len(rows) == 2 and counts["skipped_empty_assistant"] == 2 and counts["rows_kept"] == 2


@pytest.mark.parametrize("extra, said", [
    ({"tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}, "has tool calls"),
    ({"weight": 0}, "has 'weight', which hybridft would not render"),
])
def test_turn_keys_that_would_be_dropped_are_refused_naming_the_line(tmp_path, extra, said):
    from hybridft.generative.data import read_generative_rows

    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [talk(tool_calls=None), talk(), talk(**extra)]))
    with pytest.raises(HybridftError, match=f"chat.jsonl: line 3: turn 2 \\(assistant\\) {said}"):
        read_generative_rows(chat_recipe(data).data, "causal_lm", tmp_path, "train", True)


def test_rows_used_counts_only_the_rows_that_made_an_example(tiny_model, tmp_path):
    from hybridft.generative.data import load_generative_data
    from hybridft.models import load_tokenizer

    data = tmp_path / "d.jsonl"
    rows = [{"prompt": "the film", "response": "good"}] * 6 + [{"prompt": "the film " * 40, "response": "bad"}] * 2
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = validate_recipe({"task": "causal_lm", "model": {"name": str(tiny_model), "max_length": 16},
                              "data": {"train": str(data), "validation": str(data), "columns": {
                                  "prompt": "prompt", "response": "response"}}, "stages": [{}]})
    stats = load_generative_data(recipe, tmp_path, load_tokenizer(str(tiny_model))).stats
    assert stats["skipped_prompt_too_long"]["validation"] == 2
    assert stats["rows_used"]["validation"] == 6


def test_every_unknown_key_is_reported_at_once_with_the_problems_it_hid():
    recipe = {"task": "classification", "foo": 1, "bar": 2, "data": {"train": "x.csv", "baz": 3},
              "stages": [{"qux": 1, "optimizer": {"lrr": 1}, "epochs": -1}]}
    with pytest.raises(HybridftError) as e:
        validate_recipe(recipe)
    message = str(e.value)
    assert "6 problem(s)" in message and "stages.0.epochs" in message
    for key in ("foo", "bar", "baz", "qux", "lrr"):
        assert f"unknown key '{key}'" in message
    assert recipe["foo"] == 1 and recipe["stages"][0]["qux"] == 1  # the caller's recipe is left as it was
