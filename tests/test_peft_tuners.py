"""The `peft` selector (issue 25): every merged peft tuner trains alone and in a union with the top
layer, changing only what it wraps (and the layer); the merged model reloads with plain
transformers and predicts as the run did; a tuner that cannot join a union is refused with why."""

import pytest
import torch
from safetensors.torch import load_file

from hybridft.selectors.peft_tuner import MERGED_TUNERS

from .conftest import base_recipe
from .helpers import make_run, train_and_load

TARGETS = ["query", "value"]  # the tiny BERT's 32 x 32 attention projections
TUNER_KEYS = {
    "loha": {"r": 4, "alpha": 8},
    "lokr": {"r": 4, "alpha": 8},
    "ia3": {"feedforward_modules": []},
    "oft": {"r": 0, "oft_block_size": 8},
    "fourierft": {"n_frequency": 64},
    "hra": {"r": 4},
}


@pytest.mark.parametrize("with_layer", [False, True], ids=["alone", "with-top-layer"])
@pytest.mark.parametrize("tuner", MERGED_TUNERS)
def test_a_peft_tuner_trains_what_it_wraps_merges_and_reloads(tiny_model, sentiment_csv, tmp_path, tuner, with_layer):
    from transformers import AutoModelForSequenceClassification

    from hybridft.evaluate import evaluate_data

    select = [{"name": "peft", "type": tuner, "target_modules": TARGETS, **TUNER_KEYS[tuner]}]
    if with_layer:
        select.append({"name": "layers", "top_k": 1, "head": True})
    recipe = base_recipe(tiny_model, sentiment_csv, select=select, max_steps=3, optimizer={"lr": 5e-2})
    report, saved = train_and_load(recipe, tmp_path / "run")
    pretrained = load_file(tiny_model / "model.safetensors")
    wrapped = [k for k in saved if any(f".{t}.weight" in k for t in TARGETS) and ".layer.0." in k]
    assert wrapped and any(not torch.equal(saved[k], pretrained[k.removeprefix("bert.")]) for k in wrapped)
    for name, value in pretrained.items():
        key = f"bert.{name}"
        if any(f".{t}." in key for t in TARGETS) or (with_layer and ".layer.1." in key) or "pooler" in key:
            continue  # wrapped, the trained top layer, or the head (BERT's pooler trains with the classifier)
        assert torch.equal(saved[key], value), f"{key} is not selected but changed"
    if with_layer:
        assert not torch.equal(saved["bert.encoder.layer.1.output.dense.weight"],
                               pretrained["encoder.layer.1.output.dense.weight"])
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model").eval()
    assert not any(f".{tuner}" in n for n in plain.state_dict())
    run = make_run(recipe, tmp_path / "again")
    metrics = evaluate_data(run, plain, "validation", 16, "check", progress=False)
    assert metrics["loss"] == pytest.approx(report["metrics"]["loss"], rel=1e-5)
    assert (tmp_path / "run" / "peft_adapter").is_dir() == (not with_layer)


def test_a_peft_adapter_folder_loads_with_peftmodel_and_reproduces_the_model(tiny_model, sentiment_csv, tmp_path):
    import json

    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    select = [{"name": "peft", "type": "loha", "target_modules": TARGETS, "r": 4, "alpha": 8}]
    train_and_load(base_recipe(tiny_model, sentiment_csv, select=select, max_steps=3, optimizer={"lr": 5e-2}),
                   tmp_path / "run")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model").eval()
    labels = json.loads((tmp_path / "run" / "model" / "config.json").read_text())["id2label"]
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=len(labels))
    with_adapter = PeftModel.from_pretrained(base, tmp_path / "run" / "peft_adapter").eval()
    ids = torch.randint(5, 30, (4, 8))
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, with_adapter(input_ids=ids).logits, atol=1e-5)


@pytest.mark.parametrize("tuner, why", [("prefix_tuning", "prepends virtual tokens"), ("adalora", "rank budget"),
                                        ("lora", "use the lora selector"), ("nope", "is not a peft tuner")])
def test_validate_refuses_a_tuner_that_cannot_join_a_union(tiny_model, sentiment_csv, tuner, why):
    from hybridft.api import validate
    from hybridft.errors import HybridftError

    with pytest.raises(HybridftError, match=why):
        validate(base_recipe(tiny_model, sentiment_csv, select=[{"name": "peft", "type": tuner}], max_steps=1))
    with pytest.raises(HybridftError, match="unexpected keyword argument 'rank'"):
        validate(base_recipe(tiny_model, sentiment_csv, select=[{"name": "peft", "type": "loha", "rank": 4}]))
