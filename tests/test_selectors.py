"""Contract over every registered selector (through the real training loop), and equivalences."""

import pytest
import torch

from hybridft import architecture
from hybridft.errors import HybridftError
from hybridft.recipe import validate_recipe
from hybridft.registry import SELECTORS

from .conftest import base_recipe
from .helpers import make_run, tiny_classifier, train_one_stage

# one representative config per registered selector; a new selector must add itself here
EXAMPLES = {
    "full": {"name": "full"},
    "layers": {"name": "layers", "top_k": 1, "head": True},
    "lora": {"name": "lora", "r": 2, "merge": False},
    "adapter": {"name": "adapter", "reduction_factor": 4},
    "importance": {"name": "importance", "density": 0.2, "batches": 2},
    "groups": {"name": "groups", "groups": [{"select": [{"name": "layers", "top_k": 1}], "loss_weight": 2.0}]},
}


# merged at stage end, so its before/after names differ: tests/test_peft_tuners.py checks it alike;
# lisa trains a drawn part of what it names (tests/test_lisa.py checks the rest stays bit-identical),
# spectrum a choice from the weights (tests/test_spectrum.py, the same check)
TESTED_ELSEWHERE = {"peft", "lisa", "spectrum"}


def test_every_registered_selector_has_an_example_and_a_doc():
    assert set(SELECTORS.names()) == set(EXAMPLES) | TESTED_ELSEWHERE
    assert all(e.doc for e in SELECTORS.entries())


def two_step_recipe(tiny_model, sentiment_csv, select, **stage):
    stage = {"select": select, "max_steps": 2, "keep_best": False,
             "optimizer": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.1}, **stage}
    return base_recipe(tiny_model, sentiment_csv, **stage)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_selected_change_and_everything_else_is_bit_identical(tiny_model, sentiment_csv, tmp_path, name):
    run = make_run(two_step_recipe(tiny_model, sentiment_csv, [EXAMPLES[name]]), tmp_path / "run")
    before, after, selection, report = train_one_stage(run)
    whole = {n for n, p in selection.model.named_parameters() if p.requires_grad and n not in selection.masks}
    assert whole or selection.masks
    for n in before:
        if n in selection.masks:  # partly selected: the chosen entries move, the others must not
            mask = selection.masks[n]
            assert torch.equal(before[n][~mask], after[n][~mask]), f"unselected entries of {n} changed"
            assert not torch.equal(before[n][mask], after[n][mask]), f"selected entries of {n} did not change"
        elif n in whole:
            assert not torch.equal(before[n], after[n]), f"{n} was selected but did not change"
        else:
            assert torch.equal(before[n], after[n]), f"{n} was frozen but changed"
    counted = sum(after[n].numel() for n in whole) + sum(int(m.sum()) for m in selection.masks.values())
    assert report["trainable_params"] == counted


def final_weights(tiny_model, sentiment_csv, tmp_path, select, **stage):
    run = make_run(two_step_recipe(tiny_model, sentiment_csv, select, **{"max_steps": 3, **stage}), tmp_path)
    _, after, _, _ = train_one_stage(run)
    return after


def test_layers_with_every_layer_embeddings_and_head_equals_full(tiny_model, sentiment_csv, tmp_path):
    a = final_weights(tiny_model, sentiment_csv, tmp_path / "a", [{"name": "full"}])
    b = final_weights(tiny_model, sentiment_csv, tmp_path / "b",
                      [{"name": "layers", "top_k": 2, "embeddings": True, "head": True}])
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_importance_density_one_equals_full_step_for_step(tiny_model, sentiment_csv, tmp_path):
    a = final_weights(tiny_model, sentiment_csv, tmp_path / "a", [{"name": "full"}])
    b = final_weights(tiny_model, sentiment_csv, tmp_path / "b", [{"name": "importance", "density": 1.0}])
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_union_of_lora_and_layers(tiny_model, sentiment_csv, tmp_path):
    select = [{"name": "lora", "r": 2, "target_modules": ["query", "value"], "head": False, "merge": False},
              {"name": "layers", "top_k": 0, "head": True, "patterns": ["LayerNorm"]}]
    run = make_run(two_step_recipe(tiny_model, sentiment_csv, select), tmp_path / "run")
    _, _, selection, report = train_one_stage(run)
    trained = {n for n, p in selection.model.named_parameters() if p.requires_grad}
    assert any(".lora_A." in n for n in trained) and "classifier.weight" in trained
    assert any("LayerNorm" in n for n in trained)
    assert not any(n.endswith("query.base_layer.weight") for n in trained)
    assert report["trainable_params"] == sum(p.numel() for p in selection.model.parameters() if p.requires_grad)


def test_layers_top_k_picks_the_top_layers_and_head(tiny_model):
    model = tiny_classifier(tiny_model)
    names = SELECTORS.build(validate_recipe(
        {"data": {"train": "x"}, "stages": [{"select": [{"name": "layers", "top_k": 1}]}]}).stages[0].select[0]
    ).trainable(model)
    assert any(".layer.1." in n for n in names) and not any(".layer.0." in n for n in names)
    assert "classifier.weight" in names and "bert.pooler.dense.weight" in names
    assert not any("embeddings" in n for n in names)
    assert architecture.num_layers(model) == 2


def test_selection_errors(tiny_model, sentiment_csv, tmp_path):
    def stage_with(cfg):
        run = make_run(two_step_recipe(tiny_model, sentiment_csv, [cfg]), tmp_path / f"r{len(list(tmp_path.iterdir()))}")
        return train_one_stage(run)

    with pytest.raises(HybridftError, match="only 2 layers"):
        stage_with({"name": "layers", "top_k": 5})
    with pytest.raises(HybridftError, match="layers 0..1"):
        stage_with({"name": "layers", "indices": [7]})
    with pytest.raises(HybridftError, match="matches no parameter"):
        stage_with({"name": "layers", "top_k": 0, "patterns": ["nothing_like_this"]})
    with pytest.raises(HybridftError, match="selects no parameter"):
        stage_with({"name": "layers", "top_k": 0, "head": False})
    with pytest.raises(HybridftError, match="lora.target_modules"):
        stage_with({"name": "lora", "target_modules": ["no_such_module"]})
    with pytest.raises(HybridftError, match="lora.layers"):
        stage_with({"name": "lora", "layers": [9]})


@pytest.mark.parametrize("cfg, message", [
    ({"name": "importance", "density": 1.5}, "density must be in"),
    ({"name": "importance", "density": 0.0}, "density must be in"),
    ({"name": "importance"}, "exactly one of density or threshold"),
    ({"name": "importance", "density": [0.1, 0.3]}, "choose_by"),
    ({"name": "adapter", "placement": []}, "at least 1"),
])
def test_validate_rejects_bad_selector_settings_before_loading(cfg, message):
    with pytest.raises(HybridftError, match=message):
        validate_recipe({"data": {"train": "x"}, "stages": [{"select": [cfg]}]})


def test_mask_summary_is_in_the_stage_report(tiny_model, sentiment_csv, tmp_path):
    run = make_run(two_step_recipe(tiny_model, sentiment_csv, [{"name": "importance", "density": 0.1,
                                                                   "granularity": "per_tensor"}]), tmp_path / "r")
    _, _, selection, report = train_one_stage(run)
    summary = report["selectors"][0]
    assert summary["selected_entries"] == sum(int(m.sum()) for m in selection.masks.values())
    assert set(summary["selected_per_tensor"]) == set(selection.masks)
    assert 0.09 < summary["selected_entries"] / summary["scored_entries"] < 0.2


def test_importance_choose_by_holdout_reports_every_candidate(tiny_model, sentiment_csv, tmp_path):
    cfg = {"name": "importance", "density": [0.05, 0.5], "choose_by": "holdout", "search_steps": 2, "batches": 2}
    run = make_run(two_step_recipe(tiny_model, sentiment_csv, [cfg]), tmp_path / "r")
    _, _, _, report = train_one_stage(run)
    summary = report["selectors"][0]
    assert set(summary["candidates"]) == {"0.05", "0.5"}
    assert summary["value"] in (0.05, 0.5)
    best = max(summary["candidates"].items(), key=lambda kv: kv[1])
    assert float(best[0]) == summary["value"]


def test_groups_weight_zero_leaves_the_full_parameter_group_untouched(tiny_model, sentiment_csv, tmp_path):
    def groups(alpha):
        return [{"name": "groups", "groups": [
            {"select": [{"name": "full"}], "loss_weight": alpha},
            {"select": [{"name": "layers", "top_k": 1, "head": True}], "loss_weight": 1.0, "lr": 1e-2},
            {"select": [{"name": "adapter", "reduction_factor": 4}], "loss_weight": 0.5, "lr": 5e-2}]}]

    run = make_run(two_step_recipe(tiny_model, sentiment_csv, groups(0.0)), tmp_path / "zero")
    before, after, selection, _ = train_one_stage(run)
    only_full = [n for n in before if ".layer.0." in n and ".adapter." not in n or "embeddings" in n]
    assert only_full and all(torch.equal(before[n], after[n]) for n in only_full)
    assert not torch.equal(before["bert.encoder.layer.1.intermediate.dense.weight"],
                           after["bert.encoder.layer.1.intermediate.dense.weight"])
    assert any(".adapter." in n and not torch.equal(before[n], after[n]) for n in before)

    run = make_run(two_step_recipe(tiny_model, sentiment_csv, groups(1.0)), tmp_path / "one")
    before, after, _, _ = train_one_stage(run)
    assert not all(torch.equal(before[n], after[n]) for n in only_full)


def test_groups_lr_reaches_the_optimizer(tiny_model):
    from hybridft.recipe import OptimizerSpec
    from hybridft.training.optim import build_optimizer

    model = tiny_classifier(tiny_model)
    for p in model.parameters():
        p.requires_grad_(True)
    opt = build_optimizer(OptimizerSpec(lr=1e-3), model, {"classifier.weight": 0.5})
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(model.classifier.weight)] == 0.5 and lrs[id(model.classifier.bias)] == 1e-3


def test_groups_loss_weight_under_sgd_is_a_learning_rate_scale(tiny_model, sentiment_csv, tmp_path):
    sgd = {"optimizer": {"name": "sgd", "lr": 0.1}, "max_grad_norm": None}
    a = final_weights(tiny_model, sentiment_csv, tmp_path / "a",
                      [{"name": "groups", "groups": [{"select": [{"name": "full"}], "loss_weight": 2.0}]}], **sgd)
    b = final_weights(tiny_model, sentiment_csv, tmp_path / "b", [{"name": "full"}],
                      **{**sgd, "optimizer": {"name": "sgd", "lr": 0.2}})
    assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)


def test_groups_validate_their_inner_selectors():
    with pytest.raises(HybridftError, match="top_k"):
        validate_recipe({"data": {"train": "x"}, "stages": [{"select": [
            {"name": "groups", "groups": [{"select": [{"name": "layers", "top_k": -1}]}]}]}]})


def test_chosen_value_trains_exactly_like_naming_it(tiny_model, sentiment_csv, tmp_path):
    search = {"name": "importance", "density": [0.05, 0.5], "choose_by": "holdout", "search_steps": 2, "batches": 2}
    run = make_run(two_step_recipe(tiny_model, sentiment_csv, [search]), tmp_path / "search")
    _, searched, _, report = train_one_stage(run)
    chosen = report["selectors"][0]["value"]
    direct = {"name": "importance", "density": chosen, "batches": 2}
    run = make_run(two_step_recipe(tiny_model, sentiment_csv, [direct]), tmp_path / "direct")
    _, named, _, _ = train_one_stage(run)
    assert all(torch.equal(searched[n], named[n]) for n in named)
