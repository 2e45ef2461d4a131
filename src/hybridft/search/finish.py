"""The end of a search: the top trials re-run with more seeds (``confirm``), the choice by mean,
``best.yaml`` (a plain recipe ``hybridft run`` reproduces), one run of it on the recipe's own
validation set (its only use), ``search.json`` and the report."""

from __future__ import annotations

import json
import statistics

import yaml

from ..errors import HybridftError
from ..folders import write_atomic
from .study import FAILURE, counted
from .trial import TrialFailed, run_scored, say


def finished(study) -> list:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "overrides" in t.user_attrs]


def candidates(search, study) -> list:
    """The trials to confirm: the best ``top`` with distinct configurations (one if no confirm)."""
    ranked = sorted(finished(study), key=lambda t: (-search.sign() * t.value, t.number))
    seen, top = set(), []
    for trial in ranked:
        key = json.dumps(trial.user_attrs["overrides"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            top.append(trial)
    return top[:search.spec.confirm.top if search.spec.confirm else 1]


def confirm(search, trials: list, inner: dict) -> list[dict]:
    """Each candidate's scores over seeds: the trial's own run, then seed + 1, seed + 2... on the same
    inner split; mean and standard deviation."""
    seeds = search.spec.confirm.seeds if search.spec.confirm else 1
    rows = []
    for trial in trials:
        values = [trial.value]
        for k in range(1, seeds):
            seed = search.recipe.seed + k
            data = search.trial_recipe(trial.user_attrs["overrides"], inner, seed=seed)
            try:
                scored = run_scored(data, search.out / "confirm" / f"{trial.number}-seed{seed}", search.metric)
            except TrialFailed as e:
                raise HybridftError(f"confirming trial {trial.number} with seed {seed} failed: {e}") from None
            values.append(scored["metrics"][search.metric])
            say(f"[confirm trial {trial.number}] seed {seed}: {search.metric}={values[-1]:.4f}")
        rows.append({"trial": trial.number, "overrides": trial.user_attrs["overrides"], "values": values,
                     "mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0})
    return rows


def trial_rows(study) -> list[dict]:
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        rows.append({"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
                     "counted": counted(t), "failure": t.user_attrs.get(FAILURE),
                     "seconds": t.user_attrs.get("seconds"), "steps": t.user_attrs.get("steps")})
    return rows


def finish(search, study, inner: dict) -> dict:
    trials = candidates(search, study)
    if not trials:
        write_summary(search, study, [], None, None)
        raise HybridftError(f"no trial of study {study.study_name!r} finished: nothing to choose; "
                            f"{search.out / 'search.json'} says why each failed")
    confirmed = confirm(search, trials, inner)
    chosen = max(confirmed, key=lambda r: (search.sign() * r["mean"], -r["trial"]))
    best = search.best_recipe(chosen["overrides"])
    best_file = search.out / "best.yaml"
    write_atomic(best_file, f"# chosen by hybridft search: trial {chosen['trial']} of study "
                            f"{study.study_name!r}\n" + yaml.safe_dump(best, sort_keys=False))
    from ..api import run

    final_dir = search.out / "final"
    say(f"chosen: trial {chosen['trial']} ({search.metric} {chosen['mean']:.4f} ± {chosen['sd']:.4f} on the inner "
        "split); one run on the recipe's validation set")
    result = run(str(best_file), final_dir, progress=False, resume=(final_dir / "report.json").is_file())
    final = {"run_dir": str(final_dir), "metrics": result.metrics, "test_metrics": result.test_metrics}
    return write_summary(search, study, confirmed, chosen, final)


def write_summary(search, study, confirmed: list, chosen: dict | None, final: dict | None) -> dict:
    from .report import write_report

    summary = {"study": study.study_name, "metric": search.metric, "direction": search.direction,
               "budget": search.spec.trials, "trials": trial_rows(study), "confirm": confirmed,
               "chosen": chosen, "final": final, "best_recipe": "best.yaml" if chosen else None}
    write_atomic(search.out / "search.json", json.dumps(summary, indent=2, default=str))
    write_report(search.out, summary, study)
    return summary
