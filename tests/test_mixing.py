"""Weight interpolation: exact endpoints, identity, per-part alphas, clear errors, and the CLI."""

import pytest
import torch

from hybridft.cli import main
from hybridft.errors import HybridftError
from hybridft.mixing import interpolate, part_of, per_part_alpha


def states(seed=0):
    g = torch.Generator().manual_seed(seed)
    pre = {"embeddings.w": torch.randn(5, 3, generator=g), "encoder.layer.0.w": torch.randn(4, generator=g),
           "encoder.layer.1.w": torch.randn(4, generator=g), "pooler.w": torch.randn(2, generator=g)}
    fine = {f"bert.{k}": v + torch.randn(v.shape, generator=g) for k, v in pre.items()}
    fine["classifier.weight"] = torch.randn(2, 3, generator=g)
    fine["bert.embeddings.position_ids"] = torch.arange(5)
    return pre, fine


def test_endpoints_are_bit_exact_and_head_comes_from_fine():
    pre, fine = states()
    zero = interpolate(pre, fine, 0.0)
    one = interpolate(pre, fine, 1.0)
    assert all(torch.equal(zero[k], fine[k]) for k in fine)
    assert all(torch.equal(one[f"bert.{k}"], pre[k]) for k in pre)
    assert torch.equal(one["classifier.weight"], fine["classifier.weight"])
    assert torch.equal(one["bert.embeddings.position_ids"], fine["bert.embeddings.position_ids"])


def test_midpoint_and_identity():
    pre, fine = states()
    mid = interpolate(pre, fine, 0.3)
    assert torch.allclose(mid["bert.pooler.w"], 0.3 * pre["pooler.w"] + 0.7 * fine["bert.pooler.w"])
    same = interpolate(fine, fine, 0.37)
    assert all(torch.equal(same[k], fine[k]) for k in fine)


def test_per_part_alpha_all_equal_is_global_alpha():
    pre, fine = states()
    per = interpolate(pre, fine, per_part_alpha(dict.fromkeys(("embeddings", "lower", "upper", "head"), 0.4), 2))
    glob = interpolate(pre, fine, 0.4)
    assert all(torch.equal(per[k], glob[k]) for k in fine)
    assert [part_of(n, 2) for n in ("bert.embeddings.w", "bert.encoder.layer.0.w", "bert.encoder.layer.1.w",
                                     "bert.pooler.w")] == ["embeddings", "lower", "upper", "head"]


def test_errors_name_the_first_mismatch():
    pre, fine = states()
    pre["embeddings.w"] = torch.randn(6, 3)  # another vocabulary
    with pytest.raises(HybridftError, match=r"tensor bert.embeddings.w differs"):
        interpolate(pre, fine, 0.5)
    with pytest.raises(HybridftError, match=r"alpha must be in \[0, 1\]"):
        interpolate(*states(), 1.5)
    with pytest.raises(HybridftError, match="share no tensor names"):
        interpolate({"x.y": torch.zeros(1)}, fine, 0.5)


def test_interpolate_cli_on_a_trained_run(tiny_model, sentiment_csv, tmp_path, capsys):
    from safetensors.torch import load_file

    from .conftest import base_recipe
    from .helpers import train_and_load

    _, fine = train_and_load(base_recipe(tiny_model, sentiment_csv, max_steps=3), tmp_path / "run")
    fine_dir = tmp_path / "run" / "model"
    assert main(["interpolate", str(tiny_model), str(fine_dir), "--alpha", "0", "-o", str(tmp_path / "m0")]) == 0
    zero = load_file(tmp_path / "m0" / "model.safetensors")
    assert all(torch.equal(zero[k], fine[k]) for k in fine)
    assert main(["interpolate", str(tiny_model), str(fine_dir), "--alpha", "1", "-o", str(tmp_path / "m1")]) == 0
    pre = load_file(tiny_model / "model.safetensors")
    one = load_file(tmp_path / "m1" / "model.safetensors")
    assert torch.equal(one["bert.encoder.layer.0.output.dense.weight"], pre["encoder.layer.0.output.dense.weight"])
    assert main(["interpolate", str(tiny_model), str(fine_dir), "--alpha", "1", "-o", str(tmp_path / "m1")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "m1").config.num_labels == 2


def test_recipe_mix_step_sweeps_refines_and_keeps_the_best(tiny_model, sentiment_csv, tmp_path):
    from safetensors.torch import load_file

    from hybridft.mixing import interpolate as mix

    from .conftest import base_recipe
    from .helpers import train_and_load

    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=4)
    recipe["mix"] = {"alphas": [0.0, 0.5, 1.0], "refine": "golden", "refine_steps": 3}
    recipe["metric"] = "loss"
    recipe["output"] = {"keep_checkpoints_after_run": True}
    report, final = train_and_load(recipe, tmp_path / "run")
    mix_report = report["mix"]
    alphas = [p["alpha"] for p in mix_report["curve"]]
    assert {0.0, 0.5, 1.0} <= set(alphas) and len(alphas) == 6  # 3 grid points + 3 golden-section points
    best = min(mix_report["curve"], key=lambda p: (p["loss"], p["alpha"]))
    assert mix_report["chosen_alpha"] == best["alpha"]
    assert report["metrics"]["loss"] == pytest.approx(best["loss"], rel=1e-6)
    # the saved model is exactly the chosen mix of the pretrained and the trained weights
    trained = load_file(next((tmp_path / "run" / "checkpoints").glob("stage-0-done")) / "model.safetensors")
    expected = mix(load_file(tiny_model / "model.safetensors"), trained, mix_report["chosen_alpha"])
    assert all(torch.equal(final[k], expected[k]) for k in final)
    assert "## Weight interpolation" in (tmp_path / "run" / "report.md").read_text()


def test_mix_step_per_layer_and_output_ensemble(tiny_model, sentiment_csv, tmp_path):
    from .conftest import base_recipe
    from .helpers import train_and_load

    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=4)
    recipe["mix"] = {"alphas": [0.0, 0.5, 1.0], "per_layer": True, "ensemble": True, "probe_steps": 3,
                     "learn": True, "learn_steps": 3}
    report, _ = train_and_load(recipe, tmp_path / "run")
    mix_report = report["mix"]
    per_layer = mix_report["per_layer"]
    assert set(per_layer["alphas"]) == {"embeddings", "lower", "upper", "head"}
    # the per-layer result is never worse than the global choice it starts from
    assert per_layer["metrics"]["accuracy"] >= mix_report["chosen"]["accuracy"]
    ensemble = {p["alpha"]: p for p in mix_report["ensemble"]["curve"]}
    assert set(ensemble) == {0.0, 0.5, 1.0}
    # alpha 0 of the ensemble is the fine-tuned model alone, as is alpha 0 of the weight mix
    weight0 = next(p for p in mix_report["curve"] if p["alpha"] == 0.0)
    assert ensemble[0.0]["accuracy"] == weight0["accuracy"]
    learned = mix_report["learned"]
    assert set(learned["alphas"]) == {"embeddings", "lower", "upper", "head"}
    assert all(0.0 < a < 1.0 for a in learned["alphas"].values())
    assert mix_report["final"] in ("global", "per_layer", "learned")
    text = (tmp_path / "run" / "report.md").read_text()
    assert "Per-layer alphas" in text and "Output-level mixing" in text and "Learned mixing" in text


def test_learned_mixing_moves_only_the_coefficients(tiny_model, sentiment_csv, tmp_path):
    from types import SimpleNamespace

    from hybridft.training.learned_mix import learn_mixing

    from .conftest import base_recipe
    from .helpers import make_run

    run = make_run(base_recipe(tiny_model, sentiment_csv), tmp_path / "run")
    model = run.model
    fine = {k: v.detach().clone() for k, v in model.state_dict().items()}
    pre = {k: v + 0.5 for k, v in fine.items() if k.startswith("bert.") and v.is_floating_point()}
    spec = SimpleNamespace(learn_granularity="part", learn_steps=5, learn_lr=0.5)
    learned = learn_mixing(run, model, pre, fine, 0.5, spec, batch_size=8)
    assert any(abs(a - 0.5) > 1e-3 for a in learned.values())  # the coefficients moved
    assert all(torch.equal(model.state_dict()[k], fine[k]) for k in fine)  # the weights did not


def test_one_standard_error_rule_prefers_the_model_closest_to_m_fine():
    from hybridft.training.mix_step import standard_error, tolerant_choice

    curve = [{"alpha": 0.0, "accuracy": 0.85}, {"alpha": 0.2, "accuracy": 0.87}, {"alpha": 0.5, "accuracy": 0.80}]
    assert standard_error(0.87, 200) == pytest.approx((0.87 * 0.13 / 200) ** 0.5)
    assert tolerant_choice(curve, "accuracy", 0.0)["alpha"] == 0.2  # plain best
    assert tolerant_choice(curve, "accuracy", standard_error(0.87, 200))["alpha"] == 0.0  # 2 points < 1 SE (2.4)
    assert tolerant_choice(curve, "accuracy", standard_error(0.87, 5000))["alpha"] == 0.2  # 2 points > 1 SE (0.5)
    losses = [{"alpha": 0.0, "loss": 0.40}, {"alpha": 0.3, "loss": 0.38}]
    assert tolerant_choice(losses, "loss", 0.05)["alpha"] == 0.0 and tolerant_choice(losses, "loss", 0.0)["alpha"] == 0.3


def test_interpolate_overwrite_deletes_only_a_hybridft_model_folder(tiny_model, sentiment_csv, tmp_path, capsys,
                                                                    monkeypatch):
    """Issue 24.1: ``-o . --overwrite`` in a folder of the user's deleted it. Now a folder without
    the model marker is refused and left as it was; a hybridft model folder is replaced whole, and
    only after the inputs passed their checks."""
    from .conftest import base_recipe
    from .helpers import train_and_load

    train_and_load(base_recipe(tiny_model, sentiment_csv, max_steps=2), tmp_path / "run")
    fine_dir = tmp_path / "run" / "model"
    user = tmp_path / "notes"
    (user / "sub").mkdir(parents=True)
    (user / "notes.txt").write_text("mine")
    monkeypatch.chdir(user)
    assert main(["interpolate", str(tiny_model), str(fine_dir), "--alpha", "0.5", "-o", ".", "--overwrite"]) == 2
    assert "holds no hybridft model" in capsys.readouterr().err
    assert (user / "notes.txt").read_text() == "mine" and (user / "sub").is_dir()

    out = tmp_path / "mixed"
    assert main(["interpolate", str(tiny_model), str(fine_dir), "--alpha", "0.5", "-o", str(out)]) == 0
    assert (out / ".hybridft-model").is_file()
    before = (out / "model.safetensors").read_bytes()
    # bad inputs with --overwrite: the old mixed model stays untouched
    assert main(["interpolate", str(tiny_model), str(tmp_path / "missing"), "--alpha", "0.5", "-o", str(out),
                 "--overwrite"]) == 2
    assert main(["interpolate", str(tiny_model), str(fine_dir), "--alpha", "1.5", "-o", str(out), "--overwrite"]) == 2
    assert (out / "model.safetensors").read_bytes() == before
    assert main(["interpolate", str(tiny_model), str(fine_dir), "--alpha", "1", "-o", str(out), "--overwrite"]) == 0
    assert (out / "model.safetensors").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left over
