"""Low-memory optimizers as `optimizer: {name: ...}` entries (galore_adamw, apollo_adamw, adam_mini,
badam): each trains what the selection names and leaves the rest bit for bit, a resumed run ends
bit-identical, a missing package is one line, and several processes match one (or are refused)."""

import importlib.util
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from hybridft.optimizers import OPTIMIZERS
from hybridft.recipe import validate_recipe

from .conftest import base_recipe, write_recipe
from .helpers import one_line_error, rewind_to, run_cli, train_and_load

# small ranks: the tiny BERT's matrices are 32 x 32 and 32 x 64; a projection must be narrower
ENTRIES = {
    "galore_adamw": {"name": "galore_adamw", "lr": 1e-2, "rank": 4, "update_proj_gap": 2},
    "apollo_adamw": {"name": "apollo_adamw", "lr": 1e-2, "rank": 4, "update_proj_gap": 2},
    "adam_mini": {"name": "adam_mini", "lr": 1e-2},
    "badam": {"name": "badam", "lr": 1e-2, "switch_block_every": 2},
}
TOP_LAYER_AND_HEAD = [{"name": "layers", "top_k": 1, "head": True}]


def needs(name: str):
    module = OPTIMIZERS.entries()[OPTIMIZERS.names().index(name)].config.module
    missing = module is not None and importlib.util.find_spec(module) is None
    return pytest.mark.skipif(missing, reason=f"{module} is not installed")


def each_optimizer():
    return [pytest.param(name, marks=needs(name)) for name in ENTRIES]


def pretrained(model_dir) -> dict[str, torch.Tensor]:
    """The tiny BERT's weights under the classification model's names."""
    return {f"bert.{k}": v for k, v in load_file(model_dir / "model.safetensors").items()}


@pytest.mark.parametrize("name", each_optimizer())
def test_the_selected_weights_train_and_the_rest_stay_bit_identical(name, no_dropout_model, sentiment_csv, tmp_path):
    # badam: blocks of 2 steps from the top down, 3 steps: the top layer, then the bottom one
    recipe = base_recipe(no_dropout_model, sentiment_csv, optimizer=ENTRIES[name], max_steps=3, keep_best=False,
                         select=TOP_LAYER_AND_HEAD if name != "badam" else [{"name": "full"}])
    report, after = train_and_load(recipe, tmp_path / "run")
    before = pretrained(no_dropout_model)
    for key, tensor in before.items():
        trained = name == "badam" or ".layer.1." in key or "pooler" in key
        assert torch.equal(tensor, after[key]) != trained, key
    assert not torch.equal(after["classifier.weight"], torch.zeros_like(after["classifier.weight"]))
    assert report["stages"][0]["steps"] == 3


@pytest.mark.parametrize("name, select", [
    pytest.param("galore_adamw", [{"name": "lora", "r": 2, "target_modules": ["query"], "layers": [0]},
                                  {"name": "layers", "top_k": 1, "head": True}], marks=needs("galore_adamw")),
    # lisa frees the state of a layer that leaves, APOLLO's seed of its projection with it: it is given back
    pytest.param("apollo_adamw", [{"name": "lisa", "layers": 1, "every": 1, "embeddings": False}],
                 marks=needs("apollo_adamw")),
    pytest.param("adam_mini", [{"name": "lora", "r": 2, "target_modules": ["query", "value"]}],
                 marks=needs("adam_mini")),
])
def test_each_combines_with_other_selectors(name, select, no_dropout_model, sentiment_csv, tmp_path):
    recipe = base_recipe(no_dropout_model, sentiment_csv, optimizer=ENTRIES[name], max_steps=4, keep_best=False,
                         select=select)
    _, after = train_and_load(recipe, tmp_path / "run")
    before = pretrained(no_dropout_model)
    assert torch.equal(before["bert.embeddings.word_embeddings.weight"], after["bert.embeddings.word_embeddings.weight"])
    assert not torch.equal(before["bert.encoder.layer.0.attention.self.query.weight"],
                           after["bert.encoder.layer.0.attention.self.query.weight"])  # LoRA merged, or the layer


@needs("badam")
def test_badam_trains_one_block_at_a_time_with_the_head_always(no_dropout_model, sentiment_csv, tmp_path):
    recipe = base_recipe(no_dropout_model, sentiment_csv, select=[{"name": "full"}], max_steps=2, keep_best=False,
                         optimizer={**ENTRIES["badam"], "switch_mode": "descending"})
    _, after = train_and_load(recipe, tmp_path / "run")
    for key, tensor in pretrained(no_dropout_model).items():
        if ".layer.0." in key:
            assert torch.equal(tensor, after[key]), key  # the bottom block's turn has not come
        elif ".layer.1." in key or "embeddings" in key:
            assert not torch.equal(tensor, after[key]), key  # the top block, and what is outside the layers


def test_badam_orders_are_functions_of_the_step_and_seed():
    from types import SimpleNamespace

    from hybridft.optimizers.badam import BadamSpec, BlockAdamW

    blocks = [[torch.nn.Parameter(torch.zeros(1))] for _ in range(3)]

    def order(**keys):
        optimizer = BlockAdamW([{"params": [p for b in blocks for p in b]}], blocks, BadamSpec(**keys))
        return [optimizer.block_at(k, seed=5) for k in range(6)]

    assert order(switch_mode="ascending") == [0, 1, 2, 0, 1, 2]
    assert order(switch_mode="descending") == [2, 1, 0, 2, 1, 0]
    assert order(switch_mode="fixed", start_block=1) == [1] * 6
    rounds = order(switch_mode="random")
    assert sorted(rounds[:3]) == sorted(rounds[3:]) == [0, 1, 2] and rounds == order(switch_mode="random")
    optimizer = BlockAdamW([{"params": [p for b in blocks for p in b]}], blocks, BadamSpec(switch_block_every=2))
    stage = SimpleNamespace(state=SimpleNamespace(step=0), seed=5, run=SimpleNamespace(processes=SimpleNamespace(world=1)))
    optimizer.before_step(None, stage)
    assert [b[0].requires_grad for b in blocks] == [False, False, True]  # one process: the others frozen


@pytest.mark.parametrize("name", each_optimizer())
def test_a_resumed_run_ends_bit_identical(name, tiny_model, sentiment_csv, tmp_path):
    """Killed after step 3 (mid-period of badam's blocks and of the projections, renewed every 2
    steps), resumed: the weights, metrics and log are the uninterrupted run's."""
    recipe = base_recipe(tiny_model, sentiment_csv, optimizer=ENTRIES[name], max_steps=5, eval_every=1,
                         select=[{"name": "full"}] if name == "badam" else TOP_LAYER_AND_HEAD)
    recipe["output"] = {"keep_checkpoints": 10, "keep_checkpoints_after_run": True}
    full, final = train_and_load(recipe, tmp_path / "full")
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "full", crashed)
    rewind_to(crashed, "step-3")
    assert run_cli("run", write_recipe(tmp_path / "r.yaml", recipe), "--out", crashed, "--resume",
                   "--no-progress") == 0
    again = load_file(crashed / "model" / "model.safetensors")
    assert all(torch.equal(final[k], again[k]) for k in final)
    assert json.loads((crashed / "report.json").read_text())["metrics"] == full["metrics"]


@needs("galore_adamw")
def test_the_checkpoint_holds_the_projection_as_tensors(tiny_model, sentiment_csv, tmp_path):
    recipe = base_recipe(tiny_model, sentiment_csv, optimizer=ENTRIES["galore_adamw"], max_steps=3, eval_every=2,
                         select=TOP_LAYER_AND_HEAD)
    recipe["output"] = {"keep_checkpoints_after_run": True}
    train_and_load(recipe, tmp_path / "run")
    saved = torch.load(tmp_path / "run" / "checkpoints" / "step-2" / "optimizer.pt", weights_only=True)
    projected = [s for s in saved["state"].values() if "projector" in s]
    assert projected and all(s["projector"]["ortho_matrix"].shape[0] == 4 or s["projector"]["ortho_matrix"].shape[1] == 4
                             for s in projected)


def test_a_missing_package_is_one_line_naming_it(tiny_model, sentiment_csv, tmp_path, capsys, monkeypatch):
    from hybridft.optimizers.galore import GaloreSpec

    monkeypatch.setattr(GaloreSpec, "module", "galore_torch_not_installed_here")
    recipe = base_recipe(tiny_model, sentiment_csv, optimizer=ENTRIES["galore_adamw"], max_steps=1)
    path = write_recipe(tmp_path / "r.yaml", recipe)
    for command in (["validate", path], ["run", path, "--out", tmp_path / "out", "--no-progress"]):
        assert run_cli(*command) == 2
        assert one_line_error(capsys).endswith("stages.0.optimizer: galore_adamw needs the galore-torch package, "
                                               "which is not installed: pip install --no-deps galore-torch (its "
                                               "bitsandbytes serves an 8-bit variant hybridft does not use)")
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_a_projection_that_projects_nothing_is_refused_before_training(tiny_model, sentiment_csv, tmp_path, capsys):
    recipe = base_recipe(tiny_model, sentiment_csv, optimizer={**ENTRIES["galore_adamw"], "rank": 64}, max_steps=1)
    assert run_cli("validate", write_recipe(tmp_path / "r.yaml", recipe)) == 2
    assert "stages.0.optimizer: galore_adamw projects no weight" in one_line_error(capsys)


@pytest.mark.parametrize("select, optimizer, says", [
    ([{"name": "layers", "top_k": 0, "head": True}], {"name": "badam"},
     "stages.0.optimizer: badam: the stage trains no transformer layer"),
    ([{"name": "full"}], {"name": "badam", "start_block": 2}, "stages.0.optimizer: badam: start_block 2 but the stage "
                                                             "trains 2 blocks (0..1)"),
    ([{"name": "full"}], {"name": "adam_mini", "n_heads": 3}, "stages.0.optimizer: adam_mini: dim 32, n_heads 3"),
])
def test_what_an_optimizer_cannot_train_is_refused_by_validate(select, optimizer, says, tiny_model, sentiment_csv,
                                                                tmp_path, capsys):
    recipe = base_recipe(tiny_model, sentiment_csv, select=select, optimizer=optimizer, max_steps=1)
    assert run_cli("validate", write_recipe(tmp_path / "r.yaml", recipe)) == 2
    assert says in one_line_error(capsys)


def test_the_optimizer_entries_keep_every_torch_recipe_valid_and_give_each_its_keys():
    from pydantic import ValidationError

    from hybridft.recipe.io import format_validation_error

    def stage(optimizer):
        return {"name": "t", "task": "classification", "data": {"train": "x.csv"}, "stages": [{"optimizer": optimizer}]}

    assert validate_recipe(stage({"lr": 1e-4})).stages[0].optimizer.name == "adamw"  # no name: torch's AdamW
    assert validate_recipe(stage({"name": "sgd", "momentum": 0.9})).stages[0].optimizer.momentum == 0.9
    badam = validate_recipe(stage({"name": "badam", "switch_block_every": 7})).stages[0].optimizer
    assert (badam.switch_block_every, badam.switch_mode) == (7, "descending")
    problems = {
        "galore_adamw momentum": ({"name": "galore_adamw", "momentum": 0.9}, "stages.0.optimizer: unknown key 'momentum'"),
        "rank 0": ({"name": "apollo_adamw", "rank": 0}, "stages.0.optimizer.rank: Input should be greater than or equal to 1"),
        "bad name": ({"name": "adamx"}, "stages.0.optimizer: unknown optimizer 'adamx'; valid: adam, adam_mini, adamw"),
        "not a mapping": ("adamw", "stages.0.optimizer: an optimizer entry is a mapping"),
    }
    from hybridft.recipe.schema import Recipe

    for why, (entry, says) in problems.items():
        with pytest.raises(ValidationError) as caught:
            Recipe.model_validate(stage(entry))
        assert format_validation_error(caught.value)[0].startswith(says), why


def test_the_json_schema_tells_the_entries_apart():
    import jsonschema

    from hybridft.recipe import recipe_json_schema

    schema = recipe_json_schema()
    for optimizer in ({"lr": 1e-4}, {"name": "galore_adamw", "rank": 8}, {"name": "badam", "switch_mode": "random"}):
        jsonschema.validate({"name": "t", "task": "classification", "data": {"train": "x.csv"},
                             "stages": [{"optimizer": optimizer}]}, schema)


@pytest.mark.slow
def test_two_processes_train_what_one_does_and_fsdp_is_refused(no_dropout_model, sentiment_csv, tmp_path):
    """DDP: every process holds the same averaged gradient, so each projects (GaLore, APOLLO), scales
    (Adam-mini) and switches blocks (BAdam) as one process would. FSDP: BAdam too; it shards the
    weights GaLore's projections need whole: refused in one line."""
    from .test_distributed import launch
    from .test_sharded import run as torchrun_fsdp

    names = [n for n in ENTRIES if importlib.util.find_spec(OPTIMIZERS.entries()[OPTIMIZERS.names().index(n)]
                                                          .config.module or "torch")]
    recipe = base_recipe(no_dropout_model, sentiment_csv, max_steps=3, batch_size=8, keep_best=False)
    # Adam's step is about lr whatever the gradient's size, so the rounding noise of a gradient that is
    # zero in exact arithmetic (BERT's key biases) becomes a full step, with torch's AdamW too: a small lr
    # and an eps above that noise keep the comparison to what the optimizers compute
    recipe["stages"] = [{**recipe["stages"][0], "name": n, "optimizer": {**ENTRIES[n], "lr": 1e-3, "eps": 1e-6}}
                        for n in names]
    path = write_recipe(tmp_path / "r.yaml", recipe)
    launch(path, tmp_path / "one", 1)
    launch(path, tmp_path / "two", 2)
    a, b = (load_file(tmp_path / d / "model" / "model.safetensors") for d in ("one", "two"))
    worst = max((float((a[k] - b[k]).abs().max()), k) for k in a)
    assert worst[0] < 1e-6, worst
    # badam under FSDP: the inactive blocks' reduced gradients are dropped, as under DDP
    badam = write_recipe(tmp_path / "b.yaml", {**recipe, "stages": recipe["stages"][-1:]})
    launch(badam, tmp_path / "badam-one", 1)
    torchrun_fsdp(badam, tmp_path / "badam-fsdp", 2)
    a, b = (load_file(tmp_path / d / "model" / "model.safetensors") for d in ("badam-one", "badam-fsdp"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    refused = torchrun_fsdp(write_recipe(tmp_path / "g.yaml", {**recipe, "stages": recipe["stages"][:1]}),
                            tmp_path / "fsdp", 2, expect=1)  # torchrun's 1 for our 2
    ours = [line for line in refused.stderr.splitlines() if "error: " in line]
    assert ours and all(line.startswith("error: optimizer galore_adamw does not run under distributed.strategy fsdp")
                        or line.startswith("error: terminated; continue from") for line in ours), ours


def test_hybridft_list_shows_the_optimizers(capsys):
    assert run_cli("list") == 0
    listed = capsys.readouterr().out.split("optimizers:", 1)[1]
    assert all(f"  {name} " in listed for name in ENTRIES) and "adamw, adam, sgd, rmsprop" in listed
