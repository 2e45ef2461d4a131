"""The Python API as a notebook uses it (issue 34): the trained model in memory, data held in memory,
callbacks, experiment trackers, and SavedModel's evaluate / probabilities / .to(device)."""

from __future__ import annotations

import pytest

import hybridft

from .conftest import base_recipe

TEXTS = ["the film was good", "a boring plot", "great acting"]


# --- the model in memory --------------------------------------------------------------------------------------

def test_the_trained_model_is_in_memory_and_predicts_as_its_saved_folder(tiny_model, sentiment_csv, tmp_path):
    result = hybridft.run(base_recipe(tiny_model, sentiment_csv, max_steps=3), out=tmp_path / "run", progress=False)
    in_memory = result.model
    assert isinstance(in_memory, hybridft.SavedModel) and in_memory.labels == ["negative", "positive"]
    assert not in_memory.model.training  # ready to predict: eval mode, as load gives a folder
    saved = hybridft.load(result.model_dir)
    assert in_memory.meta == saved.meta and in_memory.task == saved.task
    mine, theirs = in_memory.predict(TEXTS), saved.predict(TEXTS)
    assert [r["label"] for r in mine] == [r["label"] for r in theirs]
    assert [r["score"] for r in mine] == pytest.approx([r["score"] for r in theirs], abs=1e-4)


def test_the_model_is_in_memory_without_a_saved_folder(tiny_model, sentiment_csv, tmp_path):
    recipe = {**base_recipe(tiny_model, sentiment_csv, max_steps=2), "output": {"save_model": False}}
    result = hybridft.run(recipe, out=tmp_path / "run", progress=False)
    assert result.model_dir is None
    records = result.model.predict(TEXTS)
    assert [r["text"] for r in records] == TEXTS and all(r["label"] in ("negative", "positive") for r in records)


def test_a_run_found_complete_reads_its_model_folder(tiny_model, sentiment_csv, tmp_path):
    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=1)
    first = hybridft.run(recipe, out=tmp_path / "run", progress=False)
    again = hybridft.run(recipe, out=tmp_path / "run", resume=True, progress=False)
    assert again.already_complete
    assert again.model.predict(TEXTS) == hybridft.load(first.model_dir).predict(TEXTS)
