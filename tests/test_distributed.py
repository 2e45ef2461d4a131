"""Two CPU processes (DDP over gloo, launched with `accelerate launch`) against one process with
the same global batch: the same weights within float rounding, metrics and checkpoints written once."""

import json
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from .conftest import base_recipe, write_recipe
from .helpers import rewind_to


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(recipe_path, out, processes: int, *extra: str):
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                  str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  "--main_process_port", str(free_port()), "-m"]
    command = (accelerate if processes > 1 else [sys.executable, "-m"]) + [
        "hybridft", "run", str(recipe_path), "--out", str(out), "--no-progress", *extra]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "report.json").read_text())


def test_two_processes_match_one_with_the_same_global_batch(no_dropout_model, sentiment_csv, tmp_path):
    recipe = base_recipe(no_dropout_model, sentiment_csv, max_steps=6, eval_every=3, batch_size=8)
    path = write_recipe(tmp_path / "r.yaml", recipe)
    one, two = launch(path, tmp_path / "one", 1), launch(path, tmp_path / "two", 2)
    assert two["environment"]["processes"] == 2
    a, b = load_file(tmp_path / "one" / "model" / "model.safetensors"), load_file(tmp_path / "two" / "model" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert one["metrics"]["accuracy"] == two["metrics"]["accuracy"]
    assert one["metrics"]["loss"] == pytest.approx(two["metrics"]["loss"], abs=1e-5)
    log_one, log_two = ((tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("one", "two"))
    assert len(log_one) == len(log_two)  # written once, by the main process
    for x, y in zip(map(json.loads, log_one), map(json.loads, log_two), strict=True):
        if "loss" in x:  # the logged loss is the global batch's, averaged over the processes
            assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)


def test_two_processes_run_the_unlabeled_objectives(tiny_model, sentiment_csv, unlabeled_csv, tmp_path):
    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=4)
    recipe["data"]["unlabeled"] = {"path": str(unlabeled_csv)}
    recipe["stages"] += [{"mix": {"alphas": [0.0, 0.5]}},
                         {"name": "hybrid", "max_steps": 4, "batch_size": 8, "eval_every": 2,
                          "objectives": [{"name": "task"}, {"name": "pseudo_label", "threshold": 0.0},
                                         {"name": "mlm", "source": "unlabeled"},
                                         {"name": "distill", "teacher": "fine_tuned", "source": "both"}]}]
    recipe["output"] = {"keep_checkpoints_after_run": True}
    report = launch(write_recipe(tmp_path / "r.yaml", recipe), tmp_path / "two", 2)
    assert report["environment"]["processes"] == 2
    assert report["stages"][-1]["objective_details"]["pseudo_label"]["rounds"][0]["kept"] == 60
    names = {p.name for p in (tmp_path / "two" / "checkpoints").iterdir()}
    assert "latest" in names and not any(n.startswith(".tmp") for n in names)


@pytest.mark.slow
def test_a_resumed_two_process_run_ends_bit_identical(tiny_model, sentiment_csv, tmp_path):
    # with dropout on: each process draws dropout masks for its own half of the batch; sentences of
    # different lengths give the halves different shapes, so the processes' RNG streams part ways
    # and each must get its own state back on resume
    rows = [line.split(",") for line in sentiment_csv.read_text().splitlines()[1:]]
    varied = tmp_path / "varied.csv"
    varied.write_text("text,label\n" + "".join(f"{text}{' really' * (i % 7)},{label}\n"
                                                for i, (text, label) in enumerate(rows)))
    # shuffled batches: length-grouped ones would give both halves the same shape
    recipe = base_recipe(tiny_model, varied, max_steps=9, eval_every=3, batch_size=8, keep_best=False,
                         group_by_length=False)
    recipe["output"] = {"keep_checkpoints": 10, "keep_checkpoints_after_run": True}
    path = write_recipe(tmp_path / "r.yaml", recipe)
    launch(path, tmp_path / "full", 2)
    assert (tmp_path / "full" / "checkpoints" / "step-3" / "rng-process1.pt").is_file()
    expected = load_file(tmp_path / "full" / "model" / "model.safetensors")

    def resumed_weights(name, drop_process_rng=False):
        out = tmp_path / name
        shutil.copytree(tmp_path / "full", out)
        rewind_to(out, "step-3")
        if drop_process_rng:  # what resuming did before: every process got the main process's state
            (out / "checkpoints" / "step-3" / "rng-process1.pt").unlink()
        launch(path, out, 2, "--resume")
        return load_file(out / "model" / "model.safetensors")

    got = resumed_weights("resumed")
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    # the check can fail: with one RNG state for both processes, process 1's dropout differs
    shared = resumed_weights("shared-rng", drop_process_rng=True)
    assert not all(torch.equal(expected[k], shared[k]) for k in expected)
