"""Token-level losses are means over the target tokens of the whole optimizer step: k accumulated
micro-batches equal one batch of k x n, and two processes equal one, for causal LM, chat SFT and
tagging. The examples differ in length, so a mean of per-micro-batch means would not match."""

import json
import random

import pytest
import torch

from .conftest import NEUTRAL, POSITIVE, base_recipe, write_recipe
from .helpers import train_and_load
from .test_chat import TEMPLATE
from .test_distributed import launch
from .test_families import tiny_models

SGD = {"optimizer": {"name": "sgd", "lr": 0.5}, "max_grad_norm": None, "keep_best": False, "max_steps": 3,
       "group_by_length": False}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tiny_models.build("llama", tmp_path_factory.mktemp("weighting-llama"))


def varied_words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(NEUTRAL + POSITIVE, k=rng.randint(1, 12))) for _ in range(n)]


def causal_recipe(llama, tmp_path) -> dict:
    path = tmp_path / "text.txt"
    path.write_text("\n".join(varied_words(48, 0)) + "\n", encoding="utf-8")
    return {"name": "lm", "task": "causal_lm", "model": {"name": str(llama), "max_length": 24},
            "data": {"train": str(path), "validation": str(path)}, "stages": [{"name": "lm", **SGD}]}


def chat_recipe(llama, tmp_path) -> dict:
    path = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in zip(varied_words(48, 1), varied_words(48, 2), strict=True)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return {"name": "chat", "task": "causal_lm",
            "model": {"name": str(llama), "max_length": 48, "chat_template": TEMPLATE},
            "data": {"train": str(path), "validation": str(path), "columns": {"messages": "messages"}},
            "stages": [{"name": "sft", "select": [{"name": "lora", "r": 2}], **SGD}],
            "generation": {"max_new_tokens": 2}}


def tagging_recipe(no_dropout_model, tmp_path) -> dict:
    rng = random.Random(3)
    lines = []
    for _ in range(48):
        words = rng.choices(NEUTRAL + POSITIVE, k=rng.randint(1, 10))
        lines += [f"{w} NN O {'B-PER' if w in ('john', 'smith') else 'O'}" for w in words] + [""]
    path = tmp_path / "ner.conll"
    path.write_text("\n".join(lines), encoding="utf-8")
    recipe = base_recipe(no_dropout_model, path, **SGD)
    recipe.update(task="token_classification", data={"train": str(path), "validation": str(path)})
    return recipe


def recipe_for(kind: str, llama, no_dropout_model, tmp_path) -> dict:
    if kind == "tagging":
        return tagging_recipe(no_dropout_model, tmp_path)
    return causal_recipe(llama, tmp_path) if kind == "causal" else chat_recipe(llama, tmp_path)


def with_batches(recipe: dict, batch_size: int, accumulate: int) -> dict:
    stage = {**recipe["stages"][0], "batch_size": batch_size, "grad_accum_steps": accumulate}
    return {**recipe, "stages": [stage]}


@pytest.mark.parametrize("kind", ["causal", "chat", "tagging"])
def test_accumulated_micro_batches_equal_one_batch_of_tokens(kind, llama, no_dropout_model, tmp_path):
    recipe = recipe_for(kind, llama, no_dropout_model, tmp_path)
    _, one = train_and_load(with_batches(recipe, 12, 1), tmp_path / "one")
    _, four = train_and_load(with_batches(recipe, 3, 4), tmp_path / "four")
    _, start = train_and_load({**with_batches(recipe, 12, 1), "stages": [{**recipe["stages"][0], "max_steps": 1,
                               "optimizer": {"name": "sgd", "lr": 1e-12}}]}, tmp_path / "start")
    assert one.keys() == four.keys()
    for k in one:
        assert torch.allclose(one[k], four[k], atol=1e-6), k
    assert any(not torch.allclose(one[k], start[k], atol=1e-4) for k in one)  # training moved the weights


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["causal", "tagging"])
def test_two_processes_equal_one_on_token_losses(kind, llama, no_dropout_model, tmp_path):
    recipe = recipe_for(kind, llama, no_dropout_model, tmp_path)
    path = write_recipe(tmp_path / "r.yaml", with_batches(recipe, 6, 2))  # 3 examples a process a micro-batch
    launch(path, tmp_path / "one", 1)
    launch(path, tmp_path / "two", 2)
    from safetensors.torch import load_file

    a, b = (load_file(tmp_path / run / "model" / "model.safetensors") for run in ("one", "two"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
