"""`hybridft search`: the search space checked before any trial, Optuna's trials into one folder,
scored on rows held out of train (the recipe's validation set scores the chosen configuration only)."""

from __future__ import annotations

import json

import pytest
import yaml

from hybridft.cli import main

from .conftest import base_recipe, write_recipe

LR = {"stages.0.optimizer.lr": {"low": 1e-4, "high": 1e-2, "log": True}}


def search_recipe(tiny_model, train, tmp_path, space=None, **search) -> dict:
    recipe = base_recipe(tiny_model, train, max_steps=2)
    recipe["search"] = {"trials": 2, "space": space or LR, **search}
    return recipe


def test_validate_names_the_path_of_a_bad_choice_before_any_trial(tiny_model, sentiment_csv, tmp_path, capsys):
    space = {**LR, "stages.0.select": {"choice": [[{"name": "full"}], [{"name": "lora", "r": 0}]]}}
    path = write_recipe(tmp_path / "r.yaml", search_recipe(tiny_model, sentiment_csv, tmp_path, space))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "search: space stages.0.select: choice 2 ([{name: lora, r: 0}])" in err
    assert "lora.r: Input should be greater than or equal to 1" in err and "choice 1" not in err
    assert main(["search", str(path), "--out", str(tmp_path / "s")]) == 2
    assert "choice 2" in capsys.readouterr().err and not (tmp_path / "s").exists()


@pytest.mark.parametrize(("space", "says"), [
    ({"stages.0.optimizr.lr": {"low": 1e-4, "high": 1e-3}}, "unknown key 'optimizr'"),
    ({"stages.3.optimizer.lr": {"low": 1e-4, "high": 1e-3}}, "'3' is not an index of a list of 1"),
    ({"stages.0.optimizer.lr": {"low": 1e-3, "high": 1e-4}}, "low (0.001) must be below high (0.0001)"),
    ({"stages.0.optimizer.lr": {"low": 0, "high": 1e-4}}, "low 0"),
    ("everything", "space 'everything' is no preset; presets: hybrid"),
])
def test_bad_spaces_are_one_line(tiny_model, sentiment_csv, tmp_path, capsys, space, says):
    path = write_recipe(tmp_path / "r.yaml", search_recipe(tiny_model, sentiment_csv, tmp_path, space))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err


def test_the_hybrid_preset_is_valid_for_a_classifier(tiny_model, sentiment_csv, tmp_path, capsys):
    path = write_recipe(tmp_path / "r.yaml", search_recipe(tiny_model, sentiment_csv, tmp_path, "hybrid"))
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err


def test_a_search_writes_best_yaml_which_run_reproduces(tiny_model, sentiment_csv, tmp_path, capsys):
    space = {**LR, "stages.0.select": {"choice": [[{"name": "full"}], [{"name": "layers", "top_k": 1, "head": True}]]}}
    recipe = search_recipe(tiny_model, sentiment_csv, tmp_path, space, confirm={"top": 2, "seeds": 2})
    out = tmp_path / "s"
    assert main(["search", str(write_recipe(tmp_path / "r.yaml", recipe)), "--out", str(out)]) == 0
    summary = json.loads((out / "search.json").read_text())
    assert [t["state"] for t in summary["trials"]] == ["complete", "complete"]
    assert [t["steps"] for t in summary["trials"]] == [2, 2]  # what pruning would save is counted in these
    assert len(summary["confirm"]) == 2 and all(len(r["values"]) == 2 for r in summary["confirm"])
    assert sorted((out / "trials").iterdir()) == [out / "trials" / "0", out / "trials" / "1"]
    best = yaml.safe_load((out / "best.yaml").read_text())
    chosen = summary["chosen"]["overrides"]
    assert best["stages"][0]["select"] == chosen["stages.0.select"] and "search" not in best
    assert best["stages"][0]["optimizer"]["lr"] == chosen["stages.0.optimizer.lr"]
    assert best["data"]["train"] == str(sentiment_csv)  # the recipe's own data, not the inner split
    assert main(["run", str(out / "best.yaml"), "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())["metrics"]
    assert again == pytest.approx(summary["final"]["metrics"])
    page = (out / "report.html").read_text()
    assert "Optimisation history" in page and "data:image/png;base64," in page and "Confirmation" in page
    assert "| trial | state | accuracy |" in (out / "report.md").read_text()


def test_pruning_judges_the_last_training_stage_at_its_own_steps():
    """LP-FT's linear probe scores low at step 50 by design: judged there, every two-stage trial
    would be pruned in its first stage. Only the last stage's evaluations reach the pruner."""
    from hybridft.search.engine import last_training_stage
    from hybridft.search.trial import Pruning
    from hybridft.training.hooks import EvaluationView, Stop

    class Trial:
        def __init__(self):
            self.reported = []

        def report(self, value, step):
            self.reported.append((value, step))

        def should_prune(self):
            return bool(self.reported)

    def evaluation(stage_index, step, global_step, accuracy):
        return EvaluationView(stage=f"s{stage_index}", stage_index=stage_index, step=step, global_step=global_step,
                              metric="accuracy", value=accuracy, metrics={"accuracy": accuracy}, best=accuracy,
                              best_step=step, improved=True)

    stages = [{"name": "probe"}, {"name": "finetune"}, {"name": "mix", "mix": {}}]
    pruning = Pruning(Trial(), "accuracy", last_training_stage({"stages": stages}))
    assert pruning.on_evaluate(evaluation(0, 50, 50, 0.55)) is None and not pruning.trial.reported
    assert isinstance(pruning.on_evaluate(evaluation(1, 50, 150, 0.80)), Stop)
    assert pruning.trial.reported == [(0.80, 50)] and pruning.pruned_at == 150


def test_the_validation_set_never_reaches_the_search(tiny_model, sentiment_csv, tmp_path):
    """Shuffling the recipe's validation labels changes no trial's score and not the choice: only
    the final run of the chosen configuration reads them."""
    import csv
    import random

    from .conftest import sentiment_rows

    summaries = []
    for shuffled in (False, True):
        rows = sentiment_rows(40, seed=7)
        labels = [label for _, label in rows]
        if shuffled:
            random.Random(0).shuffle(labels)
        validation = tmp_path / f"validation-{shuffled}.csv"
        with open(validation, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("text", "label"), *((t, lab) for (t, _), lab in zip(rows, labels, strict=True))])
        recipe = search_recipe(tiny_model, sentiment_csv, tmp_path)
        recipe["data"]["validation"] = str(validation)
        out = tmp_path / f"s-{shuffled}"
        assert main(["search", str(write_recipe(tmp_path / "r.yaml", recipe)), "--out", str(out)]) == 0
        summaries.append(json.loads((out / "search.json").read_text()))
    plain, shuffled = summaries
    assert [t["value"] for t in plain["trials"]] == [t["value"] for t in shuffled["trials"]]
    assert [t["params"] for t in plain["trials"]] == [t["params"] for t in shuffled["trials"]]
    assert plain["chosen"] == shuffled["chosen"]
    assert plain["final"]["metrics"] != shuffled["final"]["metrics"]  # the final run does read them


def test_a_failed_trial_is_recorded_with_its_reason_and_the_search_goes_on(tiny_model, sentiment_csv, tmp_path):
    # a layer the model lacks passes the schema and fails when the trial's model is built
    recipe = search_recipe(tiny_model, sentiment_csv, tmp_path, trials=2)
    recipe["stages"][0]["select"] = [{"name": "layers", "indices": [7]}]  # the tiny model has 2 layers
    out = tmp_path / "s"
    assert main(["search", str(write_recipe(tmp_path / "r.yaml", recipe)), "--out", str(out)]) == 2
    summary = json.loads((out / "search.json").read_text())
    assert [t["state"] for t in summary["trials"]] == ["fail", "fail"]
    assert all(t["failure"] and "\n" not in t["failure"] for t in summary["trials"])


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_workers_on_one_storage_run_n_trials_in_all(tiny_model, sentiment_csv, tmp_path, kind):
    import subprocess
    import sys

    from hybridft.search.study import open_storage

    recipe = write_recipe(tmp_path / "r.yaml", search_recipe(tiny_model, sentiment_csv, tmp_path, trials=3))
    out = tmp_path / "s"
    storage = f"sqlite:///{tmp_path / 'shared.db'}" if kind == "sqlite" else str(tmp_path / "shared.journal")
    command = [sys.executable, "-m", "hybridft", "search", str(recipe), "--out", str(out), "--storage", storage,
               "--study", "shared"]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(w.wait(timeout=600), w.stderr.read()) for w in workers]
    assert all(code == 0 for code, _ in results), results
    import optuna

    trials = optuna.load_study(study_name="shared", storage=open_storage(storage, out)).get_trials()
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(done) == 3 and all("metrics" in t.user_attrs for t in done)
    assert len({t.number for t in done}) == 3 and all(t.state.name != "RUNNING" for t in trials)
    assert sorted(p.name for p in (out / "trials").iterdir()) == sorted(str(t.number) for t in done)
    assert (out / "best.yaml").is_file() and not (out / "finishing.lock").exists()
    assert sum("chosen: trial" in err for _, err in results) == 1


def test_kill_9_then_resume_completes_the_study(tiny_model, sentiment_csv, tmp_path, capsys):
    import signal
    import subprocess
    import sys
    import time

    import optuna

    recipe = write_recipe(tmp_path / "r.yaml", search_recipe(tiny_model, sentiment_csv, tmp_path, trials=3))
    out = tmp_path / "s"
    worker = subprocess.Popen([sys.executable, "-m", "hybridft", "search", str(recipe), "--out", str(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "trials" / "1").is_dir() and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # killed as its second trial starts: the first finished, one is left running
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert main(["search", str(recipe), "--out", str(out)]) == 2
    assert "continue it with --resume" in capsys.readouterr().err
    assert main(["search", str(recipe), "--out", str(out), "--resume"]) == 0
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}").get_trials()
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3 and all(t.state.name != "RUNNING" for t in trials)
    interrupted = [t for t in trials if t.user_attrs.get("interrupted")]
    reruns = [t for t in trials if "rerun_of" in t.user_attrs]
    assert [t.number for t in interrupted] == [t.user_attrs["rerun_of"] for t in reruns]
    assert all(r.params == trials[r.user_attrs["rerun_of"]].params for r in reruns)
    assert (out / "best.yaml").is_file()
