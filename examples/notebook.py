# %% [markdown]
# # hybridft from a notebook
#
# Runs top to bottom as a script (`python examples/notebook.py`, about a minute on two CPU cores) or
# cell by cell (`# %%` cells: VS Code, Jupytext). It fine-tunes the embedded MiniLM on a small
# DataFrame, with two callbacks (one records every evaluation, one stops the run once it is good
# enough), logs to MLflow and reads the run back, then uses the trained model straight from memory.
# Everything is written under one new temporary folder (or `$NOTEBOOK_DIR`).

# %%
import os
import tempfile
from pathlib import Path

import pandas as pd

import hybridft

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path("examples").resolve()
work = Path(os.environ.get("NOTEBOOK_DIR") or tempfile.mkdtemp(prefix="hybridft-notebook-"))
print("writing under", work)

# %% [markdown]
# ## Data you already hold
# A DataFrame stands wherever a recipe names a data file (so do a list of dicts and a
# `datasets.Dataset`). The run folder's `recipe.yaml` records it as
# `<in memory: DataFrame, 240 rows, sha256:...>`.

# %%
reviews = pd.read_csv(HERE / "sentiment.csv")
train, test = reviews.iloc[:240], reviews.iloc[240:320]
print(train.head(3))

# %% [markdown]
# ## Callbacks
# A callback sees frozen views of the run's state; returning `hybridft.Stop("why")` ends the run as
# early stopping would (best weights kept, checkpointed, evaluated and reported).


# %%
class EvaluationLog(hybridft.Callback):
    """Records every evaluation."""

    def __init__(self):
        self.rows = []

    def on_evaluate(self, evaluation):
        self.rows.append({"step": evaluation.step, **evaluation.metrics})


class StopWhenAccurate(hybridft.Callback):
    """Stops the run once validation accuracy reaches a target."""

    def __init__(self, target: float):
        self.target = target

    def on_evaluate(self, evaluation):
        if evaluation.metrics["accuracy"] >= self.target:
            return hybridft.Stop(f"accuracy {evaluation.metrics['accuracy']:.3f} reached {self.target} at step "
                                 f"{evaluation.step}")
        return None


# %% [markdown]
# ## MLflow
# hybridft reads MLflow's own settings. Here: a local store in the working folder, and an
# experiment whose artifacts stay there too (MLflow would put them under ./mlruns).

# %%
from mlflow import MlflowClient  # noqa: E402  (a notebook imports where it first needs something)

os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
os.environ["MLFLOW_EXPERIMENT_NAME"] = "notebook"
if MlflowClient().get_experiment_by_name("notebook") is None:
    MlflowClient().create_experiment("notebook", artifact_location=(work / "mlruns").as_uri())

# %% [markdown]
# ## Train

# %%
recipe = {
    "name": "notebook",
    "model": {"max_length": 32},  # no model.name: the embedded all-MiniLM-L6-v2
    "data": {"train": train},  # no validation: 10% of train is split off
    "stages": [{"name": "finetune", "optimizer": {"lr": 5e-4}, "batch_size": 16, "max_steps": 30,
                "eval_every": 5}],
}
evaluations, stopper = EvaluationLog(), StopWhenAccurate(0.7)
result = hybridft.run(recipe, out=work / "run", progress=False, callbacks=[evaluations, stopper],
                      report_to=["mlflow", "tensorboard"])
stage = result.report["stages"][0]
print(pd.DataFrame(evaluations.rows))
print(f"{stage['steps']} steps;", stage.get("stop_requested", "no callback stopped the run"))

# %% [markdown]
# ## The run in MLflow

# %%
import mlflow  # noqa: E402

runs = mlflow.search_runs(experiment_names=["notebook"])
print(runs[["tags.mlflow.runName", "status", "metrics.final/accuracy", "params.stages.0.optimizer.lr"]].to_string())

# %% [markdown]
# ## The model, in memory
# `result.model` is the trained model and its tokenizer (also with `output.save_model: false`).

# %%
model = result.model
for record in model.predict(["a wonderful, moving film", "the battery died after a day"], probabilities=True):
    print(record["label"], {label: round(p, 3) for label, p in record["probabilities"].items()}, record["text"])
test_metrics = model.evaluate(test)  # what `hybridft eval` prints, on rows held in memory
print(f"held-out accuracy: {test_metrics['accuracy']:.3f} on {len(test)} reviews")
