"""`hybridft compare`: strategies on the same data and seeds, a leaderboard, a Pareto front."""

import json

import pytest
import yaml

from hybridft.cli import main

from .conftest import base_recipe, write_recipe


def test_compare_runs_every_strategy_and_seed_and_writes_the_leaderboard(tiny_model, sentiment_csv, tmp_path, capsys):
    base = write_recipe(tmp_path / "base.yaml", base_recipe(tiny_model, sentiment_csv, max_steps=3))
    out = tmp_path / "cmp"
    assert main(["compare", str(base), "--strategies", "full,head", "--seeds", "2", "--out", str(out)]) == 0
    board = json.loads((out / "leaderboard.json").read_text())
    assert board["seeds"] == [42, 43] and {r["strategy"] for r in board["rows"]} == {"full", "head"}
    for r in board["rows"]:
        assert len(r["values"]) == 2 and r["wall_time_s"] > 0 and r["peak_memory_mb"] > 0
    by_name = {r["strategy"]: r for r in board["rows"]}
    assert by_name["head"]["trainable_params"] < by_name["full"]["trainable_params"]
    assert by_name["head"]["pareto"]  # nothing trains fewer parameters
    full, head = (yaml.safe_load((out / "recipes" / f"{label}.yaml").read_text()) for label in ("full", "head"))
    assert full["data"] == head["data"] and full["stages"][0]["max_steps"] == head["stages"][0]["max_steps"] == 3
    assert head["stages"][0]["select"] == [{"name": "layers", "top_k": 0, "head": True}]
    assert head["stages"][0]["prefix_cache"] == {} and full["stages"][0]["prefix_cache"] is None
    assert head["stages"][0]["optimizer"]["lr"] == pytest.approx(1e-3 * 10)
    assert "★" in (out / "leaderboard.md").read_text() and (out / "report.html").read_text().count("<svg") == 1
    err = capsys.readouterr().err
    assert "[1/4] full seed 42: running" in err and "[4/4] head seed 43" in err

    # started again, it reuses the finished runs
    assert main(["compare", str(base), "--strategies", "full,head", "--seeds", "2", "--out", str(out)]) == 0
    assert "done earlier" in capsys.readouterr().err


def test_compare_refuses_unknown_strategies_and_foreign_folders(tiny_model, sentiment_csv, tmp_path, capsys):
    base = write_recipe(tmp_path / "base.yaml", base_recipe(tiny_model, sentiment_csv, max_steps=1))
    assert main(["compare", str(base), "--strategies", "full,nope", "--out", str(tmp_path / "c")]) == 2
    assert "unknown strategy 'nope'" in capsys.readouterr().err and not (tmp_path / "c").exists()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    assert main(["compare", str(base), "--strategies", "full", "--out", str(precious)]) == 2
    assert "holds no hybridft comparison" in capsys.readouterr().err


def test_a_compare_section_in_the_recipe_gives_strategies_and_seeds(tiny_model, sentiment_csv, tmp_path, capsys):
    other = base_recipe(tiny_model, sentiment_csv, max_steps=1, select=[{"name": "layers", "top_k": 1}])
    write_recipe(tmp_path / "top1.yaml", other)  # named relative to the base recipe's folder
    base = write_recipe(tmp_path / "base.yaml", {**base_recipe(tiny_model, sentiment_csv, max_steps=1),
                                                 "compare": {"strategies": ["head", "top1.yaml"], "seeds": 2}})
    assert main(["compare", str(base), "--out", str(tmp_path / "c")]) == 0
    board = json.loads((tmp_path / "c" / "leaderboard.json").read_text())
    assert board["seeds"] == [42, 43] and {r["strategy"] for r in board["rows"]} == {"head", "top1"}
    assert main(["compare", str(tmp_path / "top1.yaml"), "--out", str(tmp_path / "d")]) == 2  # no section, no flag
    assert "give --strategies or a compare: section" in capsys.readouterr().err
