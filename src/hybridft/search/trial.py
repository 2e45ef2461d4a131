"""One trial of a search: a hybridft run scored on its validation metrics, and what may stop it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import HybridftError


class TrialFailed(Exception):
    """A trial that could not finish; its one-line reason is the trial's ``failure`` attribute."""


class Pruning:
    """Feeds the periodic evaluations of the trial's last training stage to Optuna's pruner, at their
    step within that stage, and stops the run when it says so. An earlier stage (LP-FT's linear probe,
    a first adaptation stage) prepares the last one: its scores are not comparable with another
    trial's at the same step, and judging them would prune every multi-stage trial in its first stage."""

    def __init__(self, trial, metric: str, judged_stage: int):
        self.trial, self.metric, self.judged_stage, self.pruned_at = trial, metric, judged_stage, None

    def on_evaluate(self, evaluation):
        from ..training.hooks import Stop

        value = evaluation.metrics.get(self.metric)
        if value is None or evaluation.stage_index != self.judged_stage:
            return None
        self.trial.report(float(value), step=evaluation.step)
        if self.trial.should_prune():
            self.pruned_at = evaluation.global_step
            return Stop(f"pruned by the median rule at step {evaluation.step} of stage {evaluation.stage!r}")
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
        return scored(json.loads((run_dir / "report.json").read_text(encoding="utf-8")))
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
    return scored(result.report)


def scored(report: dict) -> dict:
    """What a search keeps of a run's report: its validation (and test) metrics and the optimizer
    steps it took in all (what pruning saves is counted in these)."""
    return {"metrics": report["metrics"], "test_metrics": report.get("test_metrics"),
            "steps": sum(stage.get("steps") or 0 for stage in report.get("stages", []))}
