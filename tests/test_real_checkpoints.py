"""The paths a real checkpoint takes: saved in bf16 (as almost every published LLM is), trained in the
dtype the recipe asks for, and exported as a PEFT adapter of its own task."""

import json

import pytest
import torch
from safetensors import safe_open

from hybridft.cli import main

from .conftest import write_recipe
from .test_chat import TEMPLATE
from .test_families import tiny_models


@pytest.fixture(scope="module")
def bf16_llama(tmp_path_factory):
    """A tiny Llama saved in bfloat16, with the config saying so, as real checkpoints are."""
    from transformers import AutoModelForCausalLM

    folder = tiny_models.build("llama", tmp_path_factory.mktemp("bf16-llama"))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    assert AutoModelForCausalLM.from_pretrained(folder).dtype == torch.bfloat16  # what a plain load gives
    return folder


@pytest.fixture
def chat_data(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": f"answer {i % 3}"}]} for i in range(24)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def chat_recipe(model, data, **model_keys) -> dict:
    return {"name": "chat", "task": "causal_lm",
            "model": {"name": str(model), "max_length": 32, "chat_template": TEMPLATE, **model_keys},
            "data": {"train": str(data), "validation": str(data), "columns": {"messages": "messages"}},
            "stages": [{"max_steps": 2, "batch_size": 8, "optimizer": {"lr": 1e-3},
                        "select": [{"name": "lora", "r": 2, "alpha": 4}]}],
            "generation": {"max_new_tokens": 2}}


def run(recipe: dict, tmp_path, name: str) -> dict:
    out = tmp_path / name
    assert main(["run", str(write_recipe(tmp_path / f"{name}.yaml", recipe)), "--out", str(out),
                 "--no-progress"]) == 0
    return json.loads((out / "report.json").read_text())


def stored_dtypes(model_dir) -> set[str]:
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return {str(f.get_slice(k).get_dtype()) for k in f.keys()}


def test_a_bf16_checkpoint_trains_and_saves_in_float32_by_default(bf16_llama, chat_data, tmp_path):
    recipe = chat_recipe(bf16_llama, chat_data)
    recipe["stages"][0]["select"] = [{"name": "layers", "top_k": 1}]
    report = run(recipe, tmp_path, "fp32")
    assert report["stages"][0]["dtypes"] == {"frozen_weights": "float32", "trained_weights": "float32",
                                             "optimizer_state": "float32", "forward": "fp32"}
    assert stored_dtypes(tmp_path / "fp32" / "model") == {"F32"}
    config = json.loads((tmp_path / "fp32" / "model" / "config.json").read_text())
    assert config["dtype"] == "float32"
    assert "trained weights float32, optimizer state float32" in (tmp_path / "fp32" / "report.md").read_text()


def test_a_bf16_frozen_base_trains_lora_and_head_in_float32(bf16_llama, chat_data, tmp_path):
    report = run(chat_recipe(bf16_llama, chat_data, dtype="bfloat16"), tmp_path, "bf16")
    assert report["stages"][0]["dtypes"] == {"frozen_weights": "bfloat16", "trained_weights": "float32",
                                             "optimizer_state": "float32", "forward": "bf16 autocast"}


def test_frozen_weights_load_straight_in_bf16(bf16_llama):
    """model.dtype: bfloat16 asks transformers for bf16 weights (no float32 copy first); the default, float32."""
    from hybridft.generative.models import load_generative_model
    from hybridft.models import load_tokenizer

    tokenizer = load_tokenizer(str(bf16_llama))
    assert load_generative_model(str(bf16_llama), "causal_lm", tokenizer, dtype="bfloat16").dtype == torch.bfloat16
    assert load_generative_model(str(bf16_llama), "causal_lm", tokenizer).dtype == torch.float32


def test_a_chat_run_adapter_loads_as_a_causal_lm_peft_model_with_the_same_logits(bf16_llama, chat_data, tmp_path):
    from peft import AutoPeftModelForCausalLM

    import hybridft

    run(chat_recipe(bf16_llama, chat_data), tmp_path, "sft")
    adapter = tmp_path / "sft" / "peft_adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    peft_model = AutoPeftModelForCausalLM.from_pretrained(adapter, dtype=torch.float32).eval()
    saved = hybridft.load(tmp_path / "sft" / "model")
    ids = saved.tokenizer(["<|user|> question 4 [SEP] <|assistant|>", "question 1"], return_tensors="pt",
                          padding=True)
    with torch.no_grad():
        expected = saved.model(**ids).logits
        got = peft_model(**ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    base = tiny_models.model_class("llama").from_pretrained(bf16_llama, dtype=torch.float32).eval()
    with torch.no_grad():
        assert not torch.allclose(base(**ids).logits, expected, atol=1e-5)  # the adapter carries the training


@pytest.mark.parametrize(("family", "head", "task_type"), [
    ("bert", "AutoModelForSequenceClassification", "SEQ_CLS"),
    ("bert", "AutoModelForTokenClassification", "TOKEN_CLS"),
    ("llama", "AutoModelForCausalLM", "CAUSAL_LM"),
    ("t5", "AutoModelForSeq2SeqLM", "SEQ_2_SEQ_LM"),
])
def test_peft_adapters_name_the_model_task(family, head, task_type, tmp_path):
    import transformers
    from peft import LoraConfig, PeftConfig, inject_adapter_in_model

    from hybridft.selectors.lora import save_peft_folder

    model = getattr(transformers, head).from_pretrained(tiny_models.build(family, tmp_path / family))
    config = LoraConfig(r=2, target_modules=["query", "q_proj", "q"])
    save_peft_folder(inject_adapter_in_model(config, model), config, tmp_path / "adapter")
    assert PeftConfig.from_pretrained(tmp_path / "adapter").task_type == task_type


def test_a_bf16_base_with_a_trained_layer_evaluates_the_weights_as_they_train(bf16_llama, chat_data, tmp_path):
    """One autocast region spans the stage: with autocast's cast cache, every evaluation inside it
    would see the trained layer as it was at the first step. And after the stage, the trained fp32
    layer and the bf16 base meet outside autocast (the final evaluation, saving)."""
    recipe = chat_recipe(bf16_llama, chat_data, dtype="bfloat16")
    recipe["stages"][0].update(select=[{"name": "layers", "top_k": 1}], max_steps=3, eval_every=1,
                               optimizer={"lr": 1e-2}, keep_best=False)
    report = run(recipe, tmp_path, "layer")
    stage = report["stages"][0]
    losses = [stage["start_metrics"]["loss"]] + [e["loss"] for e in stage["evaluations"]]
    assert len(set(losses)) == len(losses)  # each evaluation saw new weights
    assert report["metrics"]["loss"] == pytest.approx(losses[-1], rel=1e-2)  # the final evaluation, in float32


def test_lora_merges_into_a_bf16_base_weight_without_rounding_the_update():
    from peft import LoraConfig, inject_adapter_in_model

    from hybridft.selectors.lora import merge_lora

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64, bias=False)).to(torch.bfloat16)
    base = model[0].weight.detach().float().clone()
    model = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["0"]), model)
    layer = model[0]
    for p in (*layer.lora_A.parameters(), *layer.lora_B.parameters()):
        p.data = torch.randn_like(p, dtype=torch.float32) * 1e-2  # a small update, fp32 as hybridft trains it
    update = layer.get_delta_weight("default").float()
    merged = merge_lora(model)[0].weight
    assert merged.dtype == torch.float32
    torch.testing.assert_close(merged, base + update, rtol=0, atol=1e-7)  # in bf16 it would be off by ~1e-3
