"""The Python API: hybridft.run, hybridft.load, hybridft.Recipe; the CLI gives the same results."""

import json

import pytest
import torch

import hybridft
from hybridft.cli import main
from hybridft.errors import HybridftError

from .conftest import base_recipe, write_recipe


def test_run_from_a_dict_with_keyword_overrides_then_load_and_predict(tiny_model, sentiment_csv, tmp_path):
    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=3)
    result = hybridft.run(recipe, out=tmp_path / "run", seed=7, stages__0__optimizer__lr=2e-3)
    assert recipe == base_recipe(tiny_model, sentiment_csv, max_steps=3)  # the caller's dict is left as it was
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert result.report == report and result.metrics == report["metrics"] and result.test_metrics is None
    assert report["seed"] == 7 and report["stages"][0]["steps"] == 3
    assert result.model_dir == tmp_path / "run" / "model"
    assert "lr: 0.002" in (tmp_path / "run" / "recipe.yaml").read_text()

    saved = hybridft.load(result.model_dir)
    assert saved.task == "classification" and saved.labels == ["negative", "positive"]
    texts = ["the film was good", "", "a boring plot"]
    records = saved.predict(texts)
    assert [r["text"] for r in records] == texts  # one record per input, in order
    assert records[1] == {"text": "", "error": "empty text"}
    assert all(r["label"] in saved.labels for r in (records[0], records[2]))
    assert saved.predict("the film was good") == records[:1]  # one text is one text, not its characters
    # the same labels and scores as a plain forward pass of the loaded model
    enc = saved.tokenizer(["the film was good"], return_tensors="pt")
    with torch.no_grad():
        probs = saved.model(**enc).logits.softmax(-1)[0]
    assert records[0]["score"] == round(float(probs.max()), 4)


def test_a_run_leaves_the_callers_matplotlib_backend_as_it_was(tiny_model, sentiment_csv, tmp_path):
    """report.html draws its plots; a notebook's backend (inline, widget) must survive it."""
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("pdf")  # a backend hybridft would never choose, standing in for the notebook's
    try:
        hybridft.run(base_recipe(tiny_model, sentiment_csv, max_steps=2), out=tmp_path / "run")
        assert matplotlib.get_backend() == "pdf"
        assert "<svg" in (tmp_path / "run" / "report.html").read_text()  # the plots were drawn all the same
    finally:
        matplotlib.use(before)


def test_the_cli_run_is_the_api_run(tiny_model, sentiment_csv, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, sentiment_csv, max_steps=2))
    assert main(["run", str(recipe), "--out", str(tmp_path / "cli"), "--no-progress", "seed=3"]) == 0
    api = hybridft.run(recipe, out=tmp_path / "api", overrides={"seed": 3})
    cli = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert cli["metrics"] == api.metrics
    assert (tmp_path / "cli" / "model" / "model.safetensors").read_bytes() == \
        (api.model_dir / "model.safetensors").read_bytes()


def test_recipe_is_importable_for_building_recipes_in_code(tiny_model, sentiment_csv, tmp_path):
    recipe = hybridft.Recipe.model_validate(base_recipe(tiny_model, sentiment_csv, max_steps=1))
    assert recipe.stages[0].select[0].name == "full"
    assert hybridft.run(recipe, out=tmp_path / "run").report["stages"][0]["steps"] == 1
    with pytest.raises(HybridftError, match="give the run folder"):
        hybridft.run(recipe, resume=True)
    with pytest.raises(AttributeError):
        hybridft.nothing  # noqa: B018
    assert {"run", "load", "Recipe"} <= set(dir(hybridft))


def test_load_restores_adapters(tiny_model, sentiment_csv, tmp_path):
    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=2, select=[{"name": "adapter", "reduction_factor": 4}],
                         optimizer={"lr": 5e-2})
    result = hybridft.run(recipe, out=tmp_path / "run")
    saved = hybridft.load(result.model_dir)
    assert any(".adapter." in n for n, _ in saved.model.named_parameters())
    enc = saved.tokenizer(["the film was good"], return_tensors="pt")
    from transformers import AutoModelForSequenceClassification

    plain = AutoModelForSequenceClassification.from_pretrained(result.model_dir).eval()
    assert not torch.allclose(saved.model(**enc).logits, plain(**enc).logits)  # plain transformers drops them


def test_resuming_a_complete_run_returns_it_unless_the_recipe_changed(tiny_model, sentiment_csv, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, sentiment_csv, max_steps=1))
    first = hybridft.run(recipe, out=tmp_path / "run")
    again = hybridft.run(recipe, out=tmp_path / "run", resume=True)
    assert again.already_complete and again.report == first.report
    with pytest.raises(HybridftError, match="recipe differs"):
        hybridft.run(recipe, out=tmp_path / "run", resume=True, seed=5)


def test_validate_checks_without_weights_and_the_cli_uses_it(tiny_model, sentiment_csv, tmp_path, capsys):
    recipe = base_recipe(tiny_model, sentiment_csv, select=[{"name": "layers", "top_k": 9}])
    with pytest.raises(HybridftError, match="1 problem.*top_k=9 but the model has only 2 layers"):
        hybridft.validate(recipe)
    assert hybridft.validate(recipe, stages__0__select__0__top_k=1).stages[0].select[0].top_k == 1
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert main(["validate", str(path), "stages.0.select.0.top_k=1"]) == 0
    assert main(["validate", str(path)]) == 2 and "top_k=9" in capsys.readouterr().err


def test_ctrl_c_says_how_to_resume(tiny_model, sentiment_csv, tmp_path, capsys, monkeypatch):
    import hybridft.api

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hybridft.api, "run_recipe", interrupted)
    path = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, sentiment_csv, max_steps=1))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "seed=3"]) == 130
    assert capsys.readouterr().err.strip() == (f"error: interrupted; continue from the last checkpoint with: "
                                               f"hybridft run {path} seed=3 --out {tmp_path / 'run'} --resume")
