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


def test_group_by_length_applies_to_each_tasks_batches():
    import random

    rows = [list(range(0, 200)), list(range(200, 240))]
    lengths = [random.Random(i).randint(3, 60) for i in range(240)]

    def padding(batches):  # padded positions that carry no token
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)

    plain = multitask_batches(rows, 8, seed=0, strategy="proportional", temperature=2.0)
    grouped = multitask_batches(rows, 8, seed=0, strategy="proportional", temperature=2.0, lengths=lengths)
    assert sorted(i for b in grouped for i in b) == list(range(240))  # every example once
    assert all(len({i >= 200 for i in b}) == 1 for b in grouped)  # one task per batch
    assert padding(grouped) < padding(plain) / 4


@pytest.mark.parametrize("change, expected", [
    (lambda r: r["tasks"][1].update(name="sentiment"), "used by two tasks"),
    (lambda r: r["tasks"][1].pop("task"), "tasks.1.task: Field required"),
    (lambda r: r["stages"].append({"mix": {}}), "it comes last, after a per_task stage"),
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


def per_task_recipe(tiny_model, sentiment_csv, conll_file, mix: dict) -> dict:
    recipe = multitask_recipe(tiny_model, sentiment_csv, conll_file, epochs=1)
    recipe["stages"].append({"name": "tune", "per_task": True, "optimizer": {"lr": 3e-3}, "batch_size": 4,
                             "max_steps": 3})
    recipe["stages"].append({"name": "merge", "mix": mix})
    return recipe


@pytest.mark.parametrize("mix, expected", [
    ({"method": "slerp"}, "method slerp merges M_pre with one model"),
    ({"method": "ties", "weights": [1.0, 2.0, 3.0]}, "one weight per task"),
    ({"method": "ties", "models": ["stage:shared"]}, "mix.models: a multi-task merge"),
    ({"method": "linear", "per_layer": True}, "mix.per_layer: a multi-task merge"),
])
def test_a_multitask_merge_is_refused_where_it_cannot_work(tiny_model, sentiment_csv, conll_file, mix, expected):
    with pytest.raises(HybridftError, match=expected):
        validate_recipe(per_task_recipe(tiny_model, sentiment_csv, conll_file, mix))


def test_the_tasks_own_encoders_merge_into_one_shared_encoder(tiny_model, sentiment_csv, conll_file, tmp_path):
    """After a per_task stage every task has its own encoder; a TIES merge of their task vectors
    against the pretrained encoder is one encoder that both tasks share, each keeping its head."""
    from hybridft.merging import MergePoint, build_method, merge_states
    from hybridft.multitask.model import unshared
    from hybridft.training.merge_step import TaskMergeSearch

    from .helpers import make_run

    recipe = per_task_recipe(tiny_model, sentiment_csv, conll_file, {"method": "ties"})
    run = make_run(recipe, tmp_path / "run")
    model = unshared(run.model)
    for seed, name in enumerate(model.task_names):  # each task's encoder moved its own way
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in model.task_model(name).base_model.parameters():
                p.add_(0.01 * torch.randn_like(p))
    encoders = [{k: v.clone() for k, v in model.task_model(n).base_model.state_dict().items()} for n in model.task_names]
    search = TaskMergeSearch(run, model, run.recipe.stages[-1].mix, None)
    ties, point = build_method("ties"), MergePoint(scale=1.0, density=0.5)
    merged = search.model_at(ties, point)
    expected = merge_states(run.artifacts.pretrained_state, encoders, ties, point)
    assert all(torch.equal(merged.encoder.state_dict()[k], v) for k, v in expected.items())
    assert all(merged.task_model(n).base_model is merged.encoder for n in merged.task_names)
    for name in model.task_names:
        assert torch.equal(merged.task_model(name).classifier.weight, model.task_model(name).classifier.weight)
    assert search.model_at(None, None) is model  # M_fine: the per-task model, untouched
    assert all(torch.equal(model.task_model(n).base_model.state_dict()[k], e[k])
               for n, e in zip(model.task_names, encoders, strict=True) for k in e)


def test_a_multitask_run_merges_its_per_task_models_and_saves_the_choice(tiny_model, sentiment_csv, conll_file,
                                                                         tmp_path):
    recipe = per_task_recipe(tiny_model, sentiment_csv, conll_file,
                             {"method": ["task_arithmetic", "ties"], "scales": [0.5, 1.0], "densities": [0.5]})
    report, _ = train_and_load_multitask(recipe, tmp_path / "run")
    mix = report["mix"]
    assert mix["models"] == ["task sentiment's model", "task ner's model"]
    assert [(c["method"], c["scale"]) for c in mix["curve"]] == [("task_arithmetic", 0.5), ("task_arithmetic", 1.0),
                                                                ("ties", 0.5), ("ties", 1.0)]
    assert "score" in mix["fine_tuned"] and set(mix["methods"]) == {"task_arithmetic", "ties"}
    chosen = mix["chosen"]["score"]
    model_dir = tmp_path / "run" / "model"
    assert (model_dir / "encoder").exists() == (mix["final"] == "merge")  # a merge shares one encoder again
    assert report["metrics"]["score"] == pytest.approx(chosen)
