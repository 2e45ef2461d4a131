"""Contract over every registered objective, and parity of each functional core."""

import copy

import pytest
import torch

from hybridft.objectives.base import StepContext
from hybridft.objectives.task import task_loss
from hybridft.recipe import validate_recipe
from hybridft.registry import OBJECTIVES

from .conftest import base_recipe
from .helpers import make_run, train_and_load

# every registered objective, some in several configurations (label -> config)
EXAMPLES = {
    "task": {"name": "task", "label_smoothing": 0.1},
    "regularize": {"name": "regularize", "kind": "l2_sp", "weight": 0.1, "new_weight": 0.5},
    "distill-pretrained-hidden": {"name": "distill", "teacher": "pretrained", "loss": "cosine", "layers": [1, -1]},
    "distill-previous-logits-unlabeled": {"name": "distill", "teacher": "previous", "source": "both"},
    "distill-fine-tuned": {"name": "distill", "teacher": "fine_tuned", "temperature": 3.0},
    "mlm": {"name": "mlm", "source": "both", "probability": 0.3},
    "contrastive": {"name": "contrastive", "source": "unlabeled"},
    "contrastive-supervised": {"name": "contrastive", "mode": "supervised", "pooling": "cls"},
    "pseudo_label": {"name": "pseudo_label", "threshold": 0.0},
    "pseudo_label-noisy": {"name": "pseudo_label", "threshold": 0.0, "noise": 0.3},
    "pseudo_label-ensemble": {"name": "pseudo_label", "threshold": 0.0, "teacher": ["previous", "fine_tuned"]},
    "distill-previous-noisy": {"name": "distill", "teacher": "previous", "noise": 0.3},
    "distill-ensemble": {"name": "distill", "teacher": ["previous", "fine_tuned"], "temperature": 2.0},
    "adversarial-fgm": {"name": "adversarial", "method": "fgm", "epsilon": 0.5},
    "adversarial-pgd": {"name": "adversarial", "method": "pgd", "steps": 2},
    "adversarial-smart-unlabeled": {"name": "adversarial", "method": "smart", "source": "unlabeled"},
}


def recipe_with(tiny_model, train, unlabeled, objective: dict, **stage) -> dict:
    """Stage 0 trains the task; then (after a mix stage when the teacher is M_fine) the objective."""
    recipe = base_recipe(tiny_model, train, max_steps=2)
    recipe["data"]["unlabeled"] = {"path": str(unlabeled)}
    if "fine_tuned" in str(objective.get("teacher")):  # alone or in an ensemble
        recipe["stages"].append({"mix": {"alphas": [0.0, 0.5]}})
    recipe["stages"].append({"name": "s1", "optimizer": {"lr": 1e-2}, "batch_size": 8, "max_steps": 3,
                             "objectives": [{"name": "task"}, objective] if objective["name"] != "task" else [objective],
                             **stage})
    return recipe


def test_every_registered_objective_has_an_example():
    assert {e["name"] for e in EXAMPLES.values()} == set(OBJECTIVES.names())


@pytest.mark.parametrize("label", sorted(EXAMPLES))
def test_contract_finite_scalar_with_gradient_and_batch_untouched(tiny_model, sentiment_csv, unlabeled_csv,
                                                                   tmp_path, label):
    recipe = recipe_with(tiny_model, sentiment_csv, unlabeled_csv, EXAMPLES[label])
    run = make_run(recipe, tmp_path / "run")
    model = run.model
    run.artifacts.fine_tuned_state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # move away from the pretrained weights so that every penalty is non-zero
        for p in model.parameters():
            p.add_(0.01)
    spec = validate_recipe(recipe).stages[-1]
    objective = OBJECTIVES.build(spec.objectives[-1])
    objective.on_stage_start(run)
    ids = torch.randint(5, 30, (3, 6))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 1])}
    batch["attention_mask"][0, -2:] = 0
    original = copy.deepcopy(batch)
    outputs = model(input_ids=ids, attention_mask=batch["attention_mask"], output_hidden_states=True)
    ctx = StepContext(run, seed=3, draw=0, batch_ids=[0, 1, 2], labeled=True, batch_size=4)
    loss = objective.loss(model, batch, outputs, ctx)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert all(torch.equal(batch[k], original[k]) for k in batch)


@pytest.mark.parametrize("label", sorted(k for k in EXAMPLES if k != "task"))
def test_weight_zero_changes_nothing_and_a_real_weight_changes_the_model(tiny_model, sentiment_csv, unlabeled_csv,
                                                                         tmp_path, label):
    def final(objective, out):
        return train_and_load(recipe_with(tiny_model, sentiment_csv, unlabeled_csv, objective), tmp_path / out)[1]

    without = train_and_load(_task_only(tiny_model, sentiment_csv, unlabeled_csv, EXAMPLES[label]), tmp_path / "a")[1]
    zero = final({**EXAMPLES[label], "weight": 0.0}, "zero")
    weighted = final({**EXAMPLES[label], "weight": 1.0}, "one")
    assert all(torch.equal(without[k], zero[k]) for k in without)
    assert any(not torch.equal(without[k], weighted[k]) for k in without)


def _task_only(tiny_model, train, unlabeled, objective):
    recipe = recipe_with(tiny_model, train, unlabeled, objective)
    recipe["stages"][-1]["objectives"] = [{"name": "task"}]
    return recipe


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


def test_a_noisy_student_is_taught_from_the_clean_text(tiny_model, sentiment_csv, unlabeled_csv, tmp_path):
    """At stage start the student is its teacher: without noise the distillation loss is zero; with
    noise the student reads masked text while the teacher's (cached) logits are those of the clean
    text. The teacher answers for the whole stage's data on the first step."""
    losses = {}
    for noise in (0.0, 0.5):
        recipe = recipe_with(tiny_model, sentiment_csv, unlabeled_csv, {"name": "distill", "teacher": "previous",
                                                                        "noise": noise})
        run = make_run(recipe, tmp_path / f"run{noise}")
        run.model.eval()  # no dropout: only the input noise may separate student from teacher
        objective = OBJECTIVES.build(validate_recipe(recipe).stages[-1].objectives[-1])
        objective.on_stage_start(run)
        batch = run.collator([run.data.train[i] for i in range(4)])  # the batch of examples 0-3, as the loop makes it
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        outputs = run.model(**inputs)
        ctx = StepContext(run, seed=3, draw=0, batch_ids=[0, 1, 2, 3], labeled=True, batch_size=4)
        torch.manual_seed(0)
        losses[noise] = objective.loss(run.model, batch, outputs, ctx).item()
        cached = torch.stack([objective.cache["batch", i] for i in range(4)])
        with torch.no_grad():
            assert torch.allclose(cached, objective.teachers[0](**inputs).logits, atol=1e-5)
            # the first step answered for every example of the stage, in length-sorted batches
            assert len(objective.cache) == len(run.data.train)
            last = run.collator([run.data.train[-1]])
            alone = objective.teachers[0](input_ids=last["input_ids"], attention_mask=last["attention_mask"]).logits[0]
            assert torch.allclose(objective.cache["batch", len(run.data.train) - 1], alone, atol=1e-5)
    # the tiny random model's outputs move little with its input: KL ~1e-8 with noise; float noise
    # between differently padded forwards would be ~(1e-7)^2
    assert losses[0.0] < 1e-10 < losses[0.5]



@pytest.mark.parametrize("select", [
    [{"name": "lora", "r": 2, "target_modules": ["query", "value"], "head": False}],
    [{"name": "adapter", "reduction_factor": 4, "head": False}],
])
def test_l2_sp_pulls_lora_and_adapters_towards_the_pretrained_function(tiny_model, sentiment_csv, tmp_path, select):
    """LoRA and adapter parameters have no pretrained value of their own: L2-SP used to be silently
    zero on them. Now a LoRA layer is penalised by its merged weight's distance to the pretrained one
    (W0 - W_pre + s B A), an adapter by its up-projection (zero exactly when it is the identity)."""
    import json

    from hybridft.selectors.adapter import Bottleneck
    from hybridft.selectors.lora import lora_layers
    from hybridft.training.loop import build_selection

    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=3, select=select, optimizer={"lr": 5e-2},
                         objectives=[{"name": "task"}, {"name": "regularize", "kind": "l2_sp", "weight": 1.0}])
    run = make_run(recipe, tmp_path / "unit")
    model = run.model = build_selection(run, run.recipe.stages[0], "s").model
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01)  # B (LoRA) and up (adapters) start at zero: move them
    objective = OBJECTIVES.build(run.recipe.stages[0].objectives[1])
    objective.on_stage_start(run)
    penalty = float(objective.loss(model, None, None, None).detach())
    pretrained = run.artifacts.pretrained_state
    if select[0]["name"] == "lora":
        assert objective.summary() == {"anchored_tensors": 0, "lora_layers": 4, "adapter_up_tensors": 0,
                                       "new_tensors": 0}
        expected = sum(float((layer.get_base_layer().weight - pretrained[name.removeprefix("bert.").replace(
            ".base_layer", "") + ".weight"] + layer.get_delta_weight("default")).square().sum())
            for name, layer in lora_layers(model))
    else:
        assert objective.summary() == {"anchored_tensors": 0, "lora_layers": 0, "adapter_up_tensors": 8,
                                       "new_tensors": 8}
        expected = sum(float(p.square().sum()) for m in model.modules() if isinstance(m, Bottleneck)
                       for p in m.up.parameters())
    assert penalty > 0 and penalty == pytest.approx(expected, rel=1e-4)

    train_and_load(recipe, tmp_path / "run")  # and in a run: after the first update the term is not zero
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss/regularize"] > 0 for r in logged if "loss/regularize" in r][1:] == [True, True]


def test_l2_sp_with_nothing_to_anchor_is_an_error(tiny_model, sentiment_csv, tmp_path):
    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=1, objectives=[{"name": "task"}, {"name": "regularize"}],
                         select=[{"name": "layers", "top_k": 0, "head": False, "patterns": [r"^classifier\."]}])
    from hybridft.errors import HybridftError

    with pytest.raises(HybridftError, match="no trainable parameter has a pretrained value"):
        train_and_load(recipe, tmp_path / "run")


def test_an_unreadable_checkpoint_is_an_error_for_the_mlm_head_not_a_silent_identity(monkeypatch, tmp_path):
    import hybridft.objectives.mlm as mlm

    def broken(source):
        raise OSError("disk read error")

    monkeypatch.setattr(mlm, "read_state_dict", broken)
    with pytest.raises(OSError, match="disk read error"):
        mlm.pretrained_mlm_head(str(tmp_path), 16, 40)
    head, start = mlm.pretrained_mlm_head("some-org/some-hub-model", 16, 40)
    assert head == {} and "hub checkpoint" in start  # no local folder: the identity start, and the report says why


@pytest.mark.parametrize("family", ["bert", "roberta", "deberta-v2", "electra"])
def test_the_mlm_head_starts_from_the_checkpoints_own_head(family, tmp_path):
    import transformers

    from hybridft.objectives.mlm import pretrained_mlm_head

    torch.manual_seed(0)
    keys = {"vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 32}
    if family == "electra":
        keys["embedding_size"] = 16
    config = transformers.AutoConfig.for_model(family, **keys)
    model = transformers.AutoModelForMaskedLM.from_config(config)
    model.save_pretrained(tmp_path)
    head, start = pretrained_mlm_head(str(tmp_path), 16, 40)
    assert set(head) == {"dense.weight", "dense.bias", "norm.weight", "norm.bias", "bias"}
    state = model.state_dict()
    dense = next(v for k, v in state.items() if k.endswith("dense.weight") and v.shape == (16, 16)
                 and ("predictions" in k or "lm_head" in k))
    assert torch.equal(head["dense.weight"], dense) and "MLM head" in start


def test_a_partial_mlm_head_is_not_half_loaded(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    from hybridft.model_io import read_state_dict
    from hybridft.objectives.mlm import pretrained_mlm_head

    model = BertForMaskedLM(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32))
    state = {k: v for k, v in model.state_dict().items() if "transform.LayerNorm" not in k}
    model.save_pretrained(tmp_path, state_dict=state)
    assert "transform.LayerNorm.weight" not in " ".join(read_state_dict(str(tmp_path)))
    head, start = pretrained_mlm_head(str(tmp_path), 16, 40)
    assert head == {} and "incomplete" in start
