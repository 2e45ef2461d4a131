"""LoRA merging and its PEFT adapter folder; adapters saved and loaded back; staged weight flow."""

import json

import pytest
import torch

from hybridft.model_io import load_saved

from .conftest import base_recipe
from .helpers import make_run, train_and_load, train_one_stage


def test_merged_lora_matches_unmerged_outputs(tiny_model, sentiment_csv, tmp_path):
    from hybridft.selectors.lora import lora_layers, merge_lora

    recipe = base_recipe(tiny_model, sentiment_csv, select=[{"name": "lora", "r": 4, "merge": False,
                         "target_modules": ["query", "value", "dense"]}], max_steps=3,
                         optimizer={"lr": 5e-2})
    run = make_run(recipe, tmp_path / "run")
    _, _, selection, _ = train_one_stage(run)
    model = selection.model.eval()
    ids = torch.randint(5, 30, (3, 9))
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        assert lora_layers(model)
        merged_model = merge_lora(model)
        assert not lora_layers(merged_model)
        merged = merged_model(input_ids=ids).logits
    assert torch.allclose(unmerged, merged, atol=1e-5)
    assert not any("lora" in n or "base_layer" in n for n in merged_model.state_dict())


def test_lora_run_saves_plain_model_and_a_peft_adapter_that_reproduces_it(tiny_model, sentiment_csv, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    recipe = base_recipe(tiny_model, sentiment_csv, select=[{"name": "lora", "r": 4}], max_steps=4,
                         optimizer={"lr": 5e-2})
    train_and_load(recipe, tmp_path / "run")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model").eval()
    assert not any("lora" in n for n in plain.state_dict())
    adapter_dir = tmp_path / "run" / "peft_adapter"
    assert (adapter_dir / "adapter_config.json").is_file() and (adapter_dir / "adapter_model.safetensors").is_file()
    labels = json.loads((tmp_path / "run" / "model" / "config.json").read_text())["id2label"]
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=len(labels))
    with_adapter = PeftModel.from_pretrained(base, adapter_dir).eval()
    ids = torch.randint(5, 30, (4, 8))
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, with_adapter(input_ids=ids).logits, atol=1e-5)


def test_adapter_model_saves_and_loads_back_with_identical_predictions(tiny_model, sentiment_csv, tmp_path):
    from transformers import AutoModelForSequenceClassification

    recipe = base_recipe(tiny_model, sentiment_csv, select=[{"name": "adapter", "reduction_factor": 4}],
                         max_steps=4, optimizer={"lr": 5e-2})
    run = make_run(recipe, tmp_path / "run")
    _, _, selection, _ = train_one_stage(run)
    from hybridft.model_io import save_model_folder

    save_model_folder(run, tmp_path / "saved")
    assert (tmp_path / "saved" / "adapters.safetensors").is_file()
    loaded, _, meta, _ = load_saved(tmp_path / "saved")
    assert len(meta["adapters"]) == 4  # attention + ffn in 2 layers
    ids = torch.randint(5, 30, (4, 8))
    trained = selection.model.eval()
    with torch.no_grad():
        expected = trained(input_ids=ids).logits
        assert torch.allclose(loaded(input_ids=ids).logits, expected, atol=1e-6)
        # plain transformers gets the base model without the adapters: other outputs
        plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
        assert not torch.allclose(plain(input_ids=ids).logits, expected, atol=1e-4)


def test_fresh_adapter_is_the_identity(tiny_model):
    from hybridft.selectors.adapter import AdapterSpec, insert_adapters

    from .helpers import tiny_classifier

    model = tiny_classifier(tiny_model).eval()
    ids = torch.randint(5, 30, (2, 6))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        insert_adapters(model, AdapterSpec())
        assert torch.equal(model(input_ids=ids).logits, before)


def test_three_stage_recipe_flows_weights_and_resumes_between_stages(tiny_model, sentiment_csv, tmp_path):
    stages = [
        {"name": "full", "select": [{"name": "full"}], "max_steps": 2},
        {"name": "top", "select": [{"name": "layers", "top_k": 1}], "max_steps": 2},
        {"name": "adapt", "select": [{"name": "adapter", "reduction_factor": 4}], "max_steps": 2,
         "optimizer": {"lr": 1e-2}},
    ]
    recipe = {**base_recipe(tiny_model, sentiment_csv), "stages": stages,
              "output": {"keep_checkpoints": 10, "keep_checkpoints_after_run": True}}
    report, final = train_and_load(recipe, tmp_path / "run")
    assert [s["name"] for s in report["stages"]] == ["full", "top", "adapt"]
    assert report["stages"][0]["trainable_params"] > report["stages"][1]["trainable_params"]
    assert report["stages"][2]["trainable_params"] < report["stages"][1]["trainable_params"]
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss/task" in r] == [1, 2, 3, 4, 5, 6]  # one global step count

    # resume from the checkpoint written after stage 2: adapters of stage 3 are rebuilt and trained again
    import shutil

    from hybridft.api import run_recipe
    from hybridft.recipe import validate_recipe

    shutil.copytree(tmp_path / "run", tmp_path / "again")
    (tmp_path / "again" / "checkpoints" / "latest").write_text("stage-1-done")
    run_recipe(validate_recipe(recipe), tmp_path, tmp_path / "again", resume=True, progress=False)
    from safetensors.torch import load_file

    again = load_file(tmp_path / "again" / "model" / "model.safetensors")
    assert all(torch.equal(final[k], again[k]) for k in final)
    a = load_file(tmp_path / "run" / "model" / "adapters.safetensors")
    b = load_file(tmp_path / "again" / "model" / "adapters.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unmerged_lora_is_saved_merged_and_loads_with_plain_transformers(tiny_model, sentiment_csv, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from hybridft.model_io import save_model_folder

    recipe = base_recipe(tiny_model, sentiment_csv, select=[{"name": "lora", "r": 4, "merge": False}],
                         max_steps=3, optimizer={"lr": 5e-2})
    run = make_run(recipe, tmp_path / "run")
    _, _, selection, _ = train_one_stage(run)
    save_model_folder(run, tmp_path / "saved")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    ids = torch.randint(5, 30, (3, 7))
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, selection.model.eval()(input_ids=ids).logits, atol=1e-5)


def test_a_later_stage_can_train_adapters_an_earlier_stage_inserted(tiny_model, sentiment_csv, tmp_path):
    stages = [{"name": "a", "select": [{"name": "adapter", "reduction_factor": 4}], "max_steps": 2},
              {"name": "b", "select": [{"name": "adapter", "reduction_factor": 4}], "max_steps": 2}]
    report, _ = train_and_load({**base_recipe(tiny_model, sentiment_csv), "stages": stages}, tmp_path / "run")
    assert report["stages"][0]["trainable_params"] == report["stages"][1]["trainable_params"]


def test_groups_with_an_importance_member_train_entries_not_whole_tensors(tiny_model, sentiment_csv, tmp_path):
    select = [{"name": "groups", "groups": [{"select": [{"name": "importance", "density": 0.2, "batches": 2}]}]}]
    run = make_run(base_recipe(tiny_model, sentiment_csv, select=select, max_steps=2, keep_best=False), tmp_path / "r")
    before, after, selection, _ = train_one_stage(run)
    assert selection.masks
    for n, mask in selection.masks.items():
        assert torch.equal(before[n][~mask], after[n][~mask])
    state = selection.selectors[0].state_dict()
    assert any("/mask/" in k for k in state)


def test_peft_adapter_is_only_written_when_it_reproduces_the_model(tiny_model, sentiment_csv, tmp_path):
    select = [{"name": "lora", "r": 2}, {"name": "layers", "top_k": 1}]
    train_and_load(base_recipe(tiny_model, sentiment_csv, select=select, max_steps=2), tmp_path / "run")
    assert not (tmp_path / "run" / "peft_adapter").exists()


def test_a_later_lora_or_adapter_stage_does_not_change_what_earlier_stages_train(tiny_model, sentiment_csv, tmp_path):
    # validation builds every stage's selection on a skeleton; LoRA and adapters draw their initial
    # weights there, which once moved the run's RNG before the first step (other dropout masks)
    from safetensors.torch import load_file

    def first_stage(later: list[dict]) -> dict:
        recipe = base_recipe(tiny_model, sentiment_csv, name="first", max_steps=4, optimizer={"lr": 1e-2})
        recipe["stages"] += later
        recipe["output"] = {"keep_checkpoints_after_run": True}
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        train_and_load(recipe, out)
        return load_file(out / "checkpoints" / "stage-0-done" / "model.safetensors")

    alone = first_stage([])
    for select in ({"name": "lora", "r": 4}, {"name": "adapter", "reduction_factor": 4}):
        followed = first_stage([{"max_steps": 1, "select": [select]}])
        assert all(torch.equal(alone[k], followed[k]) for k in alone), select["name"]


def test_lora_variants_train_merge_and_load_with_plain_transformers(tiny_model, sentiment_csv, tmp_path):
    """DoRA (its magnitude trains), rsLoRA (alpha / sqrt(r)), PiSSA (the base weight gives up its
    principal part, the layer's function is unchanged at start); each merged model predicts as the
    run's model did."""
    import math

    from transformers import AutoModelForSequenceClassification

    from hybridft.evaluate import evaluate_data
    from hybridft.selectors.lora import lora_layers

    for variant in ({"use_dora": True}, {"use_rslora": True}, {"init": "pissa"}, {"init": "olora"}, {"init": "eva"}):
        lora = {"name": "lora", "r": 4, "alpha": 8, "target_modules": ["query", "value"], **variant}
        recipe = base_recipe(tiny_model, sentiment_csv, select=[lora], max_steps=3, optimizer={"lr": 5e-2})
        tag = "_".join(f"{k}-{v}" for k, v in variant.items())
        probe = make_run(recipe, tmp_path / f"probe-{tag}")
        from hybridft.training.loop import build_selection

        before = {n: p.detach().clone() for n, p in probe.model.named_parameters()}
        selection = build_selection(probe, probe.recipe.stages[0], "s")
        name, layer = lora_layers(selection.model)[0]
        x = torch.randn(5, layer.in_features)
        with torch.no_grad():  # at start the adapted layer computes what the pretrained one did
            assert torch.allclose(layer(x), torch.nn.functional.linear(x, before[f"{name}.weight"],
                                                                       before[f"{name}.bias"]), atol=1e-4)
        if variant.get("use_rslora"):
            assert layer.scaling["default"] == 8 / math.sqrt(4)
        if variant.get("use_dora"):
            assert any("lora_magnitude_vector" in n and p.requires_grad for n, p in selection.model.named_parameters())
        out = tmp_path / tag
        report, _ = train_and_load(recipe, out)
        plain = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
        metrics = evaluate_data(probe, plain, "validation", 16, "check", progress=False)
        assert metrics["loss"] == pytest.approx(report["metrics"]["loss"], rel=1e-5), variant
        assert (out / "peft_adapter").is_dir() == (variant.get("init") not in ("pissa", "olora"))


def test_eva_starts_a_at_the_principal_directions_of_the_layer_inputs(tiny_model, sentiment_csv, tmp_path):
    """EVA: A's rows are (close to) the top-r right singular vectors of the centred inputs the layer
    sees on the training data; B is zero, so the model starts as the pretrained one."""
    from hybridft.training.loop import build_selection

    recipe = base_recipe(tiny_model, sentiment_csv, select=[{"name": "lora", "r": 4, "init": "eva",
                                                             "target_modules": ["query"]}])
    run = make_run(recipe, tmp_path / "run")
    inputs = []
    layer = run.model.bert.encoder.layer[0].attention.self.query
    hook = layer.register_forward_hook(lambda m, args, out: inputs.append(args[0].detach()))
    batch = run.collator(run.data.train)
    with torch.no_grad():
        run.model.eval()(**{k: v for k, v in batch.items() if k != "labels"})
    hook.remove()
    x = inputs[0][batch["attention_mask"].bool()]  # the real tokens' inputs
    top = torch.linalg.svd(x - x.mean(0), full_matrices=False).Vh[:4]
    selection = build_selection(run, run.recipe.stages[0], "s")
    query = selection.model.bert.encoder.layer[0].attention.self.query
    a = query.lora_A["default"].weight.detach()
    assert torch.allclose(a @ a.T, torch.eye(4), atol=1e-4)  # orthonormal rows
    assert float((top @ a.T).square().sum()) > 0.9 * 4  # the same subspace (4 when identical)
    assert torch.count_nonzero(query.lora_B["default"].weight) == 0


def test_loraplus_trains_b_at_a_multiple_of_the_learning_rate(tiny_model, sentiment_csv, tmp_path):
    from hybridft.training.loop import build_selection
    from hybridft.training.stage import Stage

    recipe = base_recipe(tiny_model, sentiment_csv, select=[{"name": "lora", "r": 4, "loraplus_lr_ratio": 16}],
                         max_steps=1, optimizer={"lr": 1e-3})
    run = make_run(recipe, tmp_path / "run")
    spec = run.recipe.stages[0]
    stage = Stage.open(run, 0, spec, build_selection(run, spec, "s"))
    names = {id(p): n for n, p in stage.model.named_parameters()}
    lrs = {names[id(p)]: g["initial_lr"] for g in stage.optimizer.param_groups for p in g["params"]}
    b = {lr for n, lr in lrs.items() if ".lora_B." in n}
    assert len(b) == 1 and b.pop() == pytest.approx(1.6e-2)
    assert {lr for n, lr in lrs.items() if ".lora_A." in n} == {1e-3}
