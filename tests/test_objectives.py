"""Contract over every registered objective, and parity of each functional core."""

import copy

import pytest
import torch

from hybridft.objectives.task import task_loss
from hybridft.recipe import validate_recipe
from hybridft.registry import OBJECTIVES

EXAMPLES = {"task": {"name": "task", "label_smoothing": 0.1},
            "regularize": {"name": "regularize", "kind": "l2_sp", "weight": 0.1, "new_weight": 0.5}}


def reference_cross_entropy(logits, labels, smoothing=0.0):
    """Written out by hand: -(1-e) log p_y - e/C sum_c log p_c, averaged over labeled positions."""
    logp = logits.reshape(-1, logits.shape[-1]).log_softmax(-1)
    labels = labels.reshape(-1)
    total, n = 0.0, 0
    for row, y in zip(logp, labels, strict=True):
        if y == -100:
            continue
        total += -(1 - smoothing) * row[y] - smoothing * row.mean()
        n += 1
    return total / n


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_task_loss_parity_sentence_and_token_level(smoothing):
    torch.manual_seed(0)
    logits = torch.randn(5, 4)
    labels = torch.tensor([0, 3, 1, 2, 2])
    assert torch.allclose(task_loss(logits, labels, smoothing), reference_cross_entropy(logits, labels, smoothing))
    tok_logits = torch.randn(2, 6, 3)
    tok_labels = torch.tensor([[-100, 0, 1, -100, 2, -100], [-100, 2, -100, -100, -100, -100]])
    assert torch.allclose(task_loss(tok_logits, tok_labels, smoothing),
                          reference_cross_entropy(tok_logits, tok_labels, smoothing))


def test_every_registered_objective_has_an_example():
    assert set(OBJECTIVES.names()) == set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_contract_finite_scalar_with_gradient_and_batch_untouched(tiny_model, sentiment_csv, tmp_path, name):
    from .conftest import base_recipe
    from .helpers import make_run

    recipe = base_recipe(tiny_model, sentiment_csv, objectives=[{"name": "task"}, EXAMPLES[name]]
                         if name != "task" else [EXAMPLES[name]])
    run = make_run(recipe, tmp_path / "run")
    model = run.model
    with torch.no_grad():  # move away from the pretrained weights so that every penalty is non-zero
        for p in model.parameters():
            p.add_(0.01)
    spec = validate_recipe(recipe).stages[0]
    objective = OBJECTIVES.build(spec.objectives[-1])
    objective.on_stage_start(run)
    ids = torch.randint(5, 30, (3, 6))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 1])}
    original = copy.deepcopy(batch)
    outputs = model(input_ids=ids, attention_mask=batch["attention_mask"])
    loss = objective.loss(model, batch, outputs)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert all(torch.equal(batch[k], original[k]) for k in batch)


def test_penalty_parity():
    from hybridft.objectives.regularize import l1_penalty, l2_penalty, l2_sp_penalty

    torch.manual_seed(0)
    ps, rs = [torch.randn(3, 4), torch.randn(5)], [torch.randn(3, 4), torch.randn(5)]
    assert torch.allclose(l1_penalty(ps), sum(float(x.abs().sum()) for x in ps) * torch.ones(()))
    assert torch.allclose(l2_penalty(ps), torch.tensor(sum(float((x ** 2).sum()) for x in ps)))
    by_hand = sum(float(((p - r) ** 2).sum()) for p, r in zip(ps, rs, strict=True))
    assert torch.allclose(l2_sp_penalty(ps, rs), torch.tensor(by_hand))


def test_l2_sp_keeps_the_weights_closer_to_the_pretrained_ones(tiny_model, sentiment_csv, tmp_path):
    from safetensors.torch import load_file

    from .conftest import base_recipe
    from .helpers import train_and_load

    pretrained = load_file(tiny_model / "model.safetensors")

    def distance(objectives, out):
        recipe = base_recipe(tiny_model, sentiment_csv, max_steps=4, keep_best=False, objectives=objectives,
                             optimizer={"name": "sgd", "lr": 0.5})
        _, final = train_and_load(recipe, tmp_path / out)
        return sum(float((final["bert." + k] - v).square().sum()) for k, v in pretrained.items()
                   if "bert." + k in final and v.is_floating_point())

    plain = distance([{"name": "task"}], "plain")
    anchored = distance([{"name": "task"}, {"name": "regularize", "kind": "l2_sp", "weight": 0.5}], "l2sp")
    assert anchored < plain
