"""End to end through the CLI, and every bad input of the core issue as a one-line error."""

import json
import subprocess
import sys

import pytest

from .conftest import base_recipe, write_recipe
from .helpers import run_cli


def test_run_writes_a_complete_run_folder_that_loads_with_plain_transformers(tiny_model, sentiment_csv, tmp_path,
                                                                             capsys):
    recipe = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, sentiment_csv, epochs=2, eval_every=4))
    out = tmp_path / "run"
    assert run_cli("run", recipe, "--out", out, "--no-progress", "stages.0.optimizer.lr=0.002") == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and "accuracy=" in printed
    for name in ("recipe.yaml", "metrics.jsonl", "report.json", "report.md", "model/model.safetensors",
                 "model/config.json", "model/hybridft.json"):
        assert (out / name).exists(), name
    assert list((out / "tensorboard").rglob("events.out.tfevents*"))
    assert "lr: 0.002" in (out / "recipe.yaml").read_text()
    report = json.loads((out / "report.json").read_text())
    assert {"accuracy", "f1_macro"} <= set(report["metrics"])
    assert report["params"]["trainable"] == report["params"]["total"] > 0
    assert report["wall_time_s"] > 0 and report["peak_memory_mb"] > 0 and len(report["stages"]) == 1
    assert "## Confusion matrix" in (out / "report.md").read_text()

    from transformers import AutoModelForSequenceClassification, pipeline

    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert model.config.id2label == {0: "negative", 1: "positive"}
    clf = pipeline("text-classification", model=str(out / "model"), device=-1)
    assert clf("the film was great")[0]["label"] in {"negative", "positive"}

    # predict and eval on the saved folder
    assert run_cli("predict", out / "model", "--text", "the film was good", "--text", "awful plot") == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["text"] for x in lines] == ["the film was good", "awful plot"] and all("label" in x for x in lines)
    assert run_cli("eval", out / "model", sentiment_csv) == 0
    assert "accuracy" in json.loads(capsys.readouterr().out)


def test_token_classification_end_to_end(tiny_model, conll_file, tmp_path, capsys):
    recipe = base_recipe(tiny_model, conll_file, epochs=2)
    recipe.update(task="token_classification", data={"train": str(conll_file), "validation": str(conll_file)})
    out = tmp_path / "ner"
    assert run_cli("run", write_recipe(tmp_path / "r.yaml", recipe), "--out", out, "--no-progress") == 0
    report = json.loads((out / "report.json").read_text())
    assert {"entity_f1", "entity_precision", "token_accuracy"} <= set(report["metrics"])
    assert report["labels"] == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    from transformers import AutoModelForTokenClassification

    assert AutoModelForTokenClassification.from_pretrained(out / "model").config.num_labels == 5
    assert run_cli("predict", out / "model", "--text", "john went to paris") == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["tokens"] == ["john", "went", "to", "paris"]


def test_validate_and_list(tiny_model, sentiment_csv, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, sentiment_csv))
    assert run_cli("validate", recipe) == 0
    assert "ok:" in capsys.readouterr().out
    assert run_cli("list") == 0
    listed = capsys.readouterr().out
    assert "full" in listed and "layers" in listed and "task" in listed


def _bad_cases(tiny_model, sentiment_csv, tmp_path):
    good = base_recipe(tiny_model, sentiment_csv)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9 good,positive\n".encode("latin-1"))
    blank = tmp_path / "blank.csv"
    blank.write_text("text,label\n ,positive\n,negative\n")
    unseen = tmp_path / "unseen.csv"
    unseen.write_text("text,label\ngood film,neutral\n")
    no_weights = tmp_path / "noweights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((tiny_model / "config.json").read_text())
    return {
        "missing file": ({**good, "data": {"train": str(tmp_path / "nope.csv")}}, "not found"),
        "unknown column": ({**good, "data": {"train": str(sentiment_csv), "columns": {"text": "review"}}},
                           "no column 'review'"),
        "empty after cleaning": ({**good, "data": {"train": str(blank)}}, "no usable rows"),
        "label not seen in training": ({**good, "data": {"train": str(sentiment_csv), "validation": str(unseen)}},
                                       "label 'neutral'"),
        "non-utf8": ({**good, "data": {"train": str(latin)}}, "not UTF-8"),
        "unknown key": ({**good, "epochs": 3}, "unknown key 'epochs'"),
        "wrong type": ({**good, "seed": "abc"}, "seed"),
        "negative lr": ({**good, "stages": [{"optimizer": {"lr": -0.1}}]}, "stages.0.optimizer.lr"),
        "model without weights": ({**good, "model": {"name": str(no_weights)}}, "no safetensors weights"),
    }


@pytest.mark.parametrize("case", ["missing file", "unknown column", "empty after cleaning",
                                  "label not seen in training", "non-utf8", "unknown key", "wrong type",
                                  "negative lr", "model without weights"])
def test_bad_input_is_one_line_error_and_no_run_folder(tiny_model, sentiment_csv, tmp_path, capsys, case):
    recipe, expected = _bad_cases(tiny_model, sentiment_csv, tmp_path)[case]
    out = tmp_path / "run"
    assert run_cli("run", write_recipe(tmp_path / "r.yaml", recipe), "--out", out, "--no-progress") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and expected in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert not out.exists()


def test_existing_run_folder_is_not_overwritten_without_asking(tiny_model, sentiment_csv, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, sentiment_csv, max_steps=1))
    out = tmp_path / "run"
    assert run_cli("run", recipe, "--out", out, "--no-progress") == 0
    stamp = (out / "report.json").stat().st_mtime_ns
    assert run_cli("run", recipe, "--out", out, "--no-progress") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "report.json").stat().st_mtime_ns == stamp
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert run_cli("run", recipe, "--out", other, "--overwrite", "--no-progress") == 2
    assert (other / "notes.txt").read_text() == "mine"


def test_subprocess_error_has_no_traceback(tmp_path):
    (tmp_path / "r.yaml").write_text("just a string\n")
    proc = subprocess.run([sys.executable, "-m", "hybridft", "validate", str(tmp_path / "r.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr


@pytest.mark.parametrize("select, expected", [
    ({"name": "layers", "top_k": 7}, "only 2 layers"),
    ({"name": "lora", "target_modules": ["no_such_module"]}, "lora.target_modules"),
    ({"name": "lora", "layers": [4]}, "lora.layers has 4"),
    ({"name": "layers", "top_k": 0, "head": False}, "selects no parameter"),
    ({"name": "importance", "density": 2.0}, "density must be in"),
])
def test_validate_catches_selection_problems_without_weights(tiny_model, sentiment_csv, tmp_path, capsys, select,
                                                             expected, monkeypatch):
    import transformers

    def no_weights(*args, **kwargs):
        raise AssertionError("validate loaded weights")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", no_weights)
    recipe = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, sentiment_csv, select=[select]))
    assert run_cli("validate", recipe) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(tiny_model, sentiment_csv, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, sentiment_csv, max_steps=1))
    project = tmp_path / "project"
    (project / "checkpoints").mkdir(parents=True)
    (project / "thesis.tex").write_text("years of work")
    assert run_cli("run", recipe, "--out", project, "--overwrite", "--no-progress") == 2
    assert (project / "thesis.tex").read_text() == "years of work"


def test_overwrite_with_bad_input_keeps_the_old_run(tiny_model, sentiment_csv, tmp_path, capsys):
    out = tmp_path / "run"
    good = base_recipe(tiny_model, sentiment_csv, max_steps=1)
    assert run_cli("run", write_recipe(tmp_path / "r.yaml", good), "--out", out, "--no-progress") == 0
    bad = {**good, "data": {"train": str(tmp_path / "missing.csv")}}
    assert run_cli("run", write_recipe(tmp_path / "bad.yaml", bad), "--out", out, "--overwrite", "--no-progress") == 2
    assert (out / "report.json").is_file() and (out / "model").is_dir()


@pytest.mark.parametrize("change, expected", [
    ({"stages": [{"objectives": [{"name": "task", "weight": 0.0}]}]}, "weight above 0"),
    ({"stages": [{"scheduler": {"name": "reduce_lr_on_plateau"}}]}, "unknown scheduler"),
    ({"model": {"max_length": 4096}}, "at most 64 tokens"),
])
def test_more_bad_recipes_are_caught_by_validate(tiny_model, sentiment_csv, tmp_path, capsys, change, expected):
    recipe = {**base_recipe(tiny_model, sentiment_csv), **change}
    if "model" in change:
        recipe["model"] = {"name": str(tiny_model), **change["model"]}
    assert run_cli("validate", write_recipe(tmp_path / "r.yaml", recipe)) == 2
    assert expected in capsys.readouterr().err


def test_predict_and_eval_refuse_bad_inputs(tiny_model, tmp_path, capsys):
    assert run_cli("predict", tiny_model, "--text", "good") == 2  # a base model: no task head
    assert "no classification, tagging or language-model head" in capsys.readouterr().err
    assert run_cli("validate", tmp_path) == 2
    assert "is a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli("predict", tiny_model, "--batch-size", "0")


@pytest.mark.parametrize("select", [[{"name": "layers", "top_k": 1}], [{"name": "adapter", "reduction_factor": 4}],
                                    [{"name": "importance", "density": 0.3, "batches": 2}]],
                         ids=["layers", "adapter", "importance"])
def test_saved_model_reproduces_the_reported_metrics(tiny_model, sentiment_csv, tmp_path, capsys, select):
    recipe = base_recipe(tiny_model, sentiment_csv, select=select, max_steps=4, optimizer={"lr": 1e-2})
    recipe["data"] = {"train": str(sentiment_csv), "validation": str(sentiment_csv)}
    out = tmp_path / "run"
    assert run_cli("run", write_recipe(tmp_path / "r.yaml", recipe), "--out", out, "--no-progress") == 0
    report = json.loads((out / "report.json").read_text())
    capsys.readouterr()
    assert run_cli("eval", out / "model", sentiment_csv) == 0
    again = json.loads(capsys.readouterr().out)
    for name in ("accuracy", "f1_macro", "loss"):
        assert again[name] == pytest.approx(report["metrics"][name], abs=1e-6), name
