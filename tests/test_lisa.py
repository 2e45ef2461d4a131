"""`lisa`: a few layers at a time, drawn at random every K steps from the stage's seed; embeddings,
head and outer norms always; optimizer state freed for layers that go inactive."""

import json
import random
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from hybridft.cli import main
from hybridft.selectors.lisa import Lisa, LisaSpec

from .conftest import NEUTRAL, POSITIVE, write_recipe
from .helpers import rewind_to
from .test_families import tiny_models


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tiny_models.build("llama", tmp_path_factory.mktemp("lisa-llama"))  # 4 layers, no dropout


@pytest.fixture
def text(tmp_path):
    rng = random.Random(0)
    path = tmp_path / "text.txt"
    path.write_text("\n".join(" ".join(rng.choices(NEUTRAL + POSITIVE, k=rng.randint(3, 12))) for _ in range(64)))
    return path


def lm_recipe(llama, text, select, **stage) -> dict:
    return {"name": "lisa", "task": "causal_lm", "model": {"name": str(llama), "max_length": 24},
            "data": {"train": str(text), "validation": str(text), "max_eval_samples": 8},
            "stages": [{"name": "lm", "select": select, "optimizer": {"lr": 1e-2}, "batch_size": 8, "keep_best": False,
                        "max_steps": 6, **stage}]}


def run(recipe: dict, out, *extra) -> dict:
    assert main(["run", str(write_recipe(out.parent / f"{out.name}.yaml", recipe)), "--out", str(out),
                 "--no-progress", *extra]) == 0
    return json.loads((out / "report.json").read_text())


def test_each_period_trains_the_seeded_draw_and_nothing_else_of_the_layers(llama, text, tmp_path):
    from hybridft.training.stage import stage_seed

    report = run(lm_recipe(llama, text, [{"name": "lisa", "layers": 1, "every": 2}]), tmp_path / "run")
    draws = report["stages"][0]["selectors"][0]["draws"]
    seed = stage_seed(SimpleNamespace(recipe=SimpleNamespace(seed=report["seed"])), 0)
    lisa = Lisa(LisaSpec(layers=1, every=2))
    assert draws == [{"step": k * 2, "layers": lisa.draw(4, seed, k)} for k in range(3)]
    before, after = load_file(llama / "model.safetensors"), load_file(tmp_path / "run" / "model" / "model.safetensors")
    drawn = {i for d in draws for i in d["layers"]}
    for name, tensor in before.items():
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else None
        if layer is not None and layer not in drawn:
            assert torch.equal(tensor, after[name]), name  # never drawn: bit for bit the pretrained weight
        elif layer is not None or "embed_tokens" in name or name == "model.norm.weight":
            assert not torch.equal(tensor, after[name]), name  # drawn layers, embeddings and the final norm train


def test_a_resumed_lisa_run_ends_bit_identical(llama, text, tmp_path):
    recipe = lm_recipe(llama, text, [{"name": "lisa", "layers": 2, "every": 2}], eval_every=1)
    recipe["output"] = {"keep_checkpoints": 10, "keep_checkpoints_after_run": True}
    full = run(recipe, tmp_path / "full")
    crashed = tmp_path / "crashed"
    import shutil

    shutil.copytree(tmp_path / "full", crashed)
    rewind_to(crashed, "step-3")  # mid-period: step 3 of the period 2-3
    resumed = run(recipe, crashed, "--resume")
    a, b = (load_file(d / "model" / "model.safetensors") for d in (tmp_path / "full", crashed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["stages"][0]["selectors"][0]["draws"][-1] == full["stages"][0]["selectors"][0]["draws"][-1]


def test_layers_leaving_lose_their_optimizer_state_and_freeze(llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama)
    lisa = Lisa(LisaSpec(layers=1, every=1))
    for p in model.parameters():
        p.requires_grad_(False)
    for name, p in model.named_parameters():
        p.requires_grad_(name in lisa.trainable(model))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    stage = SimpleNamespace(state=SimpleNamespace(step=0), seed=3, optimizer=optimizer,
                            run=SimpleNamespace(processes=SimpleNamespace(world=1)))
    ids = torch.tensor([[5, 6, 7, 8]])
    layers = dict(model.named_parameters())
    for step in range(4):
        stage.state.step = step
        lisa.before_step(model, stage)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with_state = {n for n, p in layers.items() if p in optimizer.state and n.startswith("model.layers.")}
        assert {int(n.split(".")[2]) for n in with_state} == set(lisa.active)  # only the active layer holds moments
        frozen = {int(n.split(".")[2]) for n, p in layers.items() if n.startswith("model.layers.") and not p.requires_grad}
        assert frozen == set(range(4)) - set(lisa.active)


def test_lora_beside_lisa_trains_in_every_layer_while_lisa_switches_whole_layers(llama, text, tmp_path):
    select = [{"name": "lora", "r": 2, "target_modules": ["q_proj"], "merge": False},
              {"name": "lisa", "layers": 1, "every": 3}]
    report = run(lm_recipe(llama, text, select), tmp_path / "run")
    drawn = {i for d in report["stages"][0]["selectors"][1]["draws"] for i in d["layers"]}
    assert len(drawn) < 4  # some layer was never drawn whole ...
    before = load_file(llama / "model.safetensors")
    after = load_file(tmp_path / "run" / "model" / "model.safetensors")
    idle = next(i for i in range(4) if i not in drawn)
    assert torch.equal(before[f"model.layers.{idle}.mlp.up_proj.weight"], after[f"model.layers.{idle}.mlp.up_proj.weight"])
    # ... yet its LoRA trained (merged into its q_proj on saving)
    assert not torch.equal(before[f"model.layers.{idle}.self_attn.q_proj.weight"],
                           after[f"model.layers.{idle}.self_attn.q_proj.weight"])


@pytest.mark.slow
def test_two_processes_train_what_one_does(llama, text, tmp_path):
    """DDP and FSDP hand in every parameter's gradient: the inactive layers' are dropped after the
    reduction, so the update is one process's (there, the inactive layers are frozen outright)."""
    from .test_distributed import launch
    from .test_sharded import run as torchrun_fsdp

    recipe = lm_recipe(llama, text, [{"name": "lisa", "layers": 1, "every": 2}],
                       optimizer={"name": "sgd", "lr": 0.5}, max_grad_norm=None)  # Adam would magnify rounding
    path = write_recipe(tmp_path / "r.yaml", recipe)
    launch(path, tmp_path / "one", 1)
    launch(path, tmp_path / "two", 2)
    torchrun_fsdp(path, tmp_path / "fsdp", 2)
    a = load_file(tmp_path / "one" / "model" / "model.safetensors")
    for sharing in ("two", "fsdp"):
        b = load_file(tmp_path / sharing / "model" / "model.safetensors")
        worst = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert worst < 1e-6, (sharing, worst)
    before = load_file(llama / "model.safetensors")
    assert sum(not torch.equal(before[k], b[k]) for k in b) < len(b)  # some layers stayed as they were


def test_the_best_weights_keep_every_layer_lisa_may_switch_on(tmp_path):
    """keep_best saves what the stage trains, not what is active at the best evaluation: a layer that
    trained earlier and sits inactive then must come back to its values at that evaluation."""
    from hybridft.training.best import BestWeights

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    processes = SimpleNamespace(is_main=True, full_tensors=lambda named: named)
    best = BestWeights(SimpleNamespace(checkpoint_dir=tmp_path, processes=processes), 0, model)  # all trainable
    model[1].requires_grad_(False)  # LISA: layer 1 inactive at the best evaluation
    best.save(model)
    kept = {n: p.detach().clone() for n, p in model.named_parameters()}
    model[1].requires_grad_(True)
    model[0].requires_grad_(False)  # a later period: layer 1 trains on, layer 0 rests
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    best.restore(model)
    assert all(torch.equal(p, kept[n]) for n, p in model.named_parameters())


def test_lisa_with_keep_best_restores_its_best_evaluation(llama, text, tmp_path):
    recipe = lm_recipe(llama, text, [{"name": "lisa", "layers": 1, "every": 1}], keep_best=True, eval_every=1,
                       max_steps=5, optimizer={"lr": 1.0})  # steps this large overshoot: the best is the first
    report = run(recipe, tmp_path / "run")
    stage = report["stages"][0]
    draws = [d["layers"] for d in stage["selectors"][0]["draws"]]
    assert draws[0] != draws[-1]  # the layer active at the best evaluation rests at the stage's end
    assert report["metrics"]["perplexity"] == pytest.approx(min(e["perplexity"] for e in stage["evaluations"]), rel=1e-4)
