"""The Optuna study: its storage (a SQLite file in the search folder by default, any storage URL, or
a journal file), its sampler and pruner, the trial budget shared by every worker, and what resume
does with a trial that was running when its worker died."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from ..errors import HybridftError

INTERRUPTED = "interrupted"  # user attr of a trial whose worker died; it is re-run
SURPLUS = "surplus"  # user attr of a trial asked for after the budget was reached by another worker
FAILURE = "failure"  # user attr: why a trial failed, in one line


def open_storage(storage: str | None, out: Path):
    """A SQLite file in ``out`` by default; a URL (``sqlite:///...``, ``postgresql://...``) as Optuna
    reads it; any other text names a journal file (``optuna-dashboard`` reads all three)."""
    import optuna

    if storage is None or "://" in storage:
        return rdb_storage(storage or f"sqlite:///{(out / 'study.db').resolve()}")
    path = Path(storage)
    if path.is_dir():
        raise HybridftError(f"--storage {storage} is a folder; give a storage URL or a journal file")
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def rdb_storage(url: str, tries: int = 5):
    """Optuna's RDB storage. Workers that start together may both create its tables, and all but one
    are refused (a unique constraint): they try again once the tables exist."""
    import optuna

    for attempt in range(tries):
        try:
            return optuna.storages.RDBStorage(url)
        except Exception as e:  # noqa: BLE001  (a bad URL or an unreachable server: SQLAlchemy's many kinds)
            racing = "UNIQUE constraint" in str(e) or "already exists" in str(e) or "locked" in str(e)
            if not racing or attempt == tries - 1:
                raise HybridftError(f"--storage {url}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


def open_study(storage, name: str, direction: str, seed: int, pruning: bool, shared: bool):
    """The study (created or joined). Workers that share a study draw from different seeds (the same
    seed would propose the same points at the same time), and TPE's constant liar keeps them apart."""
    import optuna

    sampler_seed = seed if not shared else (seed + os.getpid()) % 2**32
    sampler = optuna.samplers.TPESampler(seed=sampler_seed, constant_liar=shared)
    pruner = optuna.pruners.MedianPruner() if pruning else optuna.pruners.NopPruner()
    study = optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise HybridftError(f"study {name!r} was created to {study.direction.name.lower()}, not {direction}; "
                            "give another --study")
    return study


def counted(trial) -> bool:
    """Whether a trial takes a place of the budget: not one re-run after an interruption, nor one
    that found the budget spent."""
    return not (trial.user_attrs.get(INTERRUPTED) or trial.user_attrs.get(SURPLUS))


def trials_used(study, before: int | None = None) -> int:
    """Trials of the budget, those numbered below ``before`` only when given: trial numbers are handed
    out one at a time by the storage, so a trial counting those before it never overshoots."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if counted(t) and (before is None or t.number < before))


def mark_interrupted(study, storage) -> list[int]:
    """Trials left running by a worker that died (kill -9, a lost machine): marked failed as
    interrupted, and their points queued again so they are re-run. Only for ``--resume``, when no
    other worker of the study is running."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
        storage.set_trial_user_attr(trial._trial_id, FAILURE, "interrupted: its worker stopped; re-run")
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number})
    return [t.number for t in stale]
