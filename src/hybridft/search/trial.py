"""One trial of a search: a hybridft run scored on its validation metrics, and what may stop it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import HybridftError


class TrialFailed(Exception):
    """A trial that could not finish; its one-line reason is the trial's ``failure`` attribute."""


class Pruning:
    """Feeds each periodic evaluation to Optuna's pruner and stops the run when it says so."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric, self.pruned_at = trial, metric, None

    def on_evaluate(self, evaluation):
        from ..training.hooks import Stop

        value = evaluation.metrics.get(self.metric)
        if value is None:
            return None
        self.trial.report(float(value), step=evaluation.global_step)
        if self.trial.should_prune():
            self.pruned_at = evaluation.global_step
            return Stop(f"pruned by the median rule at step {evaluation.global_step}")
        return None


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def one_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def run_scored(data: dict, run_dir: Path, metric: str, callbacks=None) -> dict:
    """Train ``data`` (a recipe's data, absolute paths) into ``run_dir``; its validation metrics.
    A finished run already there is read back (a resumed search)."""
    import torch

    from ..api import run

    if (run_dir / "report.json").is_file():
        report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
        return {"metrics": report["metrics"], "test_metrics": report.get("test_metrics")}
    try:
        result = run(data, run_dir, progress=False, overwrite=run_dir.exists(), callbacks=callbacks)
    except (HybridftError, torch.OutOfMemoryError) as e:
        raise TrialFailed(one_line(e)) from None
    except RuntimeError as e:
        if "out of memory" not in str(e):
            raise
        raise TrialFailed(one_line(e)) from None
    if metric not in result.metrics:
        raise TrialFailed(f"metric {metric!r} is not among the validation metrics ({', '.join(result.metrics)})")
    return {"metrics": result.metrics, "test_metrics": result.test_metrics}
