"""The Python API as a notebook uses it (issue 34): the trained model in memory, data held in memory,
callbacks, experiment trackers, and SavedModel's evaluate / probabilities / .to(device)."""

from __future__ import annotations

import pytest

import hybridft
from hybridft.errors import HybridftError

from .conftest import base_recipe

TEXTS = ["the film was good", "a boring plot", "great acting"]


# --- the model in memory --------------------------------------------------------------------------------------

def test_the_trained_model_is_in_memory_and_predicts_as_its_saved_folder(tiny_model, sentiment_csv, tmp_path):
    result = hybridft.run(base_recipe(tiny_model, sentiment_csv, max_steps=3), out=tmp_path / "run", progress=False)
    in_memory = result.model
    assert isinstance(in_memory, hybridft.SavedModel) and in_memory.labels == ["negative", "positive"]
    assert not in_memory.model.training  # ready to predict: eval mode, as load gives a folder
    saved = hybridft.load(result.model_dir)
    assert in_memory.meta == saved.meta and in_memory.task == saved.task
    mine, theirs = in_memory.predict(TEXTS), saved.predict(TEXTS)
    assert [r["label"] for r in mine] == [r["label"] for r in theirs]
    assert [r["score"] for r in mine] == pytest.approx([r["score"] for r in theirs], abs=1e-4)


def test_the_model_is_in_memory_without_a_saved_folder(tiny_model, sentiment_csv, tmp_path):
    recipe = {**base_recipe(tiny_model, sentiment_csv, max_steps=2), "output": {"save_model": False}}
    result = hybridft.run(recipe, out=tmp_path / "run", progress=False)
    assert result.model_dir is None
    records = result.model.predict(TEXTS)
    assert [r["text"] for r in records] == TEXTS and all(r["label"] in ("negative", "positive") for r in records)


def test_a_run_found_complete_reads_its_model_folder(tiny_model, sentiment_csv, tmp_path):
    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=1)
    first = hybridft.run(recipe, out=tmp_path / "run", progress=False)
    again = hybridft.run(recipe, out=tmp_path / "run", resume=True, progress=False)
    assert again.already_complete
    assert again.model.predict(TEXTS) == hybridft.load(first.model_dir).predict(TEXTS)


# --- data held in memory --------------------------------------------------------------------------------------

def sentiment_frame(n: int = 80, seed: int = 0):
    import pandas as pd

    from .conftest import sentiment_rows

    return pd.DataFrame(sentiment_rows(n, seed), columns=["text", "label"])


def in_memory_recipe(tiny_model, train, **data) -> dict:
    return {"name": "mem", "model": {"name": str(tiny_model), "max_length": 32}, "data": {"train": train, **data},
            "stages": [{"optimizer": {"lr": 1e-3}, "batch_size": 8, "max_steps": 3}]}


def test_a_dataframe_trains_as_the_same_rows_in_a_file(tiny_model, sentiment_csv, tmp_path):
    from safetensors.torch import load_file

    frame = sentiment_frame()
    memory = hybridft.run(in_memory_recipe(tiny_model, frame), out=tmp_path / "memory", progress=False)
    on_disk = hybridft.run(in_memory_recipe(tiny_model, str(sentiment_csv)), out=tmp_path / "file", progress=False)
    assert memory.metrics == on_disk.metrics and memory.report["data"] == on_disk.report["data"]
    weights = [load_file(r.model_dir / "model.safetensors") for r in (memory, on_disk)]
    assert all(torch_equal(weights[0][k], weights[1][k]) for k in weights[0])
    # the run folder says where the data came from: memory, and which rows (their hash)
    written = (tmp_path / "memory" / "recipe.yaml").read_text()
    assert "train: '<in memory: DataFrame, 80 rows, sha256:" in written
    frame.loc[0, "text"] = "changed"  # the run held its own copy
    assert hybridft.validate(in_memory_recipe(tiny_model, frame)).data.train != memory_train(tmp_path / "memory")


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def memory_train(run_dir) -> str:
    import yaml

    return yaml.safe_load((run_dir / "recipe.yaml").read_text())["data"]["train"]


def test_every_data_place_takes_a_dataframe_a_list_of_dicts_or_a_dataset(tiny_model, tmp_path):
    import datasets

    train = sentiment_frame(60)
    validation = sentiment_frame(20, seed=1).to_dict("records")  # a list of dicts
    test = datasets.Dataset.from_pandas(sentiment_frame(16, seed=2))
    unlabeled = sentiment_frame(30, seed=3)[["text"]]
    recipe = hybridft.Recipe(**in_memory_recipe(tiny_model, train, validation=validation, test=test,
                                                unlabeled={"path": unlabeled}))
    assert recipe.data.validation.startswith("<in memory: list, 20 rows, sha256:")
    assert recipe.data.test.startswith("<in memory: Dataset, 16 rows, sha256:")
    assert recipe.data.unlabeled.path.startswith("<in memory: DataFrame, 30 rows, sha256:")
    result = hybridft.run(recipe, out=tmp_path / "run", progress=False)
    assert result.report["data"]["rows_used"] == {"train": 60, "validation": 20, "test": 16}
    assert result.report["data"]["unlabeled"]["rows_read"] == 30 and result.test_metrics is not None


def test_each_task_of_a_multi_task_recipe_takes_data_in_memory(tiny_model, tmp_path):
    tokens = [{"tokens": ["john", "went", "to", "paris"], "tags": ["I-PER", "O", "O", "I-LOC"]},
              {"tokens": ["paris", "and", "london"], "tags": ["I-LOC", "O", "I-LOC"]}] * 5
    recipe = {"name": "mt", "task": "multi_task", "model": {"name": str(tiny_model), "max_length": 32},
              "tasks": [{"name": "sentiment", "task": "classification", "data": {"train": sentiment_frame(40)}},
                        {"name": "ner", "task": "token_classification", "data": {"train": tokens,
                                                                                  "validation": tokens}}],
              "stages": [{"batch_size": 4, "max_steps": 2}]}
    result = hybridft.run(recipe, out=tmp_path / "run", progress=False)
    assert {"sentiment/accuracy", "ner/entity_f1"} <= set(result.metrics)
    assert set(result.model) == {"sentiment", "ner"}  # the model in memory, by task
    assert result.model["ner"].predict("john went to paris")[0]["tags"][0] in result.model["ner"].labels


def test_keyword_overrides_take_a_dataframe_too(tiny_model, sentiment_csv, tmp_path):
    from .conftest import write_recipe

    path = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, sentiment_csv, max_steps=1))
    result = hybridft.run(path, out=tmp_path / "run", data__train=sentiment_frame(40), progress=False)
    assert result.report["data"]["train"]["rows_read"] == 40
    assert memory_train(tmp_path / "run").startswith("<in memory: DataFrame, 40 rows")


@pytest.mark.parametrize(("train", "message"), [
    ("no_label", r"train data <in memory: DataFrame, 80 rows, sha256:[0-9a-f]{16}>: no column 'label'; columns are "
                 r"text, sentiment"),
    ("strings", r"data.train: a list of rows holds one dict per row \(column: value\); item 0 is a str"),
    ("empty", r"data.train: the list of rows is empty"),
    ("splits", r"data.train: a DatasetDict holds several splits; give one of them \(e.g. dataset\['train'\]\)"),
])
def test_bad_data_in_memory_is_one_line(tiny_model, tmp_path, train, message):
    import datasets

    frame = sentiment_frame()
    train = {"no_label": frame.rename(columns={"label": "sentiment"}), "strings": ["a film", "a plot"], "empty": [],
             "splits": datasets.DatasetDict({"train": datasets.Dataset.from_pandas(frame)})}[train]
    with pytest.raises(HybridftError, match=message) as caught:
        hybridft.run(in_memory_recipe(tiny_model, train), out=tmp_path / "run", progress=False)
    assert "\n" not in str(caught.value) and not (tmp_path / "run").exists()


def test_a_recipe_naming_data_held_by_another_process_is_refused_in_one_line(tiny_model, tmp_path):
    held_elsewhere = "<in memory: DataFrame, 80 rows, sha256:0123456789abcdef>"
    with pytest.raises(HybridftError, match=r"data.train: <in memory: DataFrame, 80 rows, sha256:0123456789abcdef>: "
                                            r"this data was passed in memory to another process"):
        hybridft.validate(in_memory_recipe(tiny_model, held_elsewhere))


# --- callbacks ------------------------------------------------------------------------------------------------

class Recorder(hybridft.Callback):
    def __init__(self):
        self.steps, self.evaluations, self.stages = [], [], []

    def on_step(self, step):
        self.steps.append(step)

    def on_evaluate(self, evaluation):
        self.evaluations.append(evaluation)

    def on_stage_end(self, stage):
        self.stages.append(stage)


def test_callbacks_see_every_step_evaluation_and_stage_end_through_frozen_views(tiny_model, sentiment_csv, tmp_path):
    import dataclasses

    recorder = Recorder()
    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=4, eval_every=2)
    result = hybridft.run(recipe, out=tmp_path / "run", progress=False, callbacks=[recorder])
    assert [s.step for s in recorder.steps] == [1, 2, 3, 4] and recorder.steps[-1].total_steps == 4
    assert all(s.stage == "s0" and s.loss == pytest.approx(s.losses["task"]) for s in recorder.steps)
    assert recorder.steps[0].lr > recorder.steps[-1].lr  # the schedule decays
    history = result.report["stages"][0]["evaluations"]  # what the report shows is what the callback saw
    assert [(e.step, dict(e.metrics)) for e in recorder.evaluations] == \
        [(h["step"], {k: v for k, v in h.items() if k != "step"}) for h in history]
    assert recorder.evaluations[0].metric == "accuracy" and recorder.evaluations[0].improved
    (end,) = recorder.stages
    assert end.steps == 4 and not end.stopped_early and end.report["steps"] == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        recorder.steps[0].loss = 0.0
    with pytest.raises(TypeError):
        recorder.evaluations[0].metrics["accuracy"] = 1.0
    with pytest.raises(TypeError):
        end.report["evaluations"][0]["accuracy"] = 1.0


class StopAtStep(hybridft.Callback):
    def __init__(self, step):
        self.step = step

    def on_step(self, step):
        return hybridft.Stop(f"enough at step {step.step}") if step.step == self.step else None


def test_a_callback_stops_the_run_as_early_stopping_ends_a_stage(tiny_model, sentiment_csv, tmp_path):
    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=6, eval_every=1)
    recipe["stages"].append({"name": "s1", "max_steps": 3, "batch_size": 8})
    recipe["output"] = {"keep_checkpoints_after_run": True}
    recorder = Recorder()
    result = hybridft.run(recipe, out=tmp_path / "run", progress=False, callbacks=[StopAtStep(2), recorder])
    (stage,) = result.report["stages"]  # no later stage ran
    assert stage["steps"] == 2 and stage["stopped_early"] and stage["stop_requested"] == "enough at step 2"
    assert [e.step for e in recorder.evaluations] == [1, 2] and recorder.stages[0].stopped_early
    # ended as a finished run: checkpointed after the stage, evaluated, saved and reported
    assert (tmp_path / "run" / "checkpoints" / "stage-0-done").is_dir()
    assert (tmp_path / "run" / "report.json").is_file() and result.model_dir is not None
    assert result.model.predict(TEXTS)[0]["label"] in ("negative", "positive")


class Answers:
    def on_evaluate(self, evaluation):
        return 3


@pytest.mark.parametrize(("callbacks", "message"), [
    ([object()], r"callbacks\[0\]: a object has none of the methods on_step, on_evaluate, on_stage_end"),
    (Recorder(), r"callbacks: give a list of callbacks, not Recorder"),
    ([Answers()], r"callbacks: Answers.on_evaluate returned 3; return None to go on, or hybridft.Stop\('why'\)"),
])
def test_bad_callbacks_are_one_line(tiny_model, sentiment_csv, tmp_path, callbacks, message):
    with pytest.raises(HybridftError, match=message) as caught:
        hybridft.run(base_recipe(tiny_model, sentiment_csv, max_steps=1), out=tmp_path / "run", progress=False,
                     callbacks=callbacks)
    assert "\n" not in str(caught.value)


# --- experiment trackers (report_to) ----------------------------------------------------------------------------

@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """MLflow's local store in the test's folder (its default is ./mlflow.db, with artifacts in ./mlruns)."""
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_mlflow_receives_the_recipe_every_step_and_evaluation_and_the_report(tiny_model, sentiment_csv, tmp_path,
                                                                             mlflow_store):
    import mlflow
    from mlflow import MlflowClient

    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=4, eval_every=2)
    result = hybridft.run(recipe, out=tmp_path / "run", progress=False, report_to=["mlflow"])
    assert "report_to:\n- mlflow" in (tmp_path / "run" / "recipe.yaml").read_text()
    assert not (tmp_path / "run" / "tensorboard").exists()  # only the trackers asked for
    runs = mlflow.search_runs(experiment_names=["tiny"])  # the recipe's name
    (found,) = runs.itertuples()
    run = MlflowClient(mlflow_store).get_run(found.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["stages.0.max_steps"] == "4" and run.data.params["model.max_length"] == "32"
    assert run.data.params["data.train"] == str(sentiment_csv)
    client = MlflowClient(mlflow_store)
    assert [m.step for m in client.get_metric_history(found.run_id, "loss")] == [1, 2, 3, 4]
    evaluations = result.report["stages"][0]["evaluations"]
    assert [(m.step, m.value) for m in client.get_metric_history(found.run_id, "eval/accuracy")] == \
        [(e["step"], pytest.approx(e["accuracy"])) for e in evaluations]
    assert run.data.metrics["final/accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert {a.path for a in client.list_artifacts(found.run_id)} >= {"report.json", "report.md", "recipe.yaml"}


def test_a_run_that_fails_is_marked_failed_in_mlflow(tiny_model, sentiment_csv, tmp_path, mlflow_store):
    import mlflow

    class Fails(hybridft.Callback):
        def on_step(self, step):
            raise RuntimeError("a broken callback")

    with pytest.raises(RuntimeError, match="a broken callback"):
        hybridft.run(base_recipe(tiny_model, sentiment_csv, max_steps=2), out=tmp_path / "run", progress=False,
                     report_to="mlflow", callbacks=[Fails()])
    assert list(mlflow.search_runs(experiment_names=["tiny"])["status"]) == ["FAILED"]


def stopped_at_step_3_then_resumed(tiny_model, train, out, tracker: str) -> dict:
    """A 4-step run with ``tracker``, stopped by an error at step 3 (after its step-2 checkpoint),
    then resumed to the end; returns its recipe."""

    class StopsAtThree(hybridft.Callback):
        def on_step(self, step):
            if step.step == 3:
                raise RuntimeError("stopped at step 3")

    recipe = {**base_recipe(tiny_model, train, max_steps=4), "output": {"checkpoint_every": 2}}
    with pytest.raises(RuntimeError, match="stopped at step 3"):
        hybridft.run(recipe, out=out, progress=False, report_to=tracker, callbacks=[StopsAtThree()])
    hybridft.run(recipe, out=out, resume=True, progress=False, report_to=tracker)
    return recipe


def test_a_resumed_run_goes_on_in_the_mlflow_run_it_started(tiny_model, sentiment_csv, tmp_path, mlflow_store):
    import mlflow
    from mlflow import MlflowClient

    recipe = stopped_at_step_3_then_resumed(tiny_model, sentiment_csv, tmp_path / "run", "mlflow")
    (found,) = mlflow.search_runs(experiment_names=["tiny"]).itertuples()  # one MLflow run, not two
    assert found.status == "FINISHED"
    history = MlflowClient(mlflow_store).get_metric_history(found.run_id, "loss")
    assert {m.step for m in history} == {1, 2, 3, 4}  # steps 3 and 4 again after the resume, in the same run
    hybridft.run(recipe, out=tmp_path / "run", overwrite=True, progress=False, report_to="mlflow")
    assert len(mlflow.search_runs(experiment_names=["tiny"])) == 2  # a replaced run is a new MLflow run


def test_wandb_offline_receives_the_run(tiny_model, sentiment_csv, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = hybridft.run(base_recipe(tiny_model, sentiment_csv, max_steps=2), out=tmp_path / "run",
                          progress=False, report_to=["wandb", "tensorboard"])
    assert result.report["stages"][0]["steps"] == 2
    (offline,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    assert list(offline.glob("*.wandb")) and list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents*"))


def test_a_resumed_run_goes_on_in_the_wandb_run_it_started(tiny_model, sentiment_csv, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")

    stopped_at_step_3_then_resumed(tiny_model, sentiment_csv, tmp_path / "run", "wandb")
    folders = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    # offline-run-<date>_<time>-<run id>[-<n> when two start in the same second]: one W&B run id
    assert len(folders) == 2 and len({f.name.split("-")[3] for f in folders}) == 1


def test_a_tracker_whose_library_is_missing_is_one_line_naming_the_package(tiny_model, sentiment_csv, tmp_path,
                                                                          monkeypatch):
    from hybridft.training import tracking

    monkeypatch.setattr(tracking, "installed", lambda package: package != "mlflow")
    recipe = {**base_recipe(tiny_model, sentiment_csv, max_steps=1), "report_to": ["tensorboard", "mlflow"]}
    message = r"report_to: mlflow needs the mlflow package, which is not installed: pip install mlflow"
    with pytest.raises(HybridftError, match=message):
        hybridft.run(recipe, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(HybridftError, match=message):
        hybridft.validate(recipe)


def test_report_to_is_checked_by_the_schema(tiny_model, sentiment_csv):
    recipe = base_recipe(tiny_model, sentiment_csv)
    assert hybridft.Recipe(**recipe).report_to == ["tensorboard"]  # today's default
    assert hybridft.Recipe(**{**recipe, "report_to": "mlflow"}).report_to == ["mlflow"]
    assert hybridft.Recipe(**{**recipe, "report_to": []}).report_to == []
    with pytest.raises(HybridftError, match="report_to.0"):
        hybridft.validate({**recipe, "report_to": ["comet"]})
    with pytest.raises(HybridftError, match="report_to names a tracker twice"):
        hybridft.validate({**recipe, "report_to": ["mlflow", "mlflow"]})


def test_only_the_main_process_opens_trackers(tmp_path):
    from types import SimpleNamespace

    from hybridft.training.parallel import SingleProcess

    other = SingleProcess(SimpleNamespace(is_main_process=False))
    other.start_tracking(["tensorboard"], tmp_path, "tiny", "name: tiny\n")
    other.track({"loss": 1.0}, 1)
    assert other.trackers is None and not (tmp_path / "tensorboard").exists()


# --- SavedModel: evaluate, probabilities and logits, .to(device) ----------------------------------------------

@pytest.fixture
def trained(tiny_model, sentiment_csv, tmp_path):
    return hybridft.run(base_recipe(tiny_model, sentiment_csv, max_steps=3), out=tmp_path / "run", progress=False)


def test_evaluate_returns_what_hybridft_eval_prints_for_a_file_or_a_table(trained, sentiment_csv, capsys):
    import json

    from hybridft.cli import main

    assert main(["eval", str(trained.model_dir), str(sentiment_csv)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert trained.model.evaluate(sentiment_csv) == printed
    assert trained.model.evaluate(sentiment_frame()) == printed  # the same rows, held in memory
    assert hybridft.load(trained.model_dir).evaluate(str(sentiment_csv)) == printed
    frame = sentiment_frame().rename(columns={"text": "sentence", "label": "gold"})
    assert trained.model.evaluate(frame, text_column="sentence", label_column="gold") == printed


def test_evaluate_refuses_bad_data_in_one_line(trained):
    with pytest.raises(HybridftError, match=r"no column 'label'; columns are text, sentiment"):
        trained.model.evaluate(sentiment_frame().rename(columns={"label": "sentiment"}))
    with pytest.raises(HybridftError, match="data: give a file's path, a DataFrame, a list of dicts or a "
                                            "datasets.Dataset, not int"):
        trained.model.evaluate(3)


def test_predict_gives_probabilities_and_logits_on_request(trained):
    import math

    plain = trained.model.predict(TEXTS)
    assert all(set(r) == {"text", "label", "score"} for r in plain)  # as before unless asked
    full = trained.model.predict(TEXTS, probabilities=True, logits=True)
    for record, before in zip(full, plain, strict=True):
        probs = record["probabilities"]
        assert list(probs) == trained.model.labels and sum(probs.values()) == pytest.approx(1.0)
        assert record["label"] == max(probs, key=probs.get) == before["label"]
        assert record["score"] == round(probs[record["label"]], 4) == before["score"]
        exp = [math.exp(x) for x in record["logits"]]
        assert [e / sum(exp) for e in exp] == pytest.approx(list(probs.values()))


def test_a_tagger_gives_probabilities_per_word(tiny_model, conll_file, tmp_path):
    recipe = {"name": "ner", "task": "token_classification", "model": {"name": str(tiny_model), "max_length": 32},
              "data": {"train": str(conll_file)}, "stages": [{"batch_size": 4, "max_steps": 1}]}
    model = hybridft.run(recipe, out=tmp_path / "run", progress=False).model
    (record,) = model.predict("john went to paris", probabilities=True)
    assert len(record["probabilities"]) == 4 and "logits" not in record
    assert [max(p, key=p.get) for p in record["probabilities"]] == record["tags"]


def test_to_moves_the_model_where_predict_and_evaluate_run(trained, sentiment_csv):
    import torch

    before = trained.model.predict(TEXTS)
    assert trained.model.to("cpu") is trained.model and trained.model.device == torch.device("cpu")
    assert next(trained.model.model.parameters()).device.type == "cpu"
    assert trained.model.predict(TEXTS) == before
    with pytest.raises(HybridftError, match="cannot move the model to 'nowhere'"):
        trained.model.to("nowhere")
    if not torch.cuda.is_available():
        with pytest.raises(HybridftError, match="cannot move the model to 'cuda'"):
            trained.model.to("cuda")


# --- examples/notebook.py ---------------------------------------------------------------------------------------

def test_the_notebook_runs_top_to_bottom(tmp_path, monkeypatch, capsys):
    """The example notebook on the embedded MiniLM: data as a DataFrame, callbacks (one records every
    evaluation, one stops the run at a target), MLflow read back, the model in memory."""
    import runpy
    from pathlib import Path

    pytest.importorskip("mlflow")
    monkeypatch.setenv("NOTEBOOK_DIR", str(tmp_path))
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):  # the notebook sets them; restored after
        monkeypatch.setenv(name, "")
    monkeypatch.chdir(tmp_path)
    found = runpy.run_path(str(Path(__file__).parents[1] / "examples" / "notebook.py"))
    result, stage = found["result"], found["result"].report["stages"][0]
    assert "train: '<in memory: DataFrame, 240 rows, sha256:" in (tmp_path / "run" / "recipe.yaml").read_text()
    assert [row["step"] for row in found["evaluations"].rows] == [e["step"] for e in stage["evaluations"]]
    reached = [row["step"] for row in found["evaluations"].rows if row["accuracy"] >= 0.7]
    assert stage["stopped_early"] == bool(reached) and stage["steps"] == (reached[0] if reached else 30)
    runs = found["runs"]
    assert list(runs["status"]) == ["FINISHED"] and runs["metrics.final/accuracy"][0] == result.metrics["accuracy"]
    assert 0.0 <= found["test_metrics"]["accuracy"] <= 1.0
    assert "held-out accuracy" in capsys.readouterr().out
