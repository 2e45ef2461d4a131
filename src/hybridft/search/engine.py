"""One worker of a search: trials until the study's budget is spent, then (in the worker that finds
no trial still running) the confirmation runs, ``best.yaml``, the final run on the recipe's own
validation set, and the report.

Each trial is a normal run (``hybridft.run``) into ``OUT/trials/<number>/`` of the base recipe with
the trial's overrides, trained and scored on the inner split (``split``). A trial that fails (a bad
combination, out of memory) is recorded as failed with its one-line reason, and the search goes on.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from ..errors import HybridftError
from ..recipe import load_recipe, resolved_recipe_text
from ..recipe.search_space import STRATEGY, apply, suggest
from ..tasks import MULTI_TASK, lower_is_better
from .split import write_inner_split
from .study import FAILURE, SURPLUS, mark_interrupted, open_storage, open_study, trials_used
from .trial import Pruning, TrialFailed, run_scored, say

MARKER = ".hybridft-search"
FINISHING = "finishing.lock"


class Search:
    """The state one worker shares between its trials and the end of the search."""

    def __init__(self, recipe_path: Path, out: Path, overrides: list[str]):
        recipe, base_dir = load_recipe(recipe_path, overrides)
        if recipe.search is None:
            raise HybridftError(f"{recipe_path} has no search: section (the space to search)")
        if recipe.task == MULTI_TASK:
            raise HybridftError("search does not support multi_task recipes yet")
        self.recipe, self.base_dir, self.out, self.spec = recipe, base_dir, out, recipe.search
        self.metric = self.spec.metric or recipe.selection_metric
        self.direction = self.spec.direction or ("minimize" if lower_is_better(self.metric) else "maximize")
        self.base = yaml.safe_load(resolved_recipe_text(recipe, base_dir, recipe.model.name or ""))
        if not recipe.model.name:
            self.base["model"]["name"] = None  # the embedded model, as the recipe names it
        self.base.pop("search", None)

    def sign(self) -> int:
        return 1 if self.direction == "maximize" else -1

    def trial_recipe(self, overrides: dict, inner: dict, seed: int | None = None) -> dict:
        data = apply(self.base, overrides, self.spec.preset)
        data["data"] = {**data["data"], **inner}
        data["output"] = {**data.get("output", {}), "save_model": False}
        data["report_to"] = []
        if seed is not None:
            data["seed"] = seed
        return data

    def best_recipe(self, overrides: dict) -> dict:
        """The chosen configuration as a plain recipe: the base recipe (its own data) with the overrides."""
        return apply(self.base, overrides, self.spec.preset)

    def objective(self, inner: dict, budget: int | None):
        def run_trial(trial) -> float:
            from optuna import TrialPruned

            if budget is not None and trials_used(trial.study, before=trial.number) >= budget:
                trial.set_user_attr(SURPLUS, True)
                trial.study.stop()
                raise TrialFailed(f"the study had its {budget} trials when this one started")
            overrides = suggest(trial, self.spec)
            trial.set_user_attr("overrides", overrides)
            trial_recipe = self.trial_recipe(overrides, inner)
            pruning = Pruning(trial, self.metric, last_training_stage(trial_recipe)) if self.spec.pruning else None
            started = time.perf_counter()
            try:
                scored = run_scored(trial_recipe, self.out / "trials" / str(trial.number),
                                    self.metric, [pruning] if pruning else None)
            except TrialFailed as e:
                trial.set_user_attr(FAILURE, str(e))
                say(f"[trial {trial.number}] failed: {e}")
                raise
            value = scored["metrics"][self.metric]
            trial.set_user_attr("metrics", scored["metrics"])
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
            trial.set_user_attr("steps", scored["steps"])
            say(f"[trial {trial.number}] {describe(overrides)}: {self.metric}={value:.4f}"
                + (f" (pruned at step {pruning.pruned_at})" if pruning and pruning.pruned_at else ""))
            if pruning and pruning.pruned_at is not None:
                raise TrialPruned(f"pruned at step {pruning.pruned_at}")
            return value
        return run_trial


def last_training_stage(data: dict) -> int:
    """The index of the recipe's last stage that trains (a mix stage trains nothing)."""
    return max(i for i, stage in enumerate(data["stages"]) if "mix" not in stage)


def describe(overrides: dict) -> str:
    shown = {k: v for k, v in overrides.items() if k != STRATEGY}
    head = f"{overrides[STRATEGY]} " if STRATEGY in overrides else ""
    return head + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={yaml_flow(v)}"
                            for k, v in shown.items())


def yaml_flow(value) -> str:
    from ..recipe.io import yaml_text

    return yaml_text(value)


def check_out(out: Path) -> None:
    if out.is_file():
        raise HybridftError(f"{out} is a file, not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise HybridftError(f"{out} is not empty and holds no hybridft search; choose another --out")


def run_search(recipe_path: Path, out: Path, overrides: list[str], storage: str | None = None,
               study_name: str | None = None, resume: bool = False) -> dict:
    """One worker: trials until the budget is spent; the last worker to finish also confirms,
    chooses, runs the chosen configuration once on the recipe's validation set and writes the report.
    Returns the summary (``search.json``), or None for a worker that left the end to another."""
    from optuna.trial import TrialState

    check_out(out)
    search = Search(recipe_path, out, overrides)  # the recipe and every choice checked before anything is written
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("hybridft search folder\n", encoding="utf-8")
    inner = write_inner_split(search.recipe, search.base_dir, out, search.spec.validation_fraction)
    shared = storage is not None or study_name is not None
    name = study_name or search.recipe.name
    store = open_storage(storage, out)
    study = open_study(store, name, search.direction, search.recipe.seed + len_trials(store, name), search.spec.pruning,
                       shared)
    if resume:
        (out / FINISHING).unlink(missing_ok=True)
        rerun = mark_interrupted(study, store)
        if rerun:
            say(f"trials {rerun} were interrupted: marked failed, re-run")
    elif not shared and study.get_trials(deepcopy=False):
        raise HybridftError(f"{out} holds a search already; continue it with --resume (or give --study NAME "
                            "to join a study as one more worker)")
    budget = search.spec.trials
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))  # counted, yet to run
    left = None if budget is None else budget - trials_used(study) + waiting
    if left is None or left > 0:
        study.optimize(search.objective(inner, budget), n_trials=left, timeout=search.spec.timeout,
                       catch=(TrialFailed,), gc_after_trial=True)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    if running:
        say(f"{len(running)} trial(s) still running in other workers: the last worker to finish confirms and "
            "reports")
        return None
    from .finish import finish

    try:  # two workers that end together: one finishes, the other leaves it (a kill -9 leaves the file: resume)
        (out / FINISHING).open("x").close()
    except FileExistsError:
        say(f"another worker is finishing the search ({out / FINISHING}); --resume clears it if none is")
        return None
    try:
        return finish(search, study, inner)
    finally:
        (out / FINISHING).unlink(missing_ok=True)


def len_trials(storage, name: str) -> int:
    """Trials the study holds already (0 for a new one): a resumed search draws on from a new seed."""
    import optuna

    try:
        return len(optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False))
    except KeyError:
        return 0
