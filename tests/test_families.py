"""Every selector on every model family (issue 23): tiny random models of each family, built by
examples/tiny_models.py next to the embedded MiniLM tokenizer. For each family x selector x task:
only the selected entries change; the saved folder reloads with plain transformers (hybridft's
loader where bottleneck adapters are present) and predicts exactly as the trained model did."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from hybridft.recipe import validate_recipe

from .conftest import base_recipe, write_recipe
from .helpers import make_run, train_one_stage

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("tiny_models", ROOT / "examples" / "tiny_models.py")
tiny_models = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tiny_models)

DECODERS = ("llama", "qwen2", "mistral", "gemma", "gpt2")
ENCODERS = ("bert", "roberta", "distilbert", "electra")
SELECTORS = {
    "full": [{"name": "full"}],
    "layers": [{"name": "layers", "top_k": 1, "head": True}],
    # LoRA unmerged, so that the base weights can be compared (the saved folder merges it)
    "lora": [{"name": "lora", "r": 2, "merge": False}],  # the model's own attention projections by default
    "adapter": [{"name": "adapter", "reduction_factor": 8}],
    "importance": [{"name": "importance", "density": 0.05, "batches": 1}],
    "union": [{"name": "lora", "r": 2, "merge": False}, {"name": "adapter", "reduction_factor": 8},
              {"name": "layers", "top_k": 1, "head": True}],
}
CASES = [(f, "classification") for f in (*DECODERS, *ENCODERS)] + [(f, "causal_lm") for f in (*DECODERS, "bert")]


@pytest.fixture(scope="session")
def family_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {f: tiny_models.build(f, root / f) for f in (*DECODERS, *ENCODERS, "t5", "bart")}


@pytest.fixture(scope="session")
def text_lines(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "lines.txt"
    path.write_text("".join(f"the film number {i} was {'good' if i % 2 else 'bad'} and long\n" for i in range(48)))
    return path


def recipe_for(model: Path, task: str, data: Path, select: list, **stage) -> dict:
    recipe = base_recipe(model, data, max_steps=2, batch_size=8, select=select, optimizer={"lr": 1e-2},
                         keep_best=False, **stage)
    recipe["task"] = task
    return recipe


@pytest.mark.parametrize("selector", sorted(SELECTORS))
@pytest.mark.parametrize("family, task", CASES, ids=[f"{f}-{t}" for f, t in CASES])
def test_only_the_selected_entries_change(family_models, sentiment_csv, text_lines, tmp_path, family, task, selector):
    data = sentiment_csv if task == "classification" else text_lines
    run = make_run(recipe_for(family_models[family], task, data, SELECTORS[selector]), tmp_path / "run")
    before, after, selection, _ = train_one_stage(run)
    masks = selection.masks
    trained = {n for n, p in selection.model.named_parameters() if p.requires_grad}
    assert trained, "the selection trains nothing"
    for name, value in before.items():
        if name not in trained:
            assert torch.equal(value, after[name]), f"{name} is not selected but changed"
        elif name in masks:
            assert torch.equal(value[~masks[name]], after[name][~masks[name]]), f"{name}: unselected entries changed"
    assert any(not torch.equal(before[n], after[n]) for n in trained), "nothing selected changed"


SAVED = [(f, "classification") for f in (*DECODERS, *ENCODERS)] + [(f, "causal_lm") for f in DECODERS] + \
    [("t5", "seq2seq"), ("bart", "seq2seq")]


@pytest.mark.parametrize("family, task", SAVED, ids=[f"{f}-{t}" for f, t in SAVED])
def test_a_union_trains_and_the_saved_folder_predicts_as_the_run_did(family_models, sentiment_csv, text_lines,
                                                                   tmp_path, family, task):
    """A union of LoRA + adapters + the top layer through the CLI; the folder reloads and gives the
    run's validation loss."""
    from hybridft.cli import main

    if task == "seq2seq":
        data = tmp_path / "pairs.jsonl"
        data.write_text("".join(json.dumps({"source": f"ein film {i}", "target": f"a film {i}"}) + "\n"
                                for i in range(40)))
    else:
        data = sentiment_csv if task == "classification" else text_lines
    recipe = recipe_for(family_models[family], task, data, SELECTORS["union"])
    if task == "seq2seq":
        recipe["generation"] = {"max_new_tokens": 4}
    out = tmp_path / "run"
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe)), "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    import hybridft

    saved = hybridft.load(out / "model")  # adapters restored
    assert any(".adapter." in n for n, _ in saved.model.named_parameters())
    run = make_run(recipe, tmp_path / "again")
    from hybridft.evaluate import evaluate_data

    metrics = evaluate_data(run, saved.model, "validation", 16, "check", progress=False)
    assert metrics["loss"] == pytest.approx(report["metrics"]["loss"], rel=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_validate_refuses_what_cannot_work(family_models, sentiment_csv, family):
    from hybridft.api import validate
    from hybridft.errors import HybridftError

    bad = recipe_for(family_models[family], "classification", sentiment_csv,
                     [{"name": "lora", "target_modules": ["query_key_value_nowhere"]}])
    with pytest.raises(HybridftError, match="lora.target_modules"):
        validate(bad)
    deep = recipe_for(family_models[family], "classification", sentiment_csv, [{"name": "layers", "top_k": 9}])
    with pytest.raises(HybridftError, match="top_k=9 but the model has only 4 layers"):
        validate(deep)
    assert validate_recipe(recipe_for(family_models[family], "classification", sentiment_csv, SELECTORS["union"]))


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_gradient_checkpointing_trains_the_same_weights(family_models, sentiment_csv, tmp_path, family):
    """With frozen embeddings and LoRA on a frozen base (where reentrant checkpointing would lose the
    gradient), checkpointed activations give the weights of a run that keeps them."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from .helpers import train_and_load

    folder = tmp_path / "nodrop"
    import shutil

    shutil.copytree(family_models[family], folder)
    config = AutoConfig.from_pretrained(folder)
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout", "resid_pdrop",
                "embd_pdrop", "attn_pdrop"):
        if hasattr(config, key):
            setattr(config, key, 0.0)
    config.save_pretrained(folder)
    select = [{"name": "lora", "r": 2}, {"name": "layers", "top_k": 1, "head": True}]
    plain = recipe_for(folder, "classification", sentiment_csv, select)
    checkpointed = recipe_for(folder, "classification", sentiment_csv, select)
    checkpointed["model"]["gradient_checkpointing"] = True
    assert make_run(checkpointed, tmp_path / "probe").model.is_gradient_checkpointing
    _, a = train_and_load(plain, tmp_path / "plain")
    _, b = train_and_load(checkpointed, tmp_path / "checkpointed")
    pretrained = load_file(folder / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    lora_target = next(k for k in a if k.endswith(".weight") and ("q_proj" in k or "query" in k or "c_attn" in k))
    base = pretrained.get(lora_target.split(".", 1)[1], pretrained.get(lora_target))
    assert base is None or not torch.equal(a[lora_target], base)  # LoRA trained (and was merged)


def test_the_prefix_cache_says_why_it_is_off_for_a_decoder(family_models, sentiment_csv, tmp_path):
    from .helpers import train_and_load

    recipe = recipe_for(family_models["llama"], "classification", sentiment_csv, SELECTORS["layers"], prefix_cache={})
    report, _ = train_and_load(recipe, tmp_path / "run")
    assert report["stages"][0]["prefix_cache"].startswith("off: the cache serves BERT-family encoders; "
                                                          "LlamaForSequenceClassification has no embeddings module")
    assert "Prefix cache off: the cache serves" in (tmp_path / "run" / "report.md").read_text()


def test_a_new_head_trains_by_default_a_pretrained_lm_head_does_not(family_models, sentiment_csv, text_lines,
                                                                   tmp_path):
    from hybridft.training.loop import build_selection

    for task, data, head_trains in (("classification", sentiment_csv, True), ("causal_lm", text_lines, False)):
        run = make_run(recipe_for(family_models["llama"], task, data, [{"name": "lora", "r": 2}]), tmp_path / task)
        selection = build_selection(run, run.recipe.stages[0], "s")
        head = "score.weight" if task == "classification" else "lm_head.weight"
        assert selection.model.get_parameter(head).requires_grad is head_trains
    explicit = recipe_for(family_models["llama"], "causal_lm", text_lines, [{"name": "lora", "r": 2, "head": True}])
    run = make_run(explicit, tmp_path / "explicit")
    assert build_selection(run, run.recipe.stages[0], "s").model.get_parameter("lm_head.weight").requires_grad


@pytest.mark.parametrize("family, task", [("llama", "classification"), ("qwen2", "causal_lm"),
                                          ("gpt2", "classification")])
def test_a_bfloat16_base_holds_frozen_weights_in_bf16_and_trains_fp32_ones(family_models, sentiment_csv,
                                                                           text_lines, tmp_path, family, task):
    """model.dtype bfloat16: the weights load in bf16; during the stage every frozen weight is bf16
    and every trained one fp32 (with fp32 gradients and optimizer state); afterwards the frozen ones
    are as they were loaded, the trained ones have trained, in fp32."""
    data = sentiment_csv if task == "classification" else text_lines
    recipe = recipe_for(family_models[family], task, data, SELECTORS["union"])
    recipe["model"]["dtype"] = "bfloat16"
    run = make_run(recipe, tmp_path / "run")
    seen = {}

    def spy(module, args):  # the dtypes the first training forward sees
        if module.training and not seen:
            seen.update({n: p.dtype for n, p in module.named_parameters()})

    run.model.register_forward_pre_hook(spy)
    before, after, selection, _ = train_one_stage(run)
    trained = {n for n, p in selection.model.named_parameters() if p.requires_grad}
    assert {seen[n] for n in trained} == {torch.float32}
    assert {seen[n] for n in seen if n not in trained} == {torch.bfloat16}
    for name, value in before.items():
        if name in trained:
            assert after[name].dtype == torch.float32
        else:
            assert value.dtype == after[name].dtype == torch.bfloat16 and torch.equal(after[name], value), name
    assert any(not torch.equal(before[n].float(), after[n]) for n in trained)


def test_validate_refuses_a_bfloat16_base_where_it_cannot_work(family_models, sentiment_csv):
    from hybridft.api import validate
    from hybridft.errors import HybridftError

    recipe = recipe_for(family_models["llama"], "classification", sentiment_csv, SELECTORS["lora"])
    recipe["model"].update(dtype="bfloat16", precision="fp32")
    with pytest.raises(HybridftError, match="cannot be combined with model.precision: fp32"):
        validate(recipe)
    recipe["model"]["precision"] = "auto"
    recipe["distributed"] = {"strategy": "fsdp"}
    with pytest.raises(HybridftError, match="use distributed.mixed_precision for a sharded run"):
        validate(recipe)
    recipe["model"]["dtype"] = "float16"
    with pytest.raises(HybridftError, match="model.dtype"):
        validate(recipe)
