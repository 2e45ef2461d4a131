"""Experiment trackers (the recipe's ``report_to``): TensorBoard, MLflow, Weights & Biases, each through
its own library. Each receives the resolved recipe as parameters (flattened: ``stages.0.optimizer.lr``),
every record of ``metrics.jsonl`` (training steps and evaluations, by global step), the final metrics
and the report's files as artifacts. Only the main process creates them (``parallel.launch``).

Where each writes is set the way its library sets it, by its own environment variables: MLflow's
``MLFLOW_TRACKING_URI`` (MLflow's default: ``sqlite:///mlflow.db`` in the working folder) and
``MLFLOW_EXPERIMENT_NAME`` (default: the recipe's name); W&B's ``WANDB_PROJECT`` (default: the
recipe's name), ``WANDB_MODE=offline`` and the rest. Nothing here sets a library's global state:
MLflow is written through an ``MlflowClient`` of its own, W&B's run is finished at the end. A resumed
run goes on in the MLflow and W&B runs it started (their ids in the run folder's ``trackers.json``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from pathlib import Path

import yaml

from ..errors import HybridftError

PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
IDS_FILE = "trackers.json"  # each tracker's run id, so that a resumed run goes on in the same tracker run


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def check_trackers(names) -> list[str]:
    """A problem line for each tracker whose library is not installed (checked before anything is written)."""
    return [f"report_to: {name} needs the {PACKAGES[name]} package, which is not installed: pip install "
            f"{PACKAGES[name]} (or pip install 'hybridft[track]')"
            for name in names if not installed(PACKAGES[name])]


def flat_params(value, prefix: str = "") -> dict[str, str]:
    """The resolved recipe as flat ``key.path: text`` parameters."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {prefix: json.dumps(value) if not isinstance(value, str) else value}
    out = {}
    for key, inner in items:
        out.update(flat_params(inner, f"{prefix}.{key}" if prefix else str(key)))
    return out


def finite_scalars(values: dict) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class TensorBoard:
    """``<run folder>/tensorboard``: the curves, the recipe and the report as text."""

    run_id = None  # the folder is the run: a resumed run appends to it

    def __init__(self, run_dir: Path, name: str, recipe_text: str, resumed_id: str | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        self.writer.add_text("recipe", "```yaml\n" + recipe_text + "```")

    def log(self, scalars: dict, step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def log_files(self, files: list[Path]) -> None:
        for file in files:
            if file.suffix == ".md":
                self.writer.add_text(file.stem, file.read_text(encoding="utf-8"))

    def finish(self, status: str) -> None:
        self.writer.close()


class MLflow:
    """One MLflow run per hybridft run (named as the run folder), through a client of its own."""

    FLUSH_EVERY_S = 5.0  # metrics are sent in batches: one database write per step would slow short steps

    def __init__(self, run_dir: Path, name: str, recipe_text: str, resumed_id: str | None = None):
        from mlflow import MlflowClient

        self.client = MlflowClient()  # MLFLOW_TRACKING_URI, else MLflow's default
        self.pending, self.flushed = [], time.monotonic()
        if resumed_id is not None:  # a resumed run goes on in its MLflow run (its parameters are there)
            self.run_id = resumed_id
            self.client.update_run(resumed_id, status="RUNNING")
            return
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or name
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name,
                                             tags={"hybridft.run_dir": str(run_dir.resolve())}).info.run_id
        self.log_params(recipe_text)

    def log_params(self, recipe_text: str) -> None:
        from mlflow.entities import Param

        params = [Param(k[:250], v[:6000]) for k, v in flat_params(yaml.safe_load(recipe_text)).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, scalars: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(key, value, now, step) for key, value in scalars.items()]
        if time.monotonic() - self.flushed > self.FLUSH_EVERY_S or len(self.pending) >= 1000:
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self.pending), 1000):
            self.client.log_batch(self.run_id, metrics=self.pending[i:i + 1000])
        self.pending, self.flushed = [], time.monotonic()

    def log_files(self, files: list[Path]) -> None:
        self.flush()
        for file in files:
            self.client.log_artifact(self.run_id, str(file))

    def finish(self, status: str) -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status=status)


class WandB:
    """One W&B run per hybridft run; ``WANDB_MODE=offline`` writes it under ``<run folder>/wandb``."""

    def __init__(self, run_dir: Path, name: str, recipe_text: str, resumed_id: str | None = None):
        import wandb

        self.wandb = wandb
        # create_new: a run of its own, leaving wandb.run (the caller's, if any) as it is; a resumed
        # hybridft run goes on in the W&B run it started
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or name, name=run_dir.name, dir=str(run_dir),
                              config=yaml.safe_load(recipe_text), reinit="create_new", id=resumed_id,
                              resume="allow" if resumed_id else None)
        self.run_id = self.run.id

    def log(self, scalars: dict, step: int) -> None:
        self.run.log(scalars, step=step)

    def log_files(self, files: list[Path]) -> None:
        artifact = self.wandb.Artifact(f"report-{self.run.id}", type="report")
        for file in files:
            artifact.add_file(str(file))
        self.run.log_artifact(artifact)

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


TRACKERS = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB}


class Trackers:
    """The recipe's trackers, for the main process; every call goes to each of them."""

    def __init__(self, names, run_dir: Path, name: str, recipe_text: str):
        """``recipe_text``: the resolved recipe (the run folder's recipe.yaml)."""
        problems = check_trackers(names)
        if problems:
            raise HybridftError("; ".join(problems))
        self.trackers = []
        ids_file = Path(run_dir) / IDS_FILE
        started = json.loads(ids_file.read_text()) if ids_file.is_file() else {}  # there: a resumed run
        for tracker in names:
            try:
                self.trackers.append(TRACKERS[tracker](Path(run_dir), name, recipe_text, started.get(tracker)))
            except Exception as e:  # a tracking server out of reach, a bad MLFLOW_TRACKING_URI...
                self.finish("FAILED")
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise HybridftError(f"report_to: {tracker} could not start ({first}); the run folder is left for "
                                    "--resume once it can") from None
        ids = {tracker: t.run_id for tracker, t in zip(names, self.trackers, strict=True) if t.run_id is not None}
        if ids:  # TensorBoard's run is its folder: no id to keep
            ids_file.write_text(json.dumps({**started, **ids}))

    def log(self, values: dict, step: int) -> None:
        scalars = finite_scalars(values)
        for tracker in self.trackers:
            tracker.log(scalars, step)

    def log_report(self, report: dict, files: list[Path], step: int) -> None:
        """The final metrics (``final/<metric>``, ``test/<metric>``) and the report's files."""
        final = {**{f"final/{k}": v for k, v in (report.get("metrics") or {}).items()},
                 **{f"test/{k}": v for k, v in (report.get("test_metrics") or {}).items()}}
        self.log(final, step)
        for tracker in self.trackers:
            tracker.log_files([f for f in files if f.is_file()])

    def finish(self, status: str) -> None:
        """FINISHED, FAILED or KILLED; each tracker once."""
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.finish(status)
