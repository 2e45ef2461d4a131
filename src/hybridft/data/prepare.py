"""From a recipe's data section to encoded train/validation/test examples and a label map."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HybridftError
from ..tasks import GENERATIVE_TASKS, IGNORE_INDEX
from .clean import clean_rows, looks_like_integer
from .memory import is_placeholder
from .readers import read_table


@dataclass
class TaskData:
    task: str
    label_names: list[str]
    train: list[dict]
    validation: list[dict]
    test: list[dict] | None = None
    stats: dict = field(default_factory=dict)
    unlabeled: list[dict] | None = None  # encoded text without labels
    unlabeled_gold: list[int | None] | None = None  # gold label ids where the pool has them (checks only)
    texts: dict = field(default_factory=dict)  # seq2seq: split -> [(source, target)] for BLEU and samples

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}


def resolve_path(value: str, base_dir: Path) -> Path:
    if is_placeholder(value):  # a table held in memory: read_table knows it by this name
        return Path(value)
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base_dir / path)


def input_columns(task: str, cols) -> tuple[list[str], list[str]]:
    """(text columns, token-list columns) that make a model input."""
    if task == "token_classification":
        return [], [cols.tokens]
    return [cols.text] + ([cols.text_pair] if task == "pair_classification" else []), []


def read_rows(data, task: str, base_dir: Path, split: str, deduplicate: bool,
              role: str | None = None) -> tuple[list[dict], dict]:
    """Read and clean one split. Duplicates are only dropped from train: evaluation sets stay as
    published, so metrics compare with the literature. ``role`` names the data in errors (the split)."""
    path = resolve_path(getattr(data, split), base_dir)
    where = f"{role or split} data {path.name}"
    frame = read_table(path, data.format, task, split, data.bad_rows)
    cols = data.columns
    text_cols, list_cols = input_columns(task, cols)
    if task == "token_classification":
        list_cols, label_col = [cols.tokens, cols.tags], None
    else:
        label_col = cols.label
    rows, counts = clean_rows(frame, text_cols, list_cols, label_col, data.clean.strip, data.clean.drop_empty,
                              data.clean.drop_duplicates and deduplicate, where=where)
    if task == "token_classification":
        for i, row in enumerate(rows):
            if len(row[cols.tokens]) != len(row[cols.tags]):
                raise HybridftError(f"{where}: row {i} has {len(row[cols.tokens])} tokens "
                                    f"but {len(row[cols.tags])} tags")
    if frame.attrs.get("malformed_rows_skipped"):
        counts["skipped_malformed"] = frame.attrs["malformed_rows_skipped"]
    if not rows:
        raise HybridftError(f"{where} has no usable rows after cleaning ({counts})")
    return rows, counts


def seeded_subset(rows: list, n: int | None, seed: int) -> list:
    if n is None or n >= len(rows):
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]


def split_train(rows: list[dict], fraction: float, seed: int, label_of) -> tuple[list[dict], list[dict]]:
    """Seeded split, stratified by label when every label has at least two rows."""
    from sklearn.model_selection import train_test_split

    labels = [label_of(r) for r in rows]
    stratify = labels if all(labels.count(x) >= 2 for x in set(labels)) and isinstance(labels[0], str) else None
    if len(rows) < 2:
        raise HybridftError("train data needs at least two rows to split off a validation set")
    try:
        train, val = train_test_split(rows, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError:  # too few rows per class for a stratified split of this size
        train, val = train_test_split(rows, test_size=fraction, random_state=seed)
    return train, val


def _tag_order(tag: str):
    return (tag != "O", tag[2:], tag[:2])


def infer_labels(rows: list[dict], task: str, cols) -> list[str]:
    if task == "token_classification":
        tags = {t for r in rows for t in r[cols.tags]}
        # every entity type gets both B- and I-, even if training only shows one-word entities
        tags |= {f"{p}-{t[2:]}" for t in tags if t[:2] in ("B-", "I-") for p in "BI"}
        return sorted(tags, key=_tag_order)
    names = {r[cols.label] for r in rows}
    if all(looks_like_integer(n) for n in names):
        return sorted(names, key=int)  # "2" before "10"
    return sorted(names)


def check_two_classes(train: list[dict], task: str, cols) -> None:
    """A classifier trained on one class learns nothing, and a one-label model would be read as a
    regression by plain transformers."""
    seen = {t for r in train for t in r[cols.tags]} if task == "token_classification" else \
        {r[cols.label] for r in train}
    if len(seen) < 2:
        what = "tag" if task == "token_classification" else "label"
        raise HybridftError(f"train data has a single {what} ({next(iter(seen))!r}) in {len(train)} rows; "
                            f"training needs at least two")


def check_labels(rows: list[dict], task: str, cols, known: list[str], split: str) -> None:
    known_set = set(known)
    for r in rows:
        values = r[cols.tags] if task == "token_classification" else [r[cols.label]]
        for v in values:
            if v not in known_set:
                raise HybridftError(f"{split} data has label {v!r}, which is not among the labels "
                                    f"{known[:12]}{'...' if len(known) > 12 else ''}")


def load_rows(recipe, base_dir: Path) -> tuple[dict[str, list[dict]], list[str], dict]:
    """Cleaned rows for every split, the label names, and the counts for the report."""
    data, task, seed = recipe.data, recipe.task, recipe.seed
    stats: dict = {}
    train, stats["train"] = read_rows(data, task, base_dir, "train", deduplicate=True)
    train = seeded_subset(train, data.max_train_samples, seed)
    label_of = (lambda r: r[data.columns.label]) if task != "token_classification" else (lambda r: "")
    if data.validation:
        validation, stats["validation"] = read_rows(data, task, base_dir, "validation", deduplicate=False)
    else:
        train, validation = split_train(train, data.validation_fraction, seed, label_of)
        stats["validation"] = {"split_from_train": data.validation_fraction, "rows_kept": len(validation)}
    splits = {"train": train, "validation": seeded_subset(validation, data.max_eval_samples, seed)}
    if data.test:
        test, stats["test"] = read_rows(data, task, base_dir, "test", deduplicate=False)
        splits["test"] = seeded_subset(test, data.max_eval_samples, seed)
    labels = list(data.labels) if data.labels else infer_labels(train, task, data.columns)
    check_two_classes(train, task, data.columns)
    for name, rows in splits.items():
        check_labels(rows, task, data.columns, labels, name)
    stats["rows_used"] = {k: len(v) for k, v in splits.items()}
    return splits, labels, stats


def label_summary(recipe, base_dir: Path, shown: int = 20) -> list[str]:
    """What ``hybridft validate`` says of the labels: each classification task's label set, read
    from its data as a run reads it (so bad labels are refused here, before anything trains)."""
    views = [(None, recipe)] if recipe.tasks is None else \
        [(t.name, recipe.model_copy(update={"task": t.task, "data": t.data, "tasks": None})) for t in recipe.tasks]
    lines = []
    for name, view in views:
        if view.task in GENERATIVE_TASKS:
            continue
        splits, labels, _ = load_rows(view, base_dir)
        what = "tags" if view.task == "token_classification" else "labels"
        more = f", ... ({len(labels)} in all)" if len(labels) > shown else ""
        lines.append(f"{what}{f' of {name}' if name else ''} ({len(splits['train']):,} training rows): "
                     f"{', '.join(labels[:shown])}{more}")
    return lines


def encode(rows: list[dict], tokenizer, task: str, cols, label2id: dict | None, max_length: int) -> tuple[list[dict], int]:
    """Tokenize without padding (batches are padded dynamically). Returns examples and how many
    were truncated. Token labels go on the first word piece of each word; other pieces get -100."""
    if task == "token_classification":
        enc = tokenizer([r[cols.tokens] for r in rows], is_split_into_words=True, truncation=True,
                        max_length=max_length)
    else:
        pair = [r[cols.text_pair] for r in rows] if task == "pair_classification" else None
        enc = tokenizer([r[cols.text] for r in rows], pair, truncation=True, max_length=max_length)
    examples, at_limit = [], []
    for i in range(len(rows)):
        ex = {k: enc[k][i] for k in enc.keys()}
        if len(ex["input_ids"]) >= max_length:
            at_limit.append(i)
        if label2id is not None:
            ex["labels"] = _token_labels(enc.word_ids(i), rows[i][cols.tags], label2id) \
                if task == "token_classification" else label2id[rows[i][cols.label]]
        examples.append(ex)
    return examples, _count_truncated([rows[i] for i in at_limit], tokenizer, task, cols, max_length)


def _count_truncated(rows: list[dict], tokenizer, task: str, cols, max_length: int) -> int:
    """How many rows that reached max_length were really longer (re-encoded without truncation)."""
    if not rows:
        return 0
    if task == "token_classification":
        enc = tokenizer([r[cols.tokens] for r in rows], is_split_into_words=True)
    else:
        pair = [r[cols.text_pair] for r in rows] if task == "pair_classification" else None
        enc = tokenizer([r[cols.text] for r in rows], pair)
    return sum(len(ids) > max_length for ids in enc["input_ids"])


def _token_labels(word_ids: list, tags: list[str], label2id: dict) -> list[int]:
    labels, previous = [], None
    for w in word_ids:
        labels.append(IGNORE_INDEX if w is None or w == previous else label2id[tags[w]])
        previous = w
    return labels


def input_key(row: dict, task: str, cols) -> tuple:
    text_cols, list_cols = input_columns(task, cols)
    return tuple(row[c] for c in text_cols) + tuple(tuple(row[c]) for c in list_cols)


def load_unlabeled_rows(recipe, base_dir: Path, splits: dict[str, list[dict]]) -> tuple[list[dict], dict]:
    """The unlabeled pool: cleaned, deduplicated, optionally without any text of the task's splits
    (so that no evaluation sentence leaks in), then a seeded subset."""
    spec, task, cols = recipe.data.unlabeled, recipe.task, recipe.data.columns
    path = resolve_path(spec.path, base_dir)
    frame = read_table(path, spec.format, task, "train", recipe.data.bad_rows)
    text_cols, list_cols = input_columns(task, cols)
    has_gold = task != "token_classification" and cols.label in frame.columns
    rows, counts = clean_rows(frame, text_cols, list_cols, cols.label if has_gold else None, recipe.data.clean.strip,
                              True, True, where=f"unlabeled data {path.name}", label_required=False)
    if spec.drop_overlap:
        taken = {input_key(r, task, cols) for split in splits.values() for r in split}
        kept = [r for r in rows if input_key(r, task, cols) not in taken]
        counts["dropped_overlap"] = len(rows) - len(kept)
        rows = kept
    if spec.min_words:
        kept = [r for r in rows if sum(len(str(r[c]).split()) for c in text_cols) >= spec.min_words]
        counts["dropped_short"] = len(rows) - len(kept)
        rows = kept
    rows = seeded_subset(rows, spec.max_samples, recipe.seed)
    if not rows:
        raise HybridftError(f"unlabeled data {path.name} has no usable rows ({counts})")
    counts["rows_used"] = len(rows)
    return rows, counts


def load_task_data(recipe, base_dir: Path, tokenizer) -> TaskData:
    splits, labels, stats = load_rows(recipe, base_dir)
    unlabeled = unlabeled_gold = None
    if recipe.data.unlabeled is not None:
        rows, stats["unlabeled"] = load_unlabeled_rows(recipe, base_dir, splits)
        label2id = {n: i for i, n in enumerate(labels)}
        unlabeled, stats["truncated"] = encode(rows, tokenizer, recipe.task, recipe.data.columns, None,
                                               recipe.model.max_length)
        stats["truncated"] = {"unlabeled": stats["truncated"]}
        unlabeled_gold = [label2id.get(r.get(recipe.data.columns.label)) for r in rows]
    label2id = {n: i for i, n in enumerate(labels)}
    encoded = {}
    for name, rows in splits.items():
        encoded[name], n_trunc = encode(rows, tokenizer, recipe.task, recipe.data.columns, label2id,
                                        recipe.model.max_length)
        stats.setdefault("truncated", {})[name] = n_trunc
    return TaskData(recipe.task, labels, encoded["train"], encoded["validation"], encoded.get("test"), stats,
                    unlabeled, unlabeled_gold)
