import json

import pandas as pd
import pytest

from hybridft.data.clean import clean_rows
from hybridft.data.conll import iob1_to_bio2, read_conll
from hybridft.data.prepare import encode, load_rows, seeded_subset
from hybridft.errors import HybridftError
from hybridft.recipe import validate_recipe


def recipe_for(train, task="classification", **data):
    return validate_recipe({"task": task, "data": {"train": str(train), **data}, "stages": [{}]})


ROWS = [("good film", "pos"), ("bad film", "neg"), ("great plot", "pos"), ("awful plot", "neg")] * 3


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet", "disk"])
def test_every_format_reads_the_same_rows(tmp_path, fmt):
    import datasets

    frame = pd.DataFrame(ROWS, columns=["text", "label"])
    path = tmp_path / f"d.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif fmt == "json":
        path.write_text(json.dumps(frame.to_dict("records")))
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif fmt == "parquet":
        frame.to_parquet(path)
    else:
        datasets.Dataset.from_pandas(frame).save_to_disk(str(path))
    splits, labels, stats = load_rows(recipe_for(path, validation_fraction=0.25), tmp_path)
    assert labels == ["neg", "pos"]
    # duplicates are dropped from train: 4 distinct rows, one split off for validation
    assert stats["train"]["dropped_duplicates"] == 8
    assert len(splits["train"]) + len(splits["validation"]) == 4


def test_cleaning_counts_strip_empty_missing_duplicates():
    frame = pd.DataFrame({"text": ["  a b ", "a b", "", None, "c"], "label": ["x", "x", "y", "y", "y"]})
    rows, counts = clean_rows(frame, ["text"], [], "label", strip=True, drop_empty=True, drop_duplicates=True,
                              where="t")
    assert [r["text"] for r in rows] == ["a b", "c"]
    assert counts == {"rows_read": 5, "dropped_missing": 1, "dropped_empty": 1, "dropped_duplicates": 1,
                      "rows_kept": 2}


def test_label_of_wrong_type_is_an_error():
    frame = pd.DataFrame({"text": ["a"], "label": [[1, 2]]})
    with pytest.raises(HybridftError, match="strings or integers"):
        clean_rows(frame, ["text"], [], "label", True, True, True, where="t")


def test_numeric_labels_sort_numerically(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(12)], "label": [2, 10, 1] * 4}).to_csv(path, index=False)
    _, labels, _ = load_rows(recipe_for(path), tmp_path)
    assert labels == ["1", "2", "10"]


def test_iob1_to_bio2():
    assert iob1_to_bio2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == \
        ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG"]
    bio2 = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG"]
    assert iob1_to_bio2(bio2) == bio2  # idempotent on BIO2 input


def test_conll_reader_skips_docstart_and_converts(conll_file):
    frame = read_conll(conll_file)
    assert len(frame) == 10
    assert frame.tokens[0] == ["john", "smith", "went", "to", "paris"]
    assert frame.tags[0] == ["B-PER", "I-PER", "O", "O", "B-LOC"]


def test_token_labels_go_on_first_word_piece(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    cols = recipe_for("x", "token_classification").data.columns
    # "goodbad" is not in the word-level vocab: one piece per word here, so use a word split in two
    rows = [{"tokens": ["john", "paris-london"], "tags": ["B-PER", "B-LOC"]}]
    (ex,), _ = encode(rows, tok, "token_classification", cols, {"O": 0, "B-PER": 1, "B-LOC": 2}, 32)
    # [CLS] john paris - london [SEP]: the label sits on "paris" only
    assert ex["labels"] == [-100, 1, 2, -100, -100, -100]


def test_seeded_split_and_subset_are_reproducible(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(100)], "label": ["a", "b"] * 50}).to_csv(path, index=False)
    r = recipe_for(path, max_train_samples=60)
    a, _, _ = load_rows(r, tmp_path)
    b, _, _ = load_rows(r, tmp_path)
    assert a == b and len(a["train"]) == 54 and len(a["validation"]) == 6
    assert sum(x["label"] == "a" for x in a["validation"]) == 3  # stratified
    assert seeded_subset(list(range(10)), 3, 1) != seeded_subset(list(range(10)), 3, 2)


def test_non_utf8_missing_column_empty_and_unseen_label(tmp_path):
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    with pytest.raises(HybridftError, match="not UTF-8"):
        load_rows(recipe_for(bad), tmp_path)
    ok = tmp_path / "ok.csv"
    pd.DataFrame({"text": ["a", "b", "c", "d"], "label": ["x", "y", "x", "y"]}).to_csv(ok, index=False)
    with pytest.raises(HybridftError, match="no column 'sentence'"):
        load_rows(recipe_for(ok, columns={"text": "sentence"}), tmp_path)
    empty = tmp_path / "empty.csv"
    pd.DataFrame({"text": ["", " "], "label": ["x", "y"]}).to_csv(empty, index=False)
    with pytest.raises(HybridftError, match="no usable rows"):
        load_rows(recipe_for(empty), tmp_path)
    val = tmp_path / "val.csv"
    pd.DataFrame({"text": ["e"], "label": ["z"]}).to_csv(val, index=False)
    with pytest.raises(HybridftError, match="label 'z'"):
        load_rows(recipe_for(ok, validation=str(val)), tmp_path)


def test_malformed_csv_is_a_one_line_error(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('text,label\n"a,b,c\nd,e,f,g\n')
    with pytest.raises(HybridftError, match="malformed|cannot read"):
        load_rows(recipe_for(path), tmp_path)


def test_unlabeled_pool_can_keep_only_texts_of_a_minimum_length(tiny_model, sentiment_csv, tmp_path):
    from hybridft.data.prepare import load_unlabeled_rows

    from .conftest import base_recipe

    pool = tmp_path / "pool.csv"
    texts = ["good", "not good", "a fine and moving film", "dull", "the plot never quite comes together"]
    pd.DataFrame({"text": texts}).to_csv(pool, index=False)
    recipe = base_recipe(tiny_model, sentiment_csv)
    recipe["data"]["unlabeled"] = {"path": str(pool), "min_words": 3}
    rows, counts = load_unlabeled_rows(validate_recipe(recipe), tmp_path, {})
    assert sorted(r["text"] for r in rows) == sorted(t for t in texts if len(t.split()) >= 3)
    assert counts["dropped_short"] == 3 and counts["rows_used"] == 2
