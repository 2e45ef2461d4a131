"""The new objectives through the real loop: unlabeled stages, pseudo-label rounds, distilling
the mix, resume with objective state, and their bad-input errors."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hybridft.errors import HybridftError
from hybridft.recipe import validate_recipe

from .conftest import base_recipe
from .helpers import resume_at, tiny_classifier, train_and_load


def with_unlabeled(recipe: dict, unlabeled) -> dict:
    recipe["data"]["unlabeled"] = {"path": str(unlabeled)}
    return recipe


def losses(run_dir, key):
    return [r[key] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if key in r]


def test_mlm_alone_on_unlabeled_text_lowers_the_mlm_loss(tiny_model, sentiment_csv, unlabeled_csv, tmp_path):
    recipe = with_unlabeled(base_recipe(tiny_model, sentiment_csv, data="unlabeled", epochs=12,
                                        objectives=[{"name": "mlm", "probability": 0.3}]), unlabeled_csv)
    report, _ = train_and_load(recipe, tmp_path / "run")
    curve = losses(tmp_path / "run", "loss/mlm")
    assert len(curve) == 12 * 8  # 60 sentences, batch 8: 8 steps per epoch
    assert sum(curve[-8:]) / 8 < 0.95 * sum(curve[:8]) / 8  # from ln(35) = 3.56 towards the unigram entropy
    assert report["stages"][0]["evaluations"] == []  # no task evaluation on an unlabeled stage
    assert "| not evaluated |" in (tmp_path / "run" / "report.md").read_text()  # not an empty score


def test_a_student_distilled_on_unlabeled_text_is_evaluated(tiny_model, sentiment_csv, unlabeled_csv, tmp_path):
    """Its head learns the teacher's answers, so unlike an MLM-only stage its score is worth reporting."""
    # the toy teacher and student are sized to learn within these steps in this (shuffled) order
    recipe = with_unlabeled(base_recipe(tiny_model, sentiment_csv, max_steps=120, optimizer={"lr": 2e-3},
                                        group_by_length=False), unlabeled_csv)
    recipe["stages"].append({"name": "student", "init": "pretrained", "data": "unlabeled", "epochs": 12,
                             "group_by_length": False,
                             "keep_best": False, "optimizer": {"lr": 5e-3},
                             "objectives": [{"name": "distill", "teacher": "previous", "temperature": 1.0}]})
    report, _ = train_and_load(recipe, tmp_path / "run")
    student = report["stages"][1]
    assert len(student["evaluations"]) == 12  # one per epoch, as a labeled stage
    assert student["evaluations"][0]["accuracy"] == 0.5 and student["evaluations"][-1]["accuracy"] > 0.9  # learnt
    assert student["evaluations"][-1]["accuracy"] == report["metrics"]["accuracy"]
    row, = [line for line in (tmp_path / "run" / "report.md").read_text().splitlines()
            if line.startswith("| student | full | distillx1 |")]
    assert "| accuracy " in row and row.endswith(" (last) |")  # a score, not "not evaluated"


def test_pseudo_labels_are_counted_checked_against_gold_and_relabeled(tiny_model, sentiment_csv, unlabeled_csv,
                                                                       tmp_path):
    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=40, optimizer={"lr": 5e-3})
    recipe["stages"].append({"name": "self-train", "epochs": 4, "batch_size": 8, "optimizer": {"lr": 1e-3},
                             "objectives": [{"name": "task"},
                                            {"name": "pseudo_label", "threshold": 0.5, "relabel_every": 2}]})
    report, _ = train_and_load(with_unlabeled(recipe, unlabeled_csv), tmp_path / "run")
    rounds = report["stages"][1]["objective_details"]["pseudo_label"]["rounds"]
    assert [r["epoch"] for r in rounds] == [0, 2]
    for r in rounds:
        assert 0 < r["kept"] <= r["pool"] == 60 and sum(r["per_class"].values()) == r["kept"]
        assert r["checked_against_gold"] == r["kept"] and 0 <= r["accuracy_vs_gold"] <= 1
    assert losses(tmp_path / "run", "loss/pseudo_label")
    assert "| 2 | 60 |" in (tmp_path / "run" / "report.md").read_text()  # the second round's row


def test_validate_finds_a_missing_teacher_folder_before_any_training(tiny_model, sentiment_csv, tmp_path, capsys):
    from hybridft.cli import main

    from .conftest import write_recipe

    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=1)
    recipe["stages"].append({"objectives": [{"name": "task"}, {"name": "distill", "teacher": "no/such/teacher"}]})
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert main(["validate", str(path)]) == 2
    assert "stages.1.objectives.1.teacher" in capsys.readouterr().err
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert not (tmp_path / "run").exists()


def test_distill_the_mix_end_to_end(tiny_model, sentiment_csv, unlabeled_csv, tmp_path):
    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=20, optimizer={"lr": 3e-3})
    recipe["data"]["test"] = str(sentiment_csv)
    recipe["stages"] += [
        {"mix": {"alphas": [0.0, 0.5, 1.0], "ensemble": True, "probe_steps": 5}},
        {"name": "distill-mix", "max_steps": 6, "batch_size": 8,
         "objectives": [{"name": "task"},
                        {"name": "distill", "teacher": "pretrained", "weight": 0.5, "source": "both"},
                        {"name": "distill", "teacher": "fine_tuned", "weight": 0.5, "source": "unlabeled"}]}]
    report, final = train_and_load(with_unlabeled(recipe, unlabeled_csv), tmp_path / "run")
    assert [s["name"] for s in report["stages"]] == ["s0", "distill-mix"]
    mix = report["mix"]
    assert {"fine_tuned", "chosen"} <= set(mix["test"]) and "pretrained_with_head" in mix["ensemble"]["test"]
    assert losses(tmp_path / "run", "loss/distill_pretrained") and losses(tmp_path / "run", "loss/distill_fine_tuned")
    assert "Models compared" in (tmp_path / "run" / "report.md").read_text()
    reloaded = tiny_classifier(tmp_path / "run" / "model")  # a plain transformers folder
    assert set(final) == set(reloaded.state_dict())


def test_resume_keeps_objective_state_and_the_mix_teacher(tiny_model, sentiment_csv, unlabeled_csv, tmp_path):
    """Interrupted inside a stage that depends on a pseudo-labeled pool, an MLM head and M_fine."""
    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=10, optimizer={"lr": 3e-3})
    recipe["stages"] += [
        {"mix": {"alphas": [0.0, 0.3]}},
        {"name": "hybrid", "epochs": 2, "batch_size": 8, "eval_every": 4,
         "objectives": [{"name": "task"}, {"name": "pseudo_label", "threshold": 0.5},
                        {"name": "mlm", "source": "unlabeled", "weight": 0.5},
                        {"name": "distill", "teacher": "fine_tuned", "source": "both"}]}]
    recipe["output"] = {"keep_checkpoints": 20, "keep_checkpoints_after_run": True}
    with_unlabeled(recipe, unlabeled_csv)
    report, final = train_and_load(recipe, tmp_path / "full")
    checkpoints = tmp_path / "full" / "checkpoints"
    mid = sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("step-"))
    assert "step-14" in mid  # 10 steps of stage 0, then 4 of the hybrid stage
    resumed, again = resume_at(recipe, tmp_path / "full", "step-14", tmp_path / "crashed")
    assert all(torch.equal(final[k], again[k]) for k in final)
    assert resumed["metrics"] == report["metrics"]
    assert resumed["stages"][-1]["objective_details"] == report["stages"][-1]["objective_details"]


def test_fgm_is_the_task_loss_one_normalised_gradient_step_away(tiny_model):
    from hybridft.objectives.adversarial import Adversarial, AdversarialSpec
    from hybridft.objectives.base import StepContext
    from hybridft.objectives.task import task_loss

    model = tiny_classifier(tiny_model, dropout=0.0)
    torch.manual_seed(0)
    ids = torch.randint(5, 30, (2, 5))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1])}
    objective = Adversarial(AdversarialSpec(method="fgm", epsilon=0.7))
    objective.token_level = False
    outputs = model(input_ids=ids, attention_mask=batch["attention_mask"])
    got = objective.loss(model, batch, outputs, StepContext(None, 0, 0, [0, 1], True, 2))

    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
    loss = task_loss(model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits, batch["labels"])
    (g,) = torch.autograd.grad(loss, embeds)
    step = 0.7 * g / g.flatten(1).norm(dim=1).view(-1, 1, 1)
    expected = task_loss(model(inputs_embeds=embeds.detach() + step, attention_mask=batch["attention_mask"]).logits,
                         batch["labels"])
    assert torch.allclose(got, expected, atol=1e-6)
    assert float(got.detach()) > float(loss.detach())  # the perturbation makes the loss worse


@pytest.mark.parametrize("stage, unlabeled, expected", [
    ({"objectives": [{"name": "task"}, {"name": "pseudo_label"}]}, None, "needs data.unlabeled"),
    ({"objectives": [{"name": "mlm", "source": "unlabeled"}]}, None, "needs data.unlabeled"),
    ({"data": "unlabeled", "objectives": [{"name": "task"}]}, "u", "needs labels"),
    ({"objectives": [{"name": "distill", "teacher": "fine_tuned"}]}, None, "needs a mix stage"),
    ({"objectives": [{"name": "distill", "teacher": "pretrained", "kind": "logits"}]}, None, "no trained task head"),
    ({"objectives": [{"name": "adversarial", "method": "fgm", "source": "unlabeled"}]}, "u", "method: smart"),
    ({"objectives": [{"name": "distill", "teacher": "pretrained"}, {"name": "distill", "teacher": "pretrained"}]},
     None, "listed twice"),
    ({"objectives": [{"name": "distill", "teacher": "stage:teacher"}]}, None, "names no earlier stage"),
    ({"objectives": [{"name": "distill", "teacher": ["previous"]}]}, None, "two or more different"),
    ({"objectives": [{"name": "distill", "teacher": ["previous", "previous"]}]}, None, "two or more different"),
    ({"objectives": [{"name": "distill", "teacher": ["previous", "fine_tuned"], "kind": "hidden"}]}, None,
     "logits only"),
])
def test_recipe_errors(tiny_model, sentiment_csv, unlabeled_csv, stage, unlabeled, expected):
    recipe = base_recipe(tiny_model, sentiment_csv, **stage)
    if unlabeled:
        with_unlabeled(recipe, unlabeled_csv)
    with pytest.raises(HybridftError, match=expected):
        validate_recipe(recipe)


def test_empty_or_missing_unlabeled_data_is_a_clear_error(tiny_model, sentiment_csv, tmp_path):
    from hybridft.data.prepare import load_task_data
    from hybridft.models import load_tokenizer

    recipe = base_recipe(tiny_model, sentiment_csv, objectives=[{"name": "task"}, {"name": "pseudo_label"}])
    tokenizer = load_tokenizer(str(tiny_model))
    empty = tmp_path / "empty.csv"
    empty.write_text("text\n\n")
    for path, expected in [(tmp_path / "nope.csv", "not found"), (empty, "no usable rows|is empty")]:
        with pytest.raises(HybridftError, match=expected):
            load_task_data(validate_recipe(with_unlabeled(recipe, path)), tmp_path, tokenizer)
    # a pool made only of the training sentences is empty once they are dropped as overlap
    with pytest.raises(HybridftError, match="no usable rows"):
        load_task_data(validate_recipe(with_unlabeled(recipe, sentiment_csv)), tmp_path, tokenizer)


def test_a_stage_restarted_from_pretrained_learns_from_the_previous_model(tiny_model, sentiment_csv, unlabeled_csv,
                                                                          tmp_path):
    """Noisy Student: stage 2 starts again from the pretrained weights, its pseudo-labels come from
    the model stage 1 trained (the same labels a `current` teacher gives when the stage continues)."""
    from transformers import AutoModelForSequenceClassification

    def run(init, teacher, out):
        # the toy teacher is sized to learn within 60 steps in this (shuffled) order
        recipe = base_recipe(tiny_model, sentiment_csv, max_steps=60, optimizer={"lr": 2e-3}, group_by_length=False)
        recipe["stages"].append({"name": "student", "init": init, "max_steps": 2, "keep_best": False,
                                 "optimizer": {"name": "sgd", "lr": 1e-12},  # no visible update: compare starts
                                 "objectives": [{"name": "task"},
                                                {"name": "pseudo_label", "teacher": teacher, "threshold": 0.0}]})
        return train_and_load(with_unlabeled(recipe, unlabeled_csv), tmp_path / out)

    restarted, fresh = run("pretrained", "previous", "restarted")
    continued, trained = run("continue", "current", "continued")
    rounds = [r["stages"][1]["objective_details"]["pseudo_label"]["rounds"][0] for r in (restarted, continued)]
    assert rounds[0] == rounds[1] and rounds[0]["accuracy_vs_gold"] > 0.6  # the trained model's labels
    pretrained = AutoModelForSequenceClassification.from_pretrained(str(tiny_model)).state_dict()
    encoder = [k for k in fresh if k.startswith("bert.encoder.")]
    assert all(torch.allclose(fresh[k], pretrained[k], atol=1e-6) for k in encoder)  # back to pretrained
    assert not all(torch.allclose(trained[k], pretrained[k], atol=1e-6) for k in encoder)
    assert not torch.equal(fresh["classifier.weight"], trained["classifier.weight"])  # a new head
    assert restarted["stages"][1]["init"] == "pretrained"
    assert "started again from the pretrained weights" in (tmp_path / "restarted" / "report.md").read_text()


def test_resume_inside_a_restarted_stage_keeps_the_previous_teacher(tiny_model, sentiment_csv, unlabeled_csv,
                                                                    tmp_path):
    # without the teacher's weights in the checkpoint, a resumed run would distill from the
    # pretrained model (all that is left of "previous" once the stage's weights are loaded)
    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=10, optimizer={"lr": 3e-3})
    recipe["stages"].append({"name": "student", "init": "pretrained", "max_steps": 8, "eval_every": 4,
                             "keep_best": False, "objectives": [
                                 {"name": "task"}, {"name": "distill", "teacher": "previous", "source": "unlabeled"}]})
    recipe["output"] = {"keep_checkpoints": 20, "keep_checkpoints_after_run": True}
    with_unlabeled(recipe, unlabeled_csv)
    _, final = train_and_load(recipe, tmp_path / "full")
    _, again = resume_at(recipe, tmp_path / "full", "step-14", tmp_path / "crashed")
    assert all(torch.equal(final[k], again[k]) for k in final)


def test_a_teacher_named_by_stage_is_the_model_that_stage_left_also_after_a_resume(tiny_model, sentiment_csv,
                                                                                    unlabeled_csv, tmp_path):
    """teacher: stage:<name> (an ensemble teacher for Noisy Student): a stage restarted from the
    pretrained weights in between does not change it, and a run resumed after that stage rebuilds it
    from the checkpoint."""
    def recipe(between: bool, teacher: str) -> dict:
        # the toy teacher is sized to learn within 40 steps in this (shuffled) order
        r = with_unlabeled(base_recipe(tiny_model, sentiment_csv, name="first", max_steps=40,
                                       optimizer={"lr": 2e-3}, group_by_length=False), unlabeled_csv)
        if between:  # a second teacher, trained afresh: "previous" is now this one, not the first
            r["stages"].append({"name": "second", "init": "pretrained", "max_steps": 3, "optimizer": {"lr": 2e-3}})
        r["stages"].append({"name": "student", "init": "pretrained", "max_steps": 4, "keep_best": False,
                            "objectives": [{"name": "task"},
                                           {"name": "pseudo_label", "teacher": teacher, "threshold": 0.0},
                                           {"name": "distill", "teacher": ["stage:first", "previous"],
                                            "source": "unlabeled"}] if between else
                            [{"name": "task"}, {"name": "pseudo_label", "teacher": teacher, "threshold": 0.0}]})
        r["output"] = {"keep_checkpoints": 20, "keep_checkpoints_after_run": True}
        return r

    def first_round(report):
        return report["stages"][-1]["objective_details"]["pseudo_label"]["rounds"][0]

    named, final = train_and_load(recipe(True, "stage:first"), tmp_path / "named")
    direct, _ = train_and_load(recipe(False, "previous"), tmp_path / "direct")
    assert first_round(named) == first_round(direct) and first_round(named)["accuracy_vs_gold"] > 0.6
    second, _ = train_and_load(recipe(True, "previous"), tmp_path / "second")  # "previous" is the second teacher
    assert first_round(second) != first_round(named)
    assert "loss/distill_stage:first+previous" in (tmp_path / "named" / "metrics.jsonl").read_text()

    def kept(checkpoint):  # the stages whose weights a checkpoint carries for later teachers
        path = tmp_path / "named" / "checkpoints" / checkpoint / "selectors.safetensors"
        return {k.split("/")[1] for k in load_file(path) if k.startswith("stage_weights/")} if path.exists() else set()

    assert kept("stage-1-done") == {"0"} and kept("stage-2-done") == set()  # let go once no stage needs them

    # as if killed right after the second teacher's stage
    again, weights = resume_at(recipe(True, "stage:first"), tmp_path / "named", "stage-1-done", tmp_path / "resumed")
    assert first_round(again) == first_round(named)
    assert all(torch.equal(final[k], weights[k]) for k in final)


def test_an_adapter_teacher_teaches_a_fresh_student_also_after_a_resume(tiny_model, sentiment_csv, unlabeled_csv,
                                                                         tmp_path):
    """init: pretrained after an adapter stage: the student is a plain pretrained model again, its
    teacher keeps the adapters (as "previous" or "stage:<name>"), and a run resumed inside the
    student's stage rebuilds that teacher from the checkpoint."""
    def recipe(teacher: str) -> dict:
        r = with_unlabeled(base_recipe(tiny_model, sentiment_csv, name="first", max_steps=30, optimizer={"lr": 2e-3},
                                       select=[{"name": "adapter", "reduction_factor": 4}]), unlabeled_csv)
        r["stages"].append({"name": "student", "init": "pretrained", "max_steps": 8, "eval_every": 4,
                            "keep_best": False, "objectives": [
                                {"name": "task"}, {"name": "distill", "teacher": teacher, "source": "unlabeled"}]})
        r["output"] = {"keep_checkpoints": 20, "keep_checkpoints_after_run": True}
        return r

    _, final = train_and_load(recipe("previous"), tmp_path / "previous")
    assert not any("adapter" in k for k in final)  # the student has no adapters; the teacher had them
    first = load_file(tmp_path / "previous" / "checkpoints" / "stage-0-done" / "model.safetensors")
    assert any("adapter" in k for k in first)
    _, named = train_and_load(recipe("stage:first"), tmp_path / "named")  # the same teacher, rebuilt
    assert all(torch.equal(final[k], named[k]) for k in final)

    # killed inside the student's stage
    _, again = resume_at(recipe("previous"), tmp_path / "previous", "step-34", tmp_path / "crashed")
    assert all(torch.equal(final[k], again[k]) for k in final)


def test_restarting_the_first_stage_or_a_pretrained_pseudo_label_teacher_is_refused(tiny_model, sentiment_csv,
                                                                                      unlabeled_csv):
    with pytest.raises(HybridftError, match="stages.0.init"):
        validate_recipe(base_recipe(tiny_model, sentiment_csv, init="pretrained"))
    recipe = with_unlabeled(base_recipe(tiny_model, sentiment_csv), unlabeled_csv)
    recipe["stages"].append({"objectives": [{"name": "task"}, {"name": "pseudo_label", "teacher": "pretrained"}]})
    with pytest.raises(HybridftError, match="trained head"):
        validate_recipe(recipe)


def test_a_relabeling_with_nothing_confident_keeps_the_last_labels(monkeypatch):
    """At stage start nothing confident is an error; at a later re-labeling (e.g. after a smoothness
    term made the model unsure) the previous round's pseudo-labels stay and training goes on."""
    from types import SimpleNamespace

    import hybridft.objectives.pseudo_label as pl
    from hybridft.objectives.pseudo_label import PseudoLabel, PseudoLabelSpec

    rounds = iter([[[4.0, 0.0], [0.0, 4.0], [0.1, 0.0]], [[0.1, 0.0], [0.0, 0.1], [0.1, 0.0]]])
    monkeypatch.setattr(pl, "predict", lambda *a, **k: (list(map(np.array, next(rounds))), None))
    written = []
    run = SimpleNamespace(recipe=SimpleNamespace(task="classification"), data=SimpleNamespace(
        unlabeled=[{}] * 3, unlabeled_gold=None, label_names=["neg", "pos"]), collator=None, device="cpu",
        progress=False, model=None, global_step=0, log=SimpleNamespace(write=lambda step, row: written.append(row)),
        processes=SimpleNamespace(unwrap=lambda model: model))
    objective = PseudoLabel(PseudoLabelSpec(threshold=0.9, relabel_every=1))
    objective.on_stage_start(run)
    assert objective.kept.tolist() == [0, 1] and objective.kept_labels.tolist() == [0, 1]
    objective.on_epoch_start(run, 1)
    assert objective.kept.tolist() == [0, 1] and objective.kept_labels.tolist() == [0, 1]
    assert [r["kept"] for r in objective.summary()["rounds"]] == [2, 0]
    assert written[-1]["pseudo/kept_previous"] == 1
    with pytest.raises(HybridftError, match="reaches confidence"):  # at stage start: nothing to train on
        fresh = PseudoLabel(PseudoLabelSpec(threshold=0.99))
        rounds = iter([[[0.1, 0.0]] * 3])
        monkeypatch.setattr(pl, "predict", lambda *a, **k: (list(map(np.array, next(rounds))), None))
        fresh.on_stage_start(run)


def test_an_ensemble_of_teachers_labels_the_pool_with_their_mean_probabilities(monkeypatch):
    from types import SimpleNamespace

    import hybridft.objectives.pseudo_label as pl

    # two teachers that disagree: the first sure of class 0, the second leaning to class 1
    sure, leaning = np.log([[0.9, 0.1], [0.9, 0.1]]), np.log([[0.3, 0.7], [0.6, 0.4]])
    teachers = {"stage:a": "A", "stage:b": "B"}
    monkeypatch.setattr(pl, "build_teacher", lambda run, name, need_head: teachers[name])
    monkeypatch.setattr(pl, "predict", lambda model, *a, **k: (
        list({"A": sure, "B": leaning}[model]), None))
    run = SimpleNamespace(recipe=SimpleNamespace(task="classification"), data=SimpleNamespace(
        unlabeled=[{}] * 2, unlabeled_gold=None, label_names=["neg", "pos"]), collator=None, device="cpu",
        progress=False, model=None, global_step=0, log=SimpleNamespace(write=lambda step, row: None), processes=None)
    objective = pl.PseudoLabel(pl.PseudoLabelSpec(threshold=0.7, teacher=["stage:a", "stage:b"]))
    objective.on_stage_start(run)
    # means: [0.6, 0.4] (below 0.7) and [0.75, 0.25]; the first alone keeps both rows, the second row 0 as pos
    assert objective.kept.tolist() == [1] and objective.kept_labels.tolist() == [0]
    with pytest.raises(ValueError, match="frozen teachers only"):
        pl.PseudoLabelSpec(teacher=["current", "previous"])
