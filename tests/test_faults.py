"""Numerical faults and a full disk: skipped and counted, or a clear stop with the last good state."""

import errno

import pytest
import torch
from safetensors.torch import load_file

from hybridft.api import run_recipe
from hybridft.errors import HybridftError
from hybridft.objectives import task as task_module
from hybridft.recipe import validate_recipe
from hybridft.training import checkpoint as checkpoint_module

from .conftest import base_recipe
from .helpers import train_and_load


def nan_on_draws(monkeypatch, draws):
    original = task_module.Task.loss

    def flaky(self, model, batch, outputs, ctx):
        loss = original(self, model, batch, outputs, ctx)
        return loss * float("nan") if draws(ctx.draw) else loss

    monkeypatch.setattr(task_module.Task, "loss", flaky)


def test_nonfinite_steps_are_skipped_and_counted(tiny_model, sentiment_csv, tmp_path, monkeypatch):
    nan_on_draws(monkeypatch, lambda d: d in (2, 5))
    report, final = train_and_load(base_recipe(tiny_model, sentiment_csv, max_steps=8), tmp_path / "run")
    assert report["stages"][0]["skipped_nonfinite_steps"] == 2
    assert all(torch.isfinite(t).all() for t in final.values())
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count('"skipped_nonfinite": 1') == 2


def test_too_many_bad_steps_in_a_row_stop_with_a_usable_checkpoint(tiny_model, sentiment_csv, tmp_path, monkeypatch):
    nan_on_draws(monkeypatch, lambda d: d >= 3)
    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=20, max_bad_steps=4)
    with pytest.raises(HybridftError, match="4 steps in a row had a non-finite loss"):
        run_recipe(validate_recipe(recipe), tmp_path, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "model").exists()  # no final model from a broken run
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    weights = load_file(tmp_path / "run" / "checkpoints" / latest / "model.safetensors")
    assert latest == "step-7" and all(torch.isfinite(t).all() for t in weights.values())


def test_disk_full_on_a_checkpoint_write_is_a_clear_error_and_keeps_the_previous_one(tiny_model, sentiment_csv,
                                                                                      tmp_path, monkeypatch):
    real_save = checkpoint_module.save_model
    calls = []

    def save_until_full(model, path):
        calls.append(path)
        if len(calls) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(model, path)

    monkeypatch.setattr(checkpoint_module, "save_model", save_until_full)
    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=6, eval_every=2)
    with pytest.raises(HybridftError, match="No space left on device; the last complete checkpoint, step-2, is intact"):
        run_recipe(validate_recipe(recipe), tmp_path, tmp_path / "run", progress=False)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step-2"
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".tmp")]
