"""Tables held in memory standing where a recipe names a data file: a pandas DataFrame, a list of
dicts (one per row) or a ``datasets.Dataset``.

Each is copied into a DataFrame once (later changes to the caller's object do not reach a run that
holds it) and held under a placeholder that says what it was, e.g.
``<in memory: DataFrame, 4000 rows, sha256:1f0c2d9e8a7b6c5d>``. The recipe carries the placeholder
where the path would be, so a run folder's ``recipe.yaml`` shows that its data came from memory, and
which data (the content's hash: a resume on other data is a recipe that differs). The readers take a
placeholder as they take a path (``readers.read_table``), so the rows go through the same cleaning,
checks and one-line errors as a file's.

The tables are held for the life of the process (a recipe validated now may run later); one held
twice is stored once.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import pandas as pd

from ..errors import HybridftError

PLACEHOLDER = re.compile(r"^<in memory: [A-Za-z]+, \d+ rows?, sha256:[0-9a-f]{16}>$")
SPLITS = ("train", "validation", "test")
_held: dict[str, pd.DataFrame] = {}


def is_placeholder(value) -> bool:
    """A recipe value (str or Path) that stands for a table held in memory."""
    return isinstance(value, (str, Path)) and PLACEHOLDER.match(str(value)) is not None


def is_table(value) -> bool:
    """Data given in memory rather than as a path (a list of rows counts; a str never does)."""
    return isinstance(value, (pd.DataFrame, list, tuple)) or _datasets_kind(value) is not None


def _datasets_kind(value) -> str | None:
    """The class name of a ``datasets`` object (without importing datasets where nobody did)."""
    datasets = sys.modules.get("datasets")
    if datasets is None:
        return None
    kinds = (datasets.Dataset, datasets.DatasetDict, datasets.IterableDataset, datasets.IterableDatasetDict)
    return type(value).__name__ if isinstance(value, kinds) else None


def as_frame(value, key: str) -> tuple[pd.DataFrame, str]:
    """(a DataFrame copy of the table, what it was called); one line naming ``key`` if it is none."""
    kind = _datasets_kind(value)
    if kind in ("DatasetDict", "IterableDatasetDict"):
        raise HybridftError(f"{key}: a {kind} holds several splits; give one of them (e.g. dataset['train'])")
    if kind == "IterableDataset":
        raise HybridftError(f"{key}: an IterableDataset is read lazily and has no length; give a datasets.Dataset, "
                            "a DataFrame or a list of dicts")
    if kind == "Dataset":
        return value.to_pandas(), "Dataset"
    if isinstance(value, pd.DataFrame):
        return value.reset_index(drop=True).copy(deep=True), "DataFrame"
    rows = list(value)
    if not rows:
        raise HybridftError(f"{key}: the list of rows is empty")
    odd = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
    if odd is not None:
        raise HybridftError(f"{key}: a list of rows holds one dict per row (column: value); item {odd} is a "
                            f"{type(rows[odd]).__name__}")
    return pd.DataFrame.from_records(rows), "list"


def content_hash(frame: pd.DataFrame) -> str:
    """sha256 of the column names, their types and every cell (as text, so lists and arrays hash too)."""
    digest = hashlib.sha256(json.dumps([[str(c), str(t)] for c, t in frame.dtypes.items()]).encode())
    if len(frame):
        digest.update(pd.util.hash_pandas_object(frame.astype(str), index=False).to_numpy().tobytes())
    return digest.hexdigest()


def hold(value, key: str) -> str:
    """Hold the table ``value`` (named ``key`` in errors) and return its placeholder."""
    frame, kind = as_frame(value, key)
    placeholder = f"<in memory: {kind}, {len(frame)} row{'' if len(frame) == 1 else 's'}, " \
                  f"sha256:{content_hash(frame)[:16]}>"
    _held.setdefault(placeholder, frame)
    return placeholder


def held_problem(placeholder) -> str | None:
    """Why the table a placeholder stands for cannot be read here (None: it can)."""
    if str(placeholder) in _held:
        return None
    return (f"{placeholder}: this data was passed in memory to another process (e.g. the run that wrote this "
            "recipe.yaml); pass the data itself, or a file")


def held_table(placeholder) -> pd.DataFrame:
    """The table a placeholder stands for (a shallow copy: readers may set its attrs)."""
    problem = held_problem(placeholder)
    if problem:
        raise HybridftError(problem)
    return _held[str(placeholder)].copy(deep=False)


def hold_tables(recipe: dict) -> dict:
    """The recipe (a dict) with each table in a data place replaced by its placeholder: ``data.train``,
    ``validation``, ``test``, ``data.unlabeled`` (or its ``path``), each task's data. The caller's dict
    is left as it was (the parts that change are copied)."""
    if not isinstance(recipe, dict):
        return recipe
    recipe = dict(recipe)
    if isinstance(recipe.get("data"), dict):
        recipe["data"] = _hold_section(recipe["data"], "data")
    if isinstance(recipe.get("tasks"), list):
        recipe["tasks"] = [{**t, "data": _hold_section(t["data"], f"tasks.{i}.data")}
                           if isinstance(t, dict) and isinstance(t.get("data"), dict) else t
                           for i, t in enumerate(recipe["tasks"])]
    return recipe


DATA_SECTION = re.compile(r"^(data|tasks\.\d+\.data)$")


def hold_override(key: str, value):
    """An override's value (``key`` dotted) with each table in a data place held: ``data.train=df``,
    ``data.unlabeled=df``, ``data={"train": df}``, ``tasks.0.data.validation=rows``."""
    section, _, place = key.rpartition(".")
    if DATA_SECTION.match(key) and isinstance(value, dict):
        return _hold_section(value, key)
    if DATA_SECTION.match(section) and place in SPLITS and is_table(value):
        return hold(value, key)
    if DATA_SECTION.match(section) and place == "unlabeled":
        return _hold_section({"unlabeled": value}, section)["unlabeled"]
    if key.endswith(".unlabeled.path") and DATA_SECTION.match(key.removesuffix(".unlabeled.path")) and is_table(value):
        return hold(value, key)
    return value


def _hold_section(section: dict, where: str) -> dict:
    section = {key: hold(value, f"{where}.{key}") if key in SPLITS and is_table(value) else value
               for key, value in section.items()}
    unlabeled = section.get("unlabeled")
    if is_table(unlabeled):
        section["unlabeled"] = {"path": hold(unlabeled, f"{where}.unlabeled")}
    elif isinstance(unlabeled, dict) and is_table(unlabeled.get("path")):
        section["unlabeled"] = {**unlabeled, "path": hold(unlabeled["path"], f"{where}.unlabeled.path")}
    return section
