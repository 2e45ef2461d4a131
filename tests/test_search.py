"""`hybridft search`: the search space checked before any trial, Optuna's trials into one folder,
scored on rows held out of train (the recipe's validation set scores the chosen configuration only)."""

from __future__ import annotations

import json

import pytest
import yaml

from hybridft.cli import main

from .conftest import base_recipe, write_recipe

LR = {"stages.0.optimizer.lr": {"low": 1e-4, "high": 1e-2, "log": True}}


def search_recipe(tiny_model, train, tmp_path, space=None, **search) -> dict:
    recipe = base_recipe(tiny_model, train, max_steps=2)
    recipe["search"] = {"trials": 2, "space": space or LR, **search}
    return recipe


def test_validate_names_the_path_of_a_bad_choice_before_any_trial(tiny_model, sentiment_csv, tmp_path, capsys):
    space = {**LR, "stages.0.select": {"choice": [[{"name": "full"}], [{"name": "lora", "r": 0}]]}}
    path = write_recipe(tmp_path / "r.yaml", search_recipe(tiny_model, sentiment_csv, tmp_path, space))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "search: space stages.0.select: choice 2 ([{name: lora, r: 0}])" in err
    assert "lora.r: Input should be greater than or equal to 1" in err and "choice 1" not in err
    assert main(["search", str(path), "--out", str(tmp_path / "s")]) == 2
    assert "choice 2" in capsys.readouterr().err and not (tmp_path / "s").exists()


@pytest.mark.parametrize(("space", "says"), [
    ({"stages.0.optimizr.lr": {"low": 1e-4, "high": 1e-3}}, "unknown key 'optimizr'"),
    ({"stages.3.optimizer.lr": {"low": 1e-4, "high": 1e-3}}, "'3' is not an index of a list of 1"),
    ({"stages.0.optimizer.lr": {"low": 1e-3, "high": 1e-4}}, "low (0.001) must be below high (0.0001)"),
    ({"stages.0.optimizer.lr": {"low": 0, "high": 1e-4}}, "low 0"),
    ("everything", "space 'everything' is no preset; presets: hybrid"),
])
def test_bad_spaces_are_one_line(tiny_model, sentiment_csv, tmp_path, capsys, space, says):
    path = write_recipe(tmp_path / "r.yaml", search_recipe(tiny_model, sentiment_csv, tmp_path, space))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err


def test_the_hybrid_preset_is_valid_for_a_classifier(tiny_model, sentiment_csv, tmp_path, capsys):
    path = write_recipe(tmp_path / "r.yaml", search_recipe(tiny_model, sentiment_csv, tmp_path, "hybrid"))
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err


def test_a_search_writes_best_yaml_which_run_reproduces(tiny_model, sentiment_csv, tmp_path, capsys):
    space = {**LR, "stages.0.select": {"choice": [[{"name": "full"}], [{"name": "layers", "top_k": 1, "head": True}]]}}
    recipe = search_recipe(tiny_model, sentiment_csv, tmp_path, space, confirm={"top": 2, "seeds": 2})
    out = tmp_path / "s"
    assert main(["search", str(write_recipe(tmp_path / "r.yaml", recipe)), "--out", str(out)]) == 0
    summary = json.loads((out / "search.json").read_text())
    assert [t["state"] for t in summary["trials"]] == ["complete", "complete"]
    assert len(summary["confirm"]) == 2 and all(len(r["values"]) == 2 for r in summary["confirm"])
    assert sorted((out / "trials").iterdir()) == [out / "trials" / "0", out / "trials" / "1"]
    best = yaml.safe_load((out / "best.yaml").read_text())
    chosen = summary["chosen"]["overrides"]
    assert best["stages"][0]["select"] == chosen["stages.0.select"] and "search" not in best
    assert best["stages"][0]["optimizer"]["lr"] == chosen["stages.0.optimizer.lr"]
    assert best["data"]["train"] == str(sentiment_csv)  # the recipe's own data, not the inner split
    assert main(["run", str(out / "best.yaml"), "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())["metrics"]
    assert again == pytest.approx(summary["final"]["metrics"])
    page = (out / "report.html").read_text()
    assert "Optimisation history" in page and "data:image/png;base64," in page and "Confirmation" in page
    assert "| trial | state | accuracy |" in (out / "report.md").read_text()
