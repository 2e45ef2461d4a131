"""The rows the trials are scored on: a seeded split of the training rows (stratified by label where
the task has labels), written once into the search folder. The recipe's own validation set never
reaches a trial; when the recipe has none, the rows a run would split off train for it are set
aside first, as ``data.prepare.load_rows`` draws them, so they stay unseen too."""

from __future__ import annotations

import json
from pathlib import Path

from ..data.prepare import infer_labels, read_rows, seeded_subset, split_train
from ..errors import HybridftError
from ..folders import write_atomic

INNER = "inner-data"


def inner_rows(recipe, base_dir: Path, fraction: float) -> tuple[list[dict], list[dict], list[str]]:
    """(inner train rows, inner validation rows, every label of train)."""
    data, task, seed = recipe.data, recipe.task, recipe.seed
    rows, _ = read_rows(data, task, base_dir, "train", deduplicate=True)
    rows = seeded_subset(rows, data.max_train_samples, seed)
    label_of = (lambda r: r[data.columns.label]) if task in ("classification", "pair_classification") \
        else (lambda r: "")
    labels = list(data.labels) if data.labels else \
        infer_labels(rows, task, data.columns) if task in ("classification", "pair_classification",
                                                            "token_classification") else None
    if not data.validation:  # the run's own validation rows, drawn as a run draws them
        rows, _ = split_train(rows, data.validation_fraction, seed, label_of)
    if len(rows) < 4:
        raise HybridftError(f"train data has {len(rows)} usable rows: too few to hold out rows for the trials")
    train, validation = split_train(rows, fraction, seed, label_of)
    return train, validation, labels


def write_inner_split(recipe, base_dir: Path, out: Path, fraction: float) -> dict:
    """The trials' ``data`` changes: the inner train and validation files (written once; a resumed
    search or a second worker reads the same), no test set, no subset on top."""
    folder = out / INNER
    files = {split: folder / f"{split}.jsonl" for split in ("train", "validation")}
    labels_file = folder / "labels.json"
    if not all(f.is_file() for f in (*files.values(), labels_file)):
        train, validation, labels = inner_rows(recipe, base_dir, fraction)
        folder.mkdir(parents=True, exist_ok=True)
        for split, rows in (("train", train), ("validation", validation)):
            write_atomic(files[split], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        write_atomic(labels_file, json.dumps(labels))  # last: its presence says the split is complete
    labels = json.loads(labels_file.read_text(encoding="utf-8"))
    return {"train": str(files["train"].resolve()), "validation": str(files["validation"].resolve()),
            "test": None, "format": "jsonl", "max_train_samples": None, "bad_rows": "error",
            **({"labels": labels} if labels is not None else {})}
