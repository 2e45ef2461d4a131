"""Frozen-prefix cache: the same weights as recomputing the prefix every step, reuse across epochs and
stages, invalidation when the prefix changes."""

from __future__ import annotations

import pytest
import torch

from hybridft.errors import HybridftError
from hybridft.recipe import validate_recipe

from .conftest import base_recipe
from .helpers import train_and_load

TOP_LAYER = [{"name": "layers", "top_k": 1, "head": True}]


def recipe_with(model, train, stages: list[dict]) -> dict:
    recipe = base_recipe(model, train)
    recipe["stages"] = [{"name": f"s{i}", "optimizer": {"lr": 1e-3}, "batch_size": 8, "epochs": 2, **s}
                        for i, s in enumerate(stages)]
    return recipe


def test_cached_and_recomputed_prefix_give_identical_weights(tiny_model, sentiment_csv, tmp_path):
    cached, w_cached = train_and_load(recipe_with(tiny_model, sentiment_csv, [
        {"select": TOP_LAYER, "epochs": 3, "prefix_cache": {}}]), tmp_path / "cached")
    _, w_recomputed = train_and_load(recipe_with(tiny_model, sentiment_csv, [
        {"select": TOP_LAYER, "epochs": 3, "prefix_cache": {"max_mb": 0}}]), tmp_path / "recomputed")
    assert all(torch.equal(w_cached[k], w_recomputed[k]) for k in w_cached)
    summary = cached["stages"][0]["prefix_cache"]
    n = cached["data"]["rows_used"]["train"]
    assert summary["frozen_layers"] == 1 and summary["computed"] == n  # once per example...
    assert summary["hits"] == 2 * n  # ...then read in the two later epochs
    assert f"computed for {n:,} examples and read back {2 * n:,} times" in (tmp_path / "cached" / "report.md").read_text()


def test_cache_replays_the_real_prefix(no_dropout_model, sentiment_csv, tmp_path):
    """Against the plain forward pass (no dropout anywhere): equal up to padding's rounding."""
    _, plain = train_and_load(recipe_with(no_dropout_model, sentiment_csv, [{"select": TOP_LAYER}]), tmp_path / "plain")
    _, cached = train_and_load(recipe_with(no_dropout_model, sentiment_csv, [
        {"select": TOP_LAYER, "prefix_cache": {}}]), tmp_path / "cached")
    from safetensors.torch import load_file

    assert all(torch.allclose(plain[k], cached[k], atol=1e-5) for k in plain)
    start = load_file(no_dropout_model / "model.safetensors")["encoder.layer.1.attention.self.query.weight"]
    moved = (cached["bert.encoder.layer.1.attention.self.query.weight"] - start).abs().max()
    assert moved > 1e-3  # the top layer did train, far more than the tolerance above


def test_later_stage_reuses_the_cache_until_the_prefix_trains(tiny_model, sentiment_csv, tmp_path):
    report, _ = train_and_load(recipe_with(tiny_model, sentiment_csv, [
        {"select": [{"name": "layers", "top_k": 0, "head": True}], "prefix_cache": {}},  # probe: all layers frozen
        {"select": [{"name": "layers", "top_k": 0, "head": True}], "prefix_cache": {}},  # same prefix: reused
        {"select": [{"name": "full"}]},                                                     # the prefix trains
        {"select": [{"name": "layers", "top_k": 0, "head": True}], "prefix_cache": {}},  # so: recomputed
    ]), tmp_path / "run")
    n = report["data"]["rows_used"]["train"]
    caches = [s["prefix_cache"] for s in report["stages"]]
    assert caches[0]["frozen_layers"] == 2 and caches[0]["computed"] == n
    assert caches[1]["computed"] == 0 and caches[1]["hits"] == 2 * n
    assert caches[2] is None
    assert caches[3]["computed"] == n


def test_nothing_frozen_below_the_trained_layers_turns_it_off(tiny_model, sentiment_csv, tmp_path):
    report, _ = train_and_load(recipe_with(tiny_model, sentiment_csv, [
        {"select": [{"name": "layers", "indices": [0], "head": True}], "prefix_cache": {}}]), tmp_path / "run")
    assert "nothing below the trained layers is frozen" in report["stages"][0]["prefix_cache"]


def test_prefix_cache_is_refused_where_it_cannot_apply(tmp_path):
    recipe = {"task": "causal_lm", "data": {"train": "x.txt"}, "stages": [{"prefix_cache": {}}]}
    with pytest.raises(HybridftError, match="prefix_cache"):
        validate_recipe(recipe)
