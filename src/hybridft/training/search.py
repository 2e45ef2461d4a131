"""Choose a selector's value (e.g. an importance density) by cross-validation on training data.

Each candidate trains a copy of the stage-start model on part of the training data with the stage's
optimizer and budget (or ``search_steps``) and is scored on the rest with the recipe's metric.
Only the searched selector is used in these trial runs, so a value is chosen for it alone.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.model_selection import KFold, train_test_split

from ..tasks import lower_is_better
from .checkpoint import rng_state, set_rng_state
from .metrics_log import MetricsLog


def fold_indices(n: int, spec, seed: int) -> list[tuple[list[int], list[int]]]:
    if spec.choose_by == "holdout":
        train, held = train_test_split(list(range(n)), test_size=spec.holdout_fraction, random_state=seed)
        return [(train, held)]
    return [(list(tr), list(va)) for tr, va in KFold(spec.folds, shuffle=True, random_state=seed).split(np.arange(n))]


def choose_value(selector, model, run, stage, train_stage) -> tuple[float, dict[float, float]]:
    """(the best value, every value's mean held-out score); ``train_stage`` is the stage runner."""
    metric = run.recipe.selection_metric
    rows = run.data.train
    # trials draw dropout masks from the global RNG; restore it afterwards so that the stage trains
    # exactly as a recipe that had named the chosen value directly
    saved_rng = rng_state()
    folds = fold_indices(len(rows), selector.config, run.recipe.seed)
    scores: dict[float, float] = {}
    for value in selector.search_values():
        trial = stage.model_copy(update={"select": [selector.trial_config(value)], "eval_every": None,
                                         "keep_best": False, "early_stopping": None,
                                         "max_steps": selector.config.search_steps or stage.max_steps})
        results = []
        for train_idx, val_idx in folds:
            with tempfile.TemporaryDirectory() as tmp:
                data = replace(run.data, train=[rows[i] for i in train_idx], validation=[rows[i] for i in val_idx])
                sub = run.sub_run(model=copy.deepcopy(model), data=data, run_dir=Path(tmp), progress=False,
                                  log=MetricsLog(Path(tmp) / "metrics.jsonl"))
                report = train_stage(sub, 0, trial)
                sub.log.close()
                results.append(report["evaluations"][-1][metric])
        scores[value] = float(np.mean(results))
    set_rng_state(saved_rng)
    pick = min if lower_is_better(metric) else max
    return pick(scores, key=lambda v: scores[v]), scores
