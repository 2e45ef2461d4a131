"""pooling: mean: the head reads the mean of the last layer's real tokens, in teacher stages only."""

import copy

import pytest
import torch
from safetensors.torch import load_file

from hybridft.errors import HybridftError
from hybridft.pooling import use_mean_pooling
from hybridft.recipe import validate_recipe

from .conftest import base_recipe
from .helpers import resume_at, tiny_classifier, tokenized, train_and_load


def encode(model_dir, texts):
    from hybridft.models import load_tokenizer

    return load_tokenizer(str(model_dir))(texts, padding=True, return_tensors="pt")


def mean_pooled_reference(model, batch):
    """By hand: masked mean of the last layer, then BERT's pooler (dense, tanh) and the classifier."""
    hidden = model.bert(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    mean = (hidden * mask).sum(1) / mask.sum(1)
    return model.classifier(model.bert.pooler.activation(model.bert.pooler.dense(mean)))


def test_the_head_reads_the_mean_of_the_real_tokens(tiny_model):
    plain = tiny_classifier(tiny_model).eval()
    pooled = use_mean_pooling(use_mean_pooling(copy.deepcopy(plain)))  # twice: hooked once
    texts = ["good", "the movie was really very boring and sad", "a lovely film"]
    batch = encode(tiny_model, texts)
    with torch.no_grad():
        logits = pooled(**batch).logits
        assert torch.allclose(logits, mean_pooled_reference(plain, batch), atol=1e-5)
        assert not torch.allclose(logits, plain(**batch).logits, atol=1e-3)  # not what [CLS] gives
        alone = pooled(**encode(tiny_model, texts[:1])).logits  # padding does not count
        assert torch.allclose(alone, logits[:1], atol=1e-5)
        twin = copy.deepcopy(pooled)  # teachers are copies: they pool with their own hooks
        assert torch.allclose(twin(**batch).logits, logits, atol=1e-6)
    assert set(pooled.state_dict()) == set(plain.state_dict())  # no new weights: same class, same files


def test_gradients_reach_every_token_through_the_mean(tiny_model):
    pooled = use_mean_pooling(tiny_classifier(tiny_model, dropout=0.0))
    batch = encode(tiny_model, ["the film was good", "bad"])
    embeds = pooled.bert.embeddings.word_embeddings(batch["input_ids"]).detach().requires_grad_(True)
    pooled(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits.sum().backward()
    per_token = embeds.grad.abs().sum(-1)
    assert (per_token[batch["attention_mask"].bool()] > 0).all()


def teacher_then_student(tiny_model, train, unlabeled, **student) -> dict:
    recipe = base_recipe(tiny_model, train, name="teacher", max_steps=40, optimizer={"lr": 2e-3}, pooling="mean",
                         keep_best=False)
    recipe["data"]["unlabeled"] = {"path": str(unlabeled)}
    recipe["stages"].append({"name": "student", "init": "pretrained", "max_steps": 12, "keep_best": False,
                             "optimizer": {"lr": 2e-3}, **student})
    recipe["output"] = {"keep_checkpoints": 20, "keep_checkpoints_after_run": True}
    return recipe


def test_a_mean_pooled_teacher_teaches_a_plain_student_also_after_a_resume(tiny_model, sentiment_csv, unlabeled_csv,
                                                                           tmp_path):
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    from hybridft.evaluate import evaluate
    from hybridft.models import load_tokenizer

    recipe = teacher_then_student(tiny_model, sentiment_csv, unlabeled_csv, objectives=[
        {"name": "task"}, {"name": "pseudo_label", "teacher": "previous", "threshold": 0.0},
        {"name": "distill", "teacher": "stage:teacher", "source": "unlabeled"}])
    report, final = train_and_load(recipe, tmp_path / "run")
    data = tokenized(tiny_model, recipe)
    collate = DataCollatorWithPadding(load_tokenizer(str(tiny_model)))

    def scores(model, examples):
        return evaluate(model.eval(), examples, "classification", data.label_names, collate, 16, "cpu", "", False)

    teacher = tiny_classifier(tiny_model)
    teacher.load_state_dict(load_file(tmp_path / "run" / "checkpoints" / "stage-0-done" / "model.safetensors"))
    plain_reading = scores(copy.deepcopy(teacher), data.validation)["loss"]
    use_mean_pooling(teacher)
    assert report["stages"][0]["evaluations"][-1]["loss"] == pytest.approx(scores(teacher, data.validation)["loss"])
    assert abs(plain_reading - report["stages"][0]["evaluations"][-1]["loss"]) > 1e-3
    assert [s["pooling"] for s in report["stages"]] == ["mean", "first"]
    assert "Its head read the mean of the last layer's tokens" in (tmp_path / "run" / "report.md").read_text()

    # the pseudo-labels come from the mean-pooled teacher ("previous")
    pool = [{**x, "labels": gold} for x, gold in zip(data.unlabeled, data.unlabeled_gold, strict=True)]
    first_round = report["stages"][1]["objective_details"]["pseudo_label"]["rounds"][0]
    assert first_round["accuracy_vs_gold"] == pytest.approx(scores(teacher, pool)["accuracy"])

    # the saved student reads [CLS]: plain transformers scores it as the run did
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model")
    assert scores(saved, data.validation)["loss"] == pytest.approx(report["metrics"]["loss"], abs=1e-5)

    # killed right after the teacher: its pooling is rebuilt with it
    _, again = resume_at(recipe, tmp_path / "run", "stage-0-done", tmp_path / "resumed")
    assert all(torch.equal(final[k], again[k]) for k in final)


@pytest.mark.parametrize("stages, expected", [
    ([{"pooling": "mean"}], "cannot be mean-pooled"),
    ([{"pooling": "mean"}, {"name": "more"}, {"name": "student", "init": "pretrained"}], "mean-pooled too"),
    ([{}, {"name": "t", "pooling": "mean"}, {"name": "student", "init": "pretrained"}], "starts with the model"),
    ([{"pooling": "mean"}, {"name": "m", "mix": {"alphas": [0.5]}}, {"name": "s", "init": "pretrained"}],
     "not mix stages"),
])
def test_a_mean_pooled_model_is_never_the_saved_one(tiny_model, sentiment_csv, stages, expected):
    recipe = base_recipe(tiny_model, sentiment_csv)
    recipe["stages"] = [{**recipe["stages"][0], **stages[0]}, *stages[1:]]
    with pytest.raises(HybridftError, match=expected):
        validate_recipe(recipe)


def test_mean_pooling_is_for_sentence_classification(tiny_model, conll_file):
    recipe = base_recipe(tiny_model, conll_file, pooling="mean")
    recipe["task"] = "token_classification"
    recipe["stages"].append({"name": "student", "init": "pretrained"})
    with pytest.raises(HybridftError, match="pooling: mean is for classification"):
        validate_recipe(recipe)
