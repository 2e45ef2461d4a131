"""Multi-task: one shared encoder, a head per task, per-task metrics and model folders."""

import pytest
import torch
from safetensors.torch import load_file

from hybridft.errors import HybridftError
from hybridft.multitask.sampling import multitask_batches
from hybridft.recipe import validate_recipe

from .helpers import tiny_classifier


def multitask_recipe(model_dir, sentiment_csv, conll_file, **stage) -> dict:
    return {
        "name": "mt", "task": "multi_task", "model": {"name": str(model_dir), "max_length": 32},
        "tasks": [{"name": "sentiment", "task": "classification", "data": {"train": str(sentiment_csv)}},
                  {"name": "ner", "task": "token_classification", "weight": 2.0,
                   "data": {"train": str(conll_file), "validation": str(conll_file)}}],
        "stages": [{"name": "shared", "optimizer": {"lr": 3e-3}, "batch_size": 4, "epochs": 2, **stage}],
    }


def test_one_run_trains_every_task_and_saves_a_loadable_model_per_task(tiny_model, sentiment_csv, conll_file,
                                                                       tmp_path):
    from transformers import AutoModelForTokenClassification

    report, _ = train_and_load_multitask(multitask_recipe(tiny_model, sentiment_csv, conll_file), tmp_path / "run")
    metrics = report["metrics"]
    assert {"score", "sentiment/accuracy", "ner/entity_f1", "ner/token_accuracy"} <= set(metrics)
    assert metrics["score"] == pytest.approx((metrics["sentiment/accuracy"] + metrics["ner/entity_f1"]) / 2)
    model_dir = tmp_path / "run" / "model"
    sentiment = tiny_classifier(model_dir / "sentiment")  # plain transformers folders
    ner = AutoModelForTokenClassification.from_pretrained(model_dir / "ner")
    assert ner.config.id2label[0] == "O" and sentiment.config.num_labels == 2
    # one encoder: both folders hold the same encoder weights, and encoder/ holds them alone
    a, b = load_file(model_dir / "sentiment" / "model.safetensors"), load_file(model_dir / "ner" / "model.safetensors")
    encoder = load_file(model_dir / "encoder" / "model.safetensors")
    shared = [k for k in a if k.startswith("bert.encoder.")]
    assert shared and all(torch.equal(a[k], b[k]) and torch.equal(a[k], encoder[k.removeprefix("bert.")])
                          for k in shared)
    pretrained = load_file(tiny_model / "model.safetensors")
    assert not torch.equal(a["bert.encoder.layer.0.attention.self.query.weight"],
                           pretrained["encoder.layer.0.attention.self.query.weight"])


def train_and_load_multitask(recipe, run_dir):
    from hybridft.api import run_recipe

    return run_recipe(validate_recipe(recipe), run_dir.parent, run_dir, progress=False), None


def test_selectors_apply_to_the_shared_encoder_and_every_head(tiny_model, sentiment_csv, conll_file, tmp_path):
    recipe = multitask_recipe(tiny_model, sentiment_csv, conll_file, select=[{"name": "layers", "top_k": 1}],
                              epochs=1)
    report, _ = train_and_load_multitask(recipe, tmp_path / "run")
    where = report["stages"][0]["trainable_by_module"]
    assert "encoder.encoder.layer.1" in where and "encoder.encoder.layer.0" not in where
    assert where["heads.sentiment"] == 2 * 32 + 2 and where["heads.ner"] == 5 * 32 + 5  # each task's classifier


def test_sampling_strategies():
    rows = [list(range(0, 40)), list(range(40, 48))]  # 10 batches of 4 and 2 batches of 4
    proportional = multitask_batches(rows, 4, seed=0, strategy="proportional", temperature=2.0)
    assert sorted(i for b in proportional for i in b) == list(range(48))  # every example once
    assert all(len({i >= 40 for i in b}) == 1 for b in proportional)  # one task per batch
    robin = multitask_batches(rows, 4, seed=0, strategy="round_robin", temperature=2.0)
    assert [b[0] >= 40 for b in robin[:4]] == [False, True, False, True]
    small = [sum(b[0] >= 40 for b in multitask_batches(rows, 4, seed=s, strategy="temperature", temperature=4.0))
             for s in range(20)]
    assert sum(small) / len(small) > 12 * 2 / 12 * 1.5  # T=4 draws the small task far more than 2 in 12
    assert multitask_batches(rows, 4, 3, "temperature", 2.0) == multitask_batches(rows, 4, 3, "temperature", 2.0)


@pytest.mark.parametrize("change, expected", [
    (lambda r: r["tasks"][1].update(name="sentiment"), "used by two tasks"),
    (lambda r: r["tasks"][1].pop("task"), "tasks.1.task: Field required"),
    (lambda r: r["stages"].append({"mix": {}}), "mix stages are for single-task recipes"),
    (lambda r: r["stages"][0].update(objectives=[{"name": "task"}, {"name": "distill", "teacher": "previous"}]),
     "not supported in multi-task"),
    (lambda r: r.update(tasks=r["tasks"][:1]), "at least two tasks"),
])
def test_multitask_recipe_errors(tiny_model, sentiment_csv, conll_file, change, expected):
    recipe = multitask_recipe(tiny_model, sentiment_csv, conll_file)
    change(recipe)
    with pytest.raises(HybridftError, match=expected):
        validate_recipe(recipe)


def test_task_specific_stages_after_the_shared_one_and_resume(tiny_model, sentiment_csv, conll_file, tmp_path):
    import shutil

    from hybridft.api import run_recipe

    recipe = multitask_recipe(tiny_model, sentiment_csv, conll_file, epochs=1)
    recipe["stages"].append({"name": "tune", "per_task": True, "optimizer": {"lr": 3e-3}, "batch_size": 4,
                             "max_steps": 3})
    recipe["output"] = {"keep_checkpoints": 5, "keep_checkpoints_after_run": True}
    report, _ = train_and_load_multitask(recipe, tmp_path / "run")
    assert [s["name"] for s in report["stages"]] == ["shared", "tune:sentiment", "tune:ner"]
    model_dir = tmp_path / "run" / "model"
    assert not (model_dir / "encoder").exists()  # the tasks no longer share one
    a, b = load_file(model_dir / "sentiment" / "model.safetensors"), load_file(model_dir / "ner" / "model.safetensors")
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(a[key], b[key])

    crashed = tmp_path / "crashed"  # died during the task-specific stage: it starts again from its beginning
    shutil.copytree(tmp_path / "run", crashed)
    (crashed / "checkpoints" / "latest").write_text("stage-0-done")
    shutil.rmtree(crashed / "model")
    run_recipe(validate_recipe(recipe), tmp_path, crashed, resume=True, progress=False)
    for task in ("sentiment", "ner"):
        x, y = (load_file(d / "model" / task / "model.safetensors") for d in (tmp_path / "run", crashed))
        assert all(torch.equal(x[k], y[k]) for k in x)


def test_per_task_needs_a_multitask_recipe_and_stays_per_task(tiny_model, sentiment_csv, conll_file):
    from .conftest import base_recipe

    with pytest.raises(HybridftError, match="per_task is for multi_task recipes"):
        validate_recipe(base_recipe(tiny_model, sentiment_csv, per_task=True))
    recipe = multitask_recipe(tiny_model, sentiment_csv, conll_file, per_task=True)
    recipe["stages"].append({"name": "again"})
    with pytest.raises(HybridftError, match="later stages must be per_task too"):
        validate_recipe(recipe)
