"""Merge methods (issue 25): each against a hand computation on toy tensors; linear identical to
interpolation; a mix stage and ``hybridft interpolate --method`` on trained models."""

import json
import math

import pytest
import torch

from hybridft.cli import main
from hybridft.errors import HybridftError
from hybridft.merging import METHODS, MergePoint, build_method, merge_states
from hybridft.mixing import interpolate

PRE = {"w": torch.tensor([1.0, 1.0, 1.0, 1.0]), "step": torch.tensor([7])}
# task vectors tau1 = [3, -1, 2, -4] and tau2 = [-2, -3, 1, 1] (no ties in magnitude)
FINE1 = {"w": torch.tensor([4.0, 0.0, 3.0, -3.0]), "step": torch.tensor([1]), "head": torch.tensor([2.0, 4.0])}
FINE2 = {"w": torch.tensor([-1.0, -2.0, 2.0, 2.0]), "step": torch.tensor([2]), "head": torch.tensor([6.0, 0.0])}


def merged(method: str, point: MergePoint, fines=(FINE1, FINE2), **kw) -> dict:
    return merge_states(PRE, list(fines), build_method(method, kw.pop("majority_sign", "total")), point, **kw)


def test_ties_trims_elects_signs_and_averages_the_agreeing_entries():
    # density 0.5 keeps the two largest of each: tau1 -> [3, 0, 0, -4], tau2 -> [-2, -3, 0, 0]
    # elected signs (summed values [1, -3, 0, -4]): +, -, +, -; agreeing entries averaged: [3, -3, 0, -4]
    out = merged("ties", MergePoint(scale=1.0, density=0.5))
    assert torch.equal(out["w"], torch.tensor([4.0, -2.0, 1.0, -3.0]))
    half = merged("ties", MergePoint(scale=0.5, density=0.5))
    assert torch.equal(half["w"], torch.tensor([2.5, -0.5, 1.0, -1.0]))
    # by count instead of by sum: entry 0 has one + and one - (a tie goes to +), the rest as above
    assert torch.equal(merged("ties", MergePoint(scale=1.0, density=0.5), majority_sign="frequency")["w"],
                       torch.tensor([4.0, -2.0, 1.0, -3.0]))


def test_task_arithmetic_adds_the_weighted_task_vectors():
    out = merged("task_arithmetic", MergePoint(scale=0.5), weights=[1.0, 2.0])
    # tau1 + 2 tau2 = [-1, -7, 4, -2]; half of it on M_pre
    assert torch.allclose(out["w"], torch.tensor([0.5, -2.5, 3.0, 0.0]))


def test_dare_drops_at_random_and_rescales_the_kept_entries_by_one_over_density():
    n = 20000
    pre = {"w": torch.zeros(n)}
    tau = torch.linspace(0.5, 1.5, n)
    fine = {"w": tau.clone()}
    a = merge_states(pre, [fine], build_method("dare_linear"), MergePoint(scale=1.0, density=0.25), seed=3)["w"]
    kept = a != 0
    assert torch.allclose(a[kept], tau[kept] / 0.25)  # every kept entry rescaled by 1/density
    assert abs(kept.float().mean().item() - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)
    again = merge_states(pre, [fine], build_method("dare_linear"), MergePoint(scale=1.0, density=0.25), seed=3)["w"]
    other = merge_states(pre, [fine], build_method("dare_linear"), MergePoint(scale=1.0, density=0.25), seed=4)["w"]
    assert torch.equal(a, again) and not torch.equal(a, other)  # seeded, and by the seed
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    merge_states(pre, [fine], build_method("dare_ties"), MergePoint(scale=1.0, density=0.5), seed=3)
    assert torch.equal(torch.rand(1), before)  # the global random state is untouched


def test_dare_never_reseeds_the_gpus_generators(monkeypatch):
    """torch.manual_seed reseeds every GPU too, which fork_rng(devices=[]) does not restore."""
    def reseeds_gpus(seed):
        raise AssertionError("a merge on the CPU reseeded the GPUs' generators")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeds_gpus)
    pre, fine = {"w": torch.zeros(64)}, {"w": torch.ones(64)}
    merged = merge_states(pre, [fine], build_method("dare_linear"), MergePoint(scale=1.0, density=0.5), seed=3)
    assert 0 < int((merged["w"] != 0).sum()) < 64


def test_dare_ties_keeps_only_entries_of_the_elected_sign():
    out = merged("dare_ties", MergePoint(scale=1.0, density=1.0))  # nothing dropped: TIES without trimming
    # signs of [1, -4, 3, -3]: +, -, +, -; agreeing: [3], [-1, -3], [2, 1], [-4] -> means [3, -2, 1.5, -4]
    assert torch.equal(out["w"], torch.tensor([4.0, -1.0, 2.5, -3.0]))


def test_slerp_keeps_the_norm_on_the_arc_and_its_endpoints_exactly():
    pre, fine = {"w": torch.tensor([0.0, 2.0])}, {"w": torch.tensor([2.0, 0.0])}
    mid = merge_states(pre, [fine], build_method("slerp"), MergePoint(alpha=0.5))["w"]
    assert torch.allclose(mid, torch.tensor([math.sqrt(2), math.sqrt(2)]))  # norm 2, where linear gives 1.41
    for alpha, expected in ((0.0, fine), (1.0, pre)):
        assert torch.equal(merge_states(pre, [fine], build_method("slerp"), MergePoint(alpha=alpha))["w"],
                           expected["w"])


def test_linear_with_one_model_is_interpolation_bit_for_bit_and_a_soup_with_several():
    torch.manual_seed(0)
    pre = {"a": torch.randn(50), "b": torch.randn(3, 4)}
    fine = {"a": torch.randn(50), "b": torch.randn(3, 4), "head": torch.randn(2)}
    for alpha in (0.0, 0.3, 0.7, 1.0):
        out = merge_states(pre, [fine], build_method("linear"), MergePoint(alpha=alpha))
        ref = interpolate(pre, fine, alpha)
        assert all(torch.equal(out[k], ref[k]) for k in ref)
    soup = merged("linear", MergePoint(alpha=0.0))
    assert torch.equal(soup["w"], torch.tensor([1.5, -1.0, 2.5, -0.5]))  # the mean of the two models
    assert torch.equal(soup["head"], torch.tensor([4.0, 2.0]))  # a head only fine-tuned models have: their mean
    assert torch.equal(soup["step"], FINE1["step"])  # integer buffers from the first model


def test_models_that_differ_are_refused():
    odd = {**FINE2, "head": torch.zeros(3)}
    with pytest.raises(HybridftError, match="different label set"):
        merged("ties", MergePoint(scale=1.0, density=0.5), fines=(FINE1, odd))
    with pytest.raises(HybridftError, match="only one of them has"):
        merged("ties", MergePoint(scale=1.0, density=0.5), fines=(FINE1, {"w": FINE2["w"]}))


def test_the_cli_lists_every_method_and_interpolate_offers_the_same(capsys):
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert all(f"  {name} " in listed for name in METHODS)
    from hybridft.cli import _parser

    action = next(a for a in _parser()._subparsers._group_actions[0].choices["interpolate"]._actions
                  if a.dest == "method")
    assert set(action.choices) == set(METHODS)


def test_validate_refuses_what_a_method_does_not_take(tiny_model, sentiment_csv):
    from hybridft.api import validate

    from .conftest import base_recipe

    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=2)
    for mix, message in (({"method": "linear", "densities": [0.5]}, "mix.densities is not a parameter of method linear"),
                         ({"method": "ties", "per_layer": True}, "mix.per_layer works with method linear"),
                         ({"method": "slerp", "models": ["x"]}, "method slerp merges M_pre with one"),
                         ({"method": "ties", "models": ["stage:nope"]}, "no training stage of that name"),
                         ({"method": "ties", "weights": [1.0, 2.0]}, "one weight per fine-tuned model"),
                         ({"method": "ties", "densities": [0.0]}, "a density must be in")):
        with pytest.raises(HybridftError, match=message):
            validate({**recipe, "mix": mix})


def test_a_mix_stage_merges_an_earlier_stage_with_ties_and_reports_every_point(tiny_model, sentiment_csv, tmp_path):
    """Two fine-tuned models (stage a, and stage b restarted from the pretrained model) merged with
    M_pre by TIES over a 2 x 2 grid; the saved model is the chosen merge, bit for bit."""
    from safetensors.torch import load_file

    from .conftest import base_recipe
    from .helpers import train_and_load

    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=3, name="a")
    recipe["stages"].append({**recipe["stages"][0], "name": "b", "init": "pretrained"})
    recipe["stages"].append({"name": "merge", "mix": {"method": "ties", "scales": [0.5, 1.0], "densities": [0.3, 1.0],
                                                      "models": ["stage:a"], "weights": [1.0, 1.0]}})
    recipe["output"] = {"keep_checkpoints_after_run": True, "keep_checkpoints": 10}
    report, final = train_and_load(recipe, tmp_path / "run")
    mix = report["mix"]
    assert mix["method"] == "ties" and len(mix["curve"]) == 4
    assert {(p["scale"], p["density"]) for p in mix["curve"]} == {(0.5, 0.3), (0.5, 1.0), (1.0, 0.3), (1.0, 1.0)}
    best = max([mix["fine_tuned"], *mix["curve"]], key=lambda p: p["accuracy"])["accuracy"]
    assert mix["chosen"]["accuracy"] == best
    checkpoints = tmp_path / "run" / "checkpoints"
    a, b = (load_file(checkpoints / f"stage-{i}-done" / "model.safetensors") for i in (0, 1))
    point = MergePoint(**mix["chosen_point"]) if mix["chosen_point"] else None
    expected = b if point is None else merge_states(load_file(tiny_model / "model.safetensors"), [b, a],
                                                    build_method("ties"), point, [1.0, 1.0], 0)
    assert all(torch.equal(final[k], expected[k]) for k in final)
    assert "## Merge: ties" in (tmp_path / "run" / "report.md").read_text()


def test_interpolate_cli_merges_folders_and_refuses_other_labels(tiny_model, sentiment_csv, tmp_path, capsys):
    from safetensors.torch import load_file

    from .conftest import base_recipe
    from .helpers import train_and_load

    _, one = train_and_load(base_recipe(tiny_model, sentiment_csv, max_steps=2), tmp_path / "one")
    _, two = train_and_load({**base_recipe(tiny_model, sentiment_csv, max_steps=3), "seed": 7}, tmp_path / "two")
    out = tmp_path / "merged"
    assert main(["interpolate", str(tiny_model), str(tmp_path / "one" / "model"), "--model",
                 str(tmp_path / "two" / "model"), "--method", "dare_ties", "--density", "0.5", "--scale", "0.8",
                 "--seed", "5", "-o", str(out)]) == 0
    got = load_file(out / "model.safetensors")
    expected = merge_states(load_file(tiny_model / "model.safetensors"), [one, two], build_method("dare_ties"),
                            MergePoint(scale=0.8, density=0.5), None, 5)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert json.loads((out / "hybridft.json").read_text())["mixed"]["point"] == {"scale": 0.8, "density": 0.5}
    assert main(["interpolate", str(tiny_model), str(tmp_path / "one" / "model"), "--method", "ties",
                 "-o", str(tmp_path / "x")]) == 2
    assert "--method ties needs --density" in capsys.readouterr().err
    other = tmp_path / "three-labels.csv"
    other.write_text("text,label\n" + "".join(f"film {i} was fine,{['pos', 'neg', 'meh'][i % 3]}\n" for i in range(30)))
    train_and_load(base_recipe(tiny_model, other, max_steps=1), tmp_path / "three")
    assert main(["interpolate", str(tiny_model), str(tmp_path / "one" / "model"), "--model",
                 str(tmp_path / "three" / "model"), "--method", "task_arithmetic", "-o", str(tmp_path / "y")]) == 2
    assert "different label sets cannot be merged" in capsys.readouterr().err
    assert not (tmp_path / "y").exists() and not (tmp_path / "x").exists()


def test_a_list_of_methods_is_searched_together_and_each_method_reports_its_best(tiny_model, sentiment_csv,
                                                                                tmp_path):
    from .conftest import base_recipe
    from .helpers import train_and_load

    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=3)
    recipe["data"]["test"] = str(sentiment_csv)
    recipe["mix"] = {"method": ["linear", "slerp", "task_arithmetic", "dare_linear"], "alphas": [0.2, 0.6],
                     "scales": [0.5, 1.0], "densities": [0.5]}
    report, _ = train_and_load(recipe, tmp_path / "run")
    mix = report["mix"]
    assert [p["method"] for p in mix["curve"]] == ["linear"] * 2 + ["slerp"] * 2 + ["task_arithmetic"] * 2 + \
        ["dare_linear"] * 2
    assert set(mix["methods"]) == {"linear", "slerp", "task_arithmetic", "dare_linear"}
    for name, best in mix["methods"].items():
        mine = [p for p in mix["curve"] if p["method"] == name]
        assert best["validation"]["accuracy"] == max(p["accuracy"] for p in mine) and "test" in best
    best = max([mix["fine_tuned"], *mix["curve"]], key=lambda p: p["accuracy"])
    assert mix["chosen"]["accuracy"] == best["accuracy"]
    assert report["metrics"]["accuracy"] == mix["chosen"]["accuracy"]
    text = (tmp_path / "run" / "report.md").read_text()
    assert "## Merge: linear, slerp, task_arithmetic, dare_linear" in text and "| best dare_linear (" in text


def test_validate_refuses_a_method_list_that_cannot_work(tiny_model, sentiment_csv):
    from hybridft.api import validate

    from .conftest import base_recipe

    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=2)
    for mix, message in (({"method": ["ties", "ties"]}, "give each method once"),
                         ({"method": ["linear", "slerp"], "models": ["x"]}, "method slerp merges M_pre with one"),
                         ({"method": ["linear", "slerp"], "refine": "golden"}, "no list of methods"),
                         ({"method": ["linear", "slerp"], "scales": [1.0]}, "mix.scales is not a parameter")):
        with pytest.raises(HybridftError, match=message):
            validate({**recipe, "mix": mix})
