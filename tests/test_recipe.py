from pathlib import Path

import pytest

from hybridft.errors import HybridftError
from hybridft.recipe import apply_overrides, load_recipe, validate_recipe

ROOT = Path(__file__).resolve().parents[1]
# the examples in recipes/ and the research recipes the benchmark scripts run
RECIPES = sorted(ROOT.glob("recipes/*.yaml")) + sorted(ROOT.glob("benchmarks/recipes/*.yaml"))


def minimal(**extra):
    return {"data": {"train": "x.csv"}, "stages": [{}], **extra}


def test_defaults_are_full_selector_and_task_objective():
    r = validate_recipe(minimal())
    assert [c.name for c in r.stages[0].select] == ["full"]
    assert [c.name for c in r.stages[0].objectives] == ["task"]
    assert r.selection_metric == "accuracy"


def test_unknown_key_names_the_valid_keys():
    with pytest.raises(HybridftError) as e:
        validate_recipe(minimal(optimiser={}))
    assert "unknown key 'optimiser'" in str(e.value) and "stages" in str(e.value)


def test_all_errors_reported_at_once_with_field_paths():
    data = {"data": {"train": "x.csv"},
            "stages": [{"optimizer": {"lr": -1}, "batch_size": "many", "select": [{"name": "layers", "top_k": -2}]}]}
    with pytest.raises(HybridftError) as e:
        validate_recipe(data)
    msg = str(e.value)
    assert "3 problem(s)" in msg
    assert "stages.0.optimizer.lr" in msg and "stages.0.batch_size" in msg and "stages.0.select.0.layers.top_k" in msg


def test_unknown_selector_and_scheduler_are_errors():
    with pytest.raises(HybridftError, match="full"):
        validate_recipe(minimal(stages=[{"select": [{"name": "fulll"}]}]))
    with pytest.raises(HybridftError, match="unknown scheduler"):
        validate_recipe(minimal(stages=[{"scheduler": {"name": "wobbly"}}]))


def test_cross_field_checks():
    with pytest.raises(HybridftError, match="text_pair"):
        validate_recipe(minimal(task="pair_classification"))
    with pytest.raises(HybridftError, match="entity_f1"):
        validate_recipe(minimal(task="classification", metric="entity_f1"))
    with pytest.raises(HybridftError, match="at least 1"):
        validate_recipe({"data": {"train": "x.csv"}, "stages": []})


def test_float16_is_refused_wherever_weights_would_compute_in_it():
    """Without loss scaling, float16 gradients underflow: neither model.dtype nor FSDP's gather takes it."""
    with pytest.raises(HybridftError, match="distributed.mixed_precision.param_dtype"):
        validate_recipe(minimal(distributed={"strategy": "fsdp", "mixed_precision": {"param_dtype": "float16"}}))
    with pytest.raises(HybridftError, match="model.dtype"):
        validate_recipe(minimal(model={"dtype": "float16"}))


def test_overrides_parse_yaml_scalars_and_list_indices():
    data = apply_overrides(minimal(), ["stages.0.optimizer.lr=1e-4", "seed=7", "data.validation=null"])
    r = validate_recipe(data)
    assert r.stages[0].optimizer.lr == pytest.approx(1e-4) and r.seed == 7 and r.data.validation is None
    with pytest.raises(HybridftError, match="not an index"):
        apply_overrides(minimal(), ["stages.3.epochs=2"])
    with pytest.raises(HybridftError, match="key.path=value"):
        apply_overrides(minimal(), ["seed"])


def test_recipe_not_a_mapping_or_not_yaml(tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(HybridftError, match="mapping"):
        load_recipe(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(HybridftError, match="not valid YAML"):
        load_recipe(tmp_path / "bad.yaml")


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    recipe, base = load_recipe(path)
    assert recipe.stages and base == path.parent
