"""Parity of each objective's functional core against a hand-written reference."""

import math

import numpy as np
import pytest
import torch

from hybridft.objectives.adversarial import per_example_normalized, project, symmetric_kl
from hybridft.objectives.contrastive import info_nce, sentence_embeddings, supervised_contrastive
from hybridft.objectives.distill import hidden_distillation, logit_distillation
from hybridft.objectives.input_noise import mask_random_tokens
from hybridft.objectives.pseudo_label import select_confident
from hybridft.objectives.teachers import ensemble_logits


def softmax(row, t=1.0):
    e = [math.exp(x / t) for x in row]
    return [x / sum(e) for x in e]


def test_logit_distillation_matches_kl_by_hand():
    torch.manual_seed(0)
    s, t, temp = torch.randn(4, 3), torch.randn(4, 3), 2.5
    by_hand = 0.0
    for srow, trow in zip(s.tolist(), t.tolist(), strict=True):
        ps, pt = softmax(srow, temp), softmax(trow, temp)
        by_hand += sum(b * math.log(b / a) for a, b in zip(ps, pt, strict=True))
    assert float(logit_distillation(s, t, temp)) == pytest.approx(by_hand / 4 * temp ** 2, rel=1e-5)
    assert float(logit_distillation(t, t, temp)) == pytest.approx(0.0, abs=1e-6)


def test_an_ensemble_teacher_is_the_mean_of_its_members_distributions():
    torch.manual_seed(0)
    members = [torch.randn(4, 3) * 3 for _ in range(3)]
    ensemble = ensemble_logits(members)
    for row in range(4):
        mean = [sum(softmax(m[row].tolist())[c] for m in members) / 3 for c in range(3)]
        assert softmax(ensemble[row].tolist()) == pytest.approx(mean, rel=1e-5)
        assert torch.exp(ensemble[row]).sum() == pytest.approx(1.0, rel=1e-5)  # log-probabilities already
    # the student that matches the ensemble exactly has zero loss; one member alone does not
    assert float(logit_distillation(ensemble, ensemble, 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(logit_distillation(members[0], ensemble, 1.0)) > 0.01


def test_logit_distillation_token_level_ignores_padding():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    garbage = s.clone()
    garbage[0, 3:] = 100.0  # padding positions must not matter
    assert torch.allclose(logit_distillation(s, t, 1.0, mask), logit_distillation(garbage, t, 1.0, mask))


@pytest.mark.parametrize("loss", ["mse", "cosine"])
def test_hidden_distillation_by_hand(loss):
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    per_token = []
    for b in range(2):
        for i in range(3):
            if mask[b, i]:
                a, c = s[b, i], t[b, i]
                per_token.append(float(((a - c) ** 2).mean()) if loss == "mse"
                                 else 1 - float(a @ c / (a.norm() * c.norm())))
    assert float(hidden_distillation(s, t, mask, loss)) == pytest.approx(sum(per_token) / len(per_token), rel=1e-5)


def test_info_nce_by_hand():
    torch.manual_seed(0)
    z1, z2, temp = torch.randn(3, 4), torch.randn(3, 4), 0.1
    total = 0.0
    for i in range(3):
        sims = [float(z1[i] @ z2[j] / (z1[i].norm() * z2[j].norm())) / temp for j in range(3)]
        total += -math.log(math.exp(sims[i]) / sum(math.exp(x) for x in sims))
    assert float(info_nce(z1, z2, temp)) == pytest.approx(total / 3, rel=1e-5)


def test_supervised_contrastive_by_hand():
    torch.manual_seed(0)
    z1, z2, temp = torch.randn(3, 4), torch.randn(3, 4), 0.5
    labels = torch.tensor([0, 1, 0])
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=-1)
    y = labels.tolist() * 2
    total = 0.0
    for a in range(6):
        others = [b for b in range(6) if b != a]
        denom = sum(math.exp(float(z[a] @ z[b]) / temp) for b in others)
        positives = [b for b in others if y[b] == y[a]]
        total += -sum(math.log(math.exp(float(z[a] @ z[p]) / temp) / denom) for p in positives) / len(positives)
    assert float(supervised_contrastive(z1, z2, labels, temp)) == pytest.approx(total / 6, rel=1e-5)


def test_mean_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(sentence_embeddings(hidden, mask, "mean"), torch.tensor([[2.0, 3.0]]))
    assert torch.equal(sentence_embeddings(hidden, mask, "cls"), torch.tensor([[1.0, 2.0]]))


def test_select_confident_threshold_and_class_balance():
    probs = np.array([[0.95, 0.05], [0.6, 0.4], [0.99, 0.01], [0.1, 0.9], [0.97, 0.03]])
    ids, labels = select_confident(probs, 0.9, None)
    assert ids.tolist() == [0, 2, 3, 4] and labels.tolist() == [0, 0, 1, 0]
    ids, labels = select_confident(probs, 0.9, 1)  # the most confident of each class
    assert ids.tolist() == [2, 3] and labels.tolist() == [0, 1]
    ids, _ = select_confident(probs, 0.999, None)
    assert len(ids) == 0


def test_symmetric_kl_by_hand():
    p, q = [0.2, 1.0, -0.5], [1.0, 0.0, 0.3]
    a, b = softmax(p), softmax(q)
    by_hand = sum(x * math.log(x / y) + y * math.log(y / x) for x, y in zip(a, b, strict=True))
    assert float(symmetric_kl(torch.tensor([p]), torch.tensor([q]))) == pytest.approx(by_hand, rel=1e-5)


def test_perturbation_norms_per_example():
    torch.manual_seed(0)
    g = torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    unit = per_example_normalized(g, mask)
    assert torch.allclose(unit.flatten(1).norm(dim=1), torch.ones(2))
    assert torch.all(unit[0, 2] == 0)  # no perturbation on padding
    big = 5 * unit
    projected = project(big, 2.0)
    assert torch.allclose(projected.flatten(1).norm(dim=1), torch.full((2,), 2.0))
    assert torch.equal(project(0.5 * unit, 2.0), 0.5 * unit)  # inside the ball: unchanged


def test_mask_random_tokens_hides_the_asked_fraction_of_real_tokens_only():
    torch.manual_seed(0)
    ids = torch.randint(5, 100, (200, 50))
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    attention = torch.ones_like(ids)
    attention[:100, 30:] = 0  # half the rows padded after 30 tokens
    inputs = {"input_ids": ids, "attention_mask": attention}
    original = ids.clone()
    noised = mask_random_tokens(inputs, 0.2, 103, torch.tensor([0, 101, 102, 103]))
    hit = noised["input_ids"] != ids
    assert torch.equal(inputs["input_ids"], original)  # the input is not changed
    assert (noised["input_ids"][hit] == 103).all()
    assert not hit[:, 0].any() and not hit[:, -1].any() and not hit[attention == 0].any()
    real = (attention == 1).clone()
    real[:, 0] = real[:, -1] = False
    assert abs(hit.sum().item() / real.sum().item() - 0.2) < 0.02

