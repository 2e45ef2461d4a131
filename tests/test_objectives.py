"""Contract over every registered objective, and parity of each functional core."""

import copy

import pytest
import torch

from hybridft.objectives.task import task_loss
from hybridft.recipe import validate_recipe
from hybridft.registry import OBJECTIVES

from .helpers import tiny_classifier

EXAMPLES = {"task": {"name": "task", "label_smoothing": 0.1}}


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
def test_contract_finite_scalar_with_gradient_and_batch_untouched(tiny_model, name):
    model = tiny_classifier(tiny_model)
    spec = validate_recipe({"data": {"train": "x"}, "stages": [{"objectives": [EXAMPLES[name]]}]}).stages[0]
    objective = OBJECTIVES.build(spec.objectives[0])
    ids = torch.randint(5, 30, (3, 6))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 1])}
    original = copy.deepcopy(batch)
    outputs = model(input_ids=ids, attention_mask=batch["attention_mask"])
    loss = objective.loss(model, batch, outputs)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert all(torch.equal(batch[k], original[k]) for k in batch)
