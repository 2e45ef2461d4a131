"""The Python API for notebooks and scripts; the command line's ``run`` is a thin layer over it.

    import hybridft
    result = hybridft.run("recipes/quickstart.yaml", out="runs/q", seed=3)
    result.metrics                      # validation metrics of the final model
    saved = hybridft.load(result.model_dir)
    saved.predict(["a gripping film"])  # [{"text": ..., "label": ..., "score": ...}]
"""

from __future__ import annotations

import copy
import json
import os
import time
import warnings
from collections.abc import Iterable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data.memory import hold, hold_override, hold_tables, is_table
from .errors import HybridftError
from .folders import RunLock
from .inference import evaluate_with, predict_with
from .model_io import load_saved
from .models import resolve_model
from .preflight import check_paths, check_selection
from .recipe import (
    Recipe,
    apply_cwd_paths,
    apply_overrides,
    cwd_path,
    load_recipe,
    resolved_recipe_text,
    validate_recipe,
)
from .report.outputs import finish_run, trained_model
from .training.hooks import RunHooks
from .training.parallel import launch
from .training.setup import check_run_dir
from .training.stages import train
from .training.tracking import check_trackers


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    report: dict  # report.json
    already_complete: bool = False  # resume found the run complete and trained nothing
    trained: SavedModel | dict[str, SavedModel] | None = field(default=None, repr=False)  # the run's own model object

    @property
    def model(self) -> SavedModel | dict[str, SavedModel] | None:
        """The trained model and its tokenizer, ready to ``predict``: the run's own model object, kept
        in memory (also with ``output.save_model: false``); a multi-task run's, by task name. A run that
        resume found complete has it read from its model folder (None if it saved none)."""
        if self.trained is None and self.model_dir is not None:
            object.__setattr__(self, "trained", load(self.model_dir) if (self.model_dir / "config.json").is_file()
                               else {p.name: load(p) for p in sorted(self.model_dir.iterdir())
                                     if (p / "hybridft.json").is_file()})
        return self.trained

    @property
    def metrics(self) -> dict:
        """Validation metrics of the final model."""
        return self.report["metrics"]

    @property
    def test_metrics(self) -> dict | None:
        return self.report["test_metrics"]

    @property
    def model_dir(self) -> Path | None:
        """The saved model (None when the recipe's output.save_model is off)."""
        folder = self.run_dir / "model"
        return folder if folder.is_dir() else None


def run_recipe(recipe: Recipe, base_dir: Path, run_dir: Path, resume: bool = False, overwrite: bool = False,
               progress: bool = True, allow_changed_data: bool = False, hooks: RunHooks | None = None) -> dict:
    """Train a validated recipe into ``run_dir`` and write its model and report; returns the report.
    The main process holds the run folder's lock throughout (one run at a time in a folder).
    ``allow_changed_data``: resume even if the data files differ from those the run started on.
    ``hooks``: what the Python API hooks in, and receives the trained model in memory."""
    problems = check_trackers(recipe.report_to)
    if problems:  # before anything is written
        raise HybridftError("; ".join(problems))
    processes = launch(run_dir, recipe.distributed)
    # a refused folder gets nothing written into it, not even the lock
    lock = RunLock(run_dir, check=lambda: check_run_dir(run_dir, resume, overwrite))
    with lock if processes.is_main else nullcontext(), trackers_ended(processes):
        started = time.perf_counter()
        run, final = train(recipe, base_dir, run_dir, resume, overwrite, progress, processes, allow_changed_data,
                           hooks)
        report = finish_run(run, final, started)
        if hooks is not None:
            hooks.final_model = trained_model(run)
        return report


@contextmanager
def trackers_ended(processes):
    """A run that stops on an error or an interruption is marked so in its trackers (MLflow's FAILED or
    KILLED), not left running there; a finished run has ended them itself (``finish_run``)."""
    try:
        yield
    except BaseException as e:
        processes.end_tracking("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise


def overrides_of(overrides: dict | list[str] | None, keywords: dict) -> list[str]:
    """``{"stages.0.optimizer.lr": 1e-4}``, ``["stages.0.optimizer.lr=1e-4"]`` and
    ``stages__0__optimizer__lr=1e-4`` as ``key.path=value`` strings; relative paths (data files,
    model folders) start from the current folder, as on the command line."""
    if isinstance(overrides, (list, tuple)):
        return apply_cwd_paths(list(overrides)) + overrides_of(None, keywords)
    items = {**(overrides or {}), **{key.replace("__", "."): value for key, value in keywords.items()}}
    items = {key: hold_override(key, value) for key, value in items.items()}  # data__train=df
    return [f"{key}={json.dumps(cwd_path(key, value), default=str)}" for key, value in items.items()]


def check_arguments(recipe, out=None, overrides=None, base_dir=None) -> None:
    """The API's arguments refused in one line, as the command line refuses its own (else a
    TypeError from deep inside, naming none of them)."""
    if not isinstance(recipe, (str, os.PathLike, dict, Recipe)):
        raise HybridftError(f"recipe: give a YAML file's path, a dict or a Recipe, not {type(recipe).__name__}")
    for name, value in (("out", out), ("base_dir", base_dir)):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise HybridftError(f"{name}: give a folder's path (a str or a Path), not {type(value).__name__} "
                                f"{value!r}")
    entries = overrides.keys() if isinstance(overrides, dict) else overrides \
        if isinstance(overrides, (list, tuple)) else None
    if overrides is not None and (entries is None or not all(isinstance(e, str) for e in entries)):
        raise HybridftError(f"overrides: give a dict ({{'seed': 1}}) or a list of key=value strings (['seed=1']), "
                            f"not {type(overrides).__name__} {overrides!r}")


def resolve_recipe(recipe: str | Path | dict | Recipe, overrides: list[str],
                   base_dir: str | Path | None = None) -> tuple[Recipe, Path]:
    """(validated recipe, the folder its relative paths start from)."""
    if isinstance(recipe, (str, Path)):
        validated, folder = load_recipe(recipe, overrides)
        return validated, Path(base_dir) if base_dir is not None else folder
    # tables held in memory first: the copy then copies their placeholders, not the tables
    data = recipe.model_dump(mode="json") if isinstance(recipe, Recipe) else copy.deepcopy(hold_tables(dict(recipe)))
    return validate_recipe(apply_overrides(data, overrides)), Path(base_dir or Path.cwd())


def validate(recipe: str | Path | dict | Recipe, *, base_dir: str | Path | None = None,
             overrides: dict | list[str] | None = None, **keyword_overrides) -> Recipe:
    """The recipe checked as ``hybridft validate`` checks it, without loading weights: the schema,
    the files it names, and every stage's selection on a weightless model skeleton."""
    check_arguments(recipe, None, overrides, base_dir)
    validated, folder = resolve_recipe(recipe, overrides_of(overrides, keyword_overrides), base_dir)
    problems = check_paths(validated, folder) + check_selection(validated, folder) + check_trackers(validated.report_to)
    if problems:
        raise HybridftError(f"{recipe if isinstance(recipe, (str, Path)) else 'recipe'}: {len(problems)} problem(s): "
                            + "; ".join(problems))
    return validated


@contextmanager
def callers_state_kept():
    """A run seeds the global random generators (Python's, NumPy's, torch's) with the recipe's seed and
    may set warning filters; the caller gets its own back afterwards, so that a notebook's later draws
    do not depend on whether it trained something in between."""
    import random

    import numpy as np

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        torch.set_num_threads(threads)


@callers_state_kept()  # the whole call: even importing what a run needs draws (rich draws at import)
def run(recipe: str | Path | dict | Recipe, out: str | Path | None = None, *, resume: bool = False,
        overwrite: bool = False, progress: bool = True, base_dir: str | Path | None = None,
        overrides: dict | list[str] | None = None, allow_changed_data: bool = False, callbacks: list | None = None,
        **keyword_overrides) -> RunResult:
    """Train from a recipe (a YAML path, a dict or a ``Recipe``) into ``out`` (default
    ``runs/<name>-<time>``). Overrides: ``seed=3``, nested keys with double underscores
    (``stages__0__optimizer__lr=1e-4``), ``overrides={"stages.0.optimizer.lr": 1e-4}`` or the command
    line's ``["stages.0.optimizer.lr=1e-4"]``. Relative paths in a recipe file start from its folder;
    in a dict or ``Recipe``, from ``base_dir`` (default: here). ``progress``: bars on a terminal,
    else a status line every 30 s. ``resume`` refuses data files other than those the run started
    on, unless ``allow_changed_data``. ``callbacks``: objects with ``on_step``, ``on_evaluate`` and/or
    ``on_stage_end`` (``hybridft.Callback``), which see frozen views of the state and may return
    ``hybridft.Stop("why")`` to end the run as early stopping ends a stage. Data may be held in
    memory (a DataFrame, a list of dicts, a ``datasets.Dataset``) wherever a data file may stand.
    ``report_to=["mlflow"]`` (a recipe key) chooses the experiment trackers."""
    check_arguments(recipe, out, overrides, base_dir)
    hooks = RunHooks(callbacks)
    changes = overrides_of(overrides, keyword_overrides)
    validated, folder = resolve_recipe(recipe, changes, base_dir)
    if out is None and (resume or int(os.environ.get("WORLD_SIZE", "1")) > 1):  # set by accelerate / torchrun
        raise HybridftError("give the run folder (--out): resume continues one, and several processes must all "
                            "write to the same one")
    if resume and overwrite:
        raise HybridftError("resume continues the run in the folder, overwrite replaces it: give one of them")
    if allow_changed_data and not resume:
        raise HybridftError("allow_changed_data (--allow-changed-data) is for resuming a run: give resume too")
    run_dir = Path(out) if out is not None else Path("runs") / f"{validated.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if resume and (run_dir / "report.json").is_file():  # written last: the run is complete
        return complete_run(run_dir, validated, folder)
    try:
        report = run_recipe(validated, folder, run_dir, resume=resume, overwrite=overwrite, progress=progress,
                            allow_changed_data=allow_changed_data, hooks=hooks)
    except KeyboardInterrupt as stop:
        how = f"hybridft run {recipe} {' '.join(changes)} --out {run_dir} --resume".replace("  ", " ") \
            if isinstance(recipe, (str, Path)) else f"hybridft.run(..., out={str(run_dir)!r}, resume=True)"
        # the same kind (the command line's Terminated for SIGTERM), now saying how to go on
        raise type(stop)(f"continue from the last checkpoint with: {how}") from None
    return RunResult(run_dir, report, trained=saved_models(hooks.final_model))


def saved_models(trained) -> SavedModel | dict[str, SavedModel]:
    """``SavedModel`` of ``report.outputs.trained_model``'s (model, tokenizer, meta, labels)."""
    if isinstance(trained, dict):
        return {name: saved_models(parts) for name, parts in trained.items()}
    model, tokenizer, meta, labels = trained
    return SavedModel(model, tokenizer, meta["task"], labels, meta)


def complete_run(run_dir: Path, recipe: Recipe, base_dir: Path) -> RunResult:
    """The result of a run that is already complete, if it ran this recipe."""
    started_with = (run_dir / "recipe.yaml").read_text(encoding="utf-8")
    if started_with != resolved_recipe_text(recipe, base_dir, resolve_model(recipe.model.name, base_dir)):
        raise HybridftError(f"the recipe differs from the one {run_dir} was started with; resume with the same "
                            "recipe")
    return RunResult(run_dir, json.loads((run_dir / "report.json").read_text(encoding="utf-8")), already_complete=True)


@dataclass
class SavedModel:
    """A saved model folder, loaded: a plain transformers model with its adapters (if any) restored."""

    model: torch.nn.Module
    tokenizer: object
    task: str
    labels: list[str]
    meta: dict  # hybridft.json
    device: torch.device | None = None  # where .to() put it; None: a GPU if there is one, else the CPU

    def predict(self, texts: str | list[str], batch_size: int | None = None, pairs: bool | None = None, seed: int = 0,
                *, probabilities: bool = False, logits: bool = False, **generation) -> list[dict]:
        """One record per text: its label (or tags, or generated text). A pair model reads
        ``"first\\tsecond"``; ``pairs`` overrides what the model's task says. ``generation``: e.g.
        ``max_new_tokens=20``; sampling is reproducible by ``seed``. ``probabilities``: each label's
        probability (``{"negative": 0.12, "positive": 0.88}``, unrounded; per word for a tagger);
        ``logits``: the head's raw outputs, in label order."""
        lines = [texts] if isinstance(texts, str) else list(texts) if isinstance(texts, Iterable) else texts
        extras = frozenset(k for k, asked in (("probabilities", probabilities), ("logits", logits)) if asked)
        return predict_with(self.model, self.tokenizer, self.meta, self.labels, lines, batch_size, generation, seed,
                            pairs, device=self.device, extras=extras)

    def evaluate(self, data, batch_size: int | None = None, *, format: str = "auto", text_column: str | None = None,
                 pair_column: str | None = None, label_column: str | None = None, progress: bool = False) -> dict:
        """The metrics ``hybridft eval`` prints, on labeled ``data``: a file, or a DataFrame, a list of
        dicts or a ``datasets.Dataset``. Columns default to those the model was trained on."""
        if is_table(data):
            data = hold(data, "data")
        elif not isinstance(data, (str, os.PathLike)):
            raise HybridftError(f"data: give a file's path, a DataFrame, a list of dicts or a datasets.Dataset, "
                                f"not {type(data).__name__}")
        columns = {"text": text_column, "text_pair": pair_column, "label": label_column}
        return evaluate_with(self.model, self.tokenizer, self.meta, self.labels, data, format, batch_size, columns,
                             progress, self.device)

    def to(self, device: str | torch.device) -> SavedModel:
        """The model moved to ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``), where predict and evaluate
        then run; returns the same SavedModel."""
        try:
            where = torch.device(device)
            self.model.to(where)
        except (RuntimeError, AssertionError, TypeError) as e:
            raise HybridftError(f"cannot move the model to {device!r}: {(str(e).splitlines() or [''])[0]}") from None
        self.device = where
        return self


def load(model_dir: str | Path) -> SavedModel:
    """A model folder hybridft wrote (a run's ``model/``), or any transformers classification, tagging
    or language-model folder."""
    model, tokenizer, meta, labels = load_saved(model_dir)
    return SavedModel(model, tokenizer, meta["task"], labels, meta)
