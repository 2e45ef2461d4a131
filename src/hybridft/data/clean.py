"""Cleaning: strip whitespace, drop empty/missing rows and duplicates, and count what was dropped."""

from __future__ import annotations

import pandas as pd

from ..errors import HybridftError


def _is_missing(value) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists and arrays are never "missing"
        return False


def _text(value, column: str, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise HybridftError(f"{where}: column {column!r} must hold text, found {type(value).__name__} {value!r:.40}")


def _tokens(value, column: str, where: str) -> list[str]:
    if isinstance(value, str):
        return value.split()  # space-separated tokens in csv/tsv
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
        raise HybridftError(f"{where}: column {column!r} must hold a list of tokens, found {value!r:.60}")
    return [str(v) for v in value]


def _label(value, column: str, where: str) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 1.0 from a JSON number is label "1"
    if isinstance(value, (str, int)):
        return str(value).strip()
    raise HybridftError(
        f"{where}: label column {column!r} must hold strings or integers, found {type(value).__name__} {value!r:.40}"
    )


# label values that stand for "no label": pandas' own missing markers, and what str() makes of them
MISSING_LABELS = frozenset({"", "nan", "NaN", "NAN", "None", "null", "NULL", "<NA>", "N/A", "n/a", "#N/A"})


def row_name(frame: pd.DataFrame, index: int) -> str:
    """The row as its file names it: its line where the reader knows it (csv, tsv, jsonl)."""
    lines = frame.attrs.get("line_numbers")
    return f"line {lines[index]}" if lines is not None and len(lines) == len(frame) else f"row {index + 1}"


def looks_like_integer(text: str) -> bool:
    return text.strip().lstrip("+-").isdecimal()


def is_missing_label(value) -> bool:
    if isinstance(value, str):  # first: pd.isna is slow, and csv/tsv labels are all strings
        return value.strip() in MISSING_LABELS
    return _is_missing(value)


def _has_input(value) -> bool:
    if _is_missing(value):
        return False
    return bool(value.strip()) if isinstance(value, str) else bool(len(value)) if hasattr(value, "__len__") else True


def refuse_missing_labels(frame: pd.DataFrame, input_columns: list[str], column: str, where: str) -> None:
    """A row with input but no label (empty, nan, None...) would become a class of its own."""
    labels = frame[column].tolist()
    inputs = frame[input_columns].to_numpy(dtype=object)
    for i, value in enumerate(labels):
        if is_missing_label(value) and any(_has_input(v) for v in inputs[i]):
            held = f"holds {value!r}" if isinstance(value, str) and value.strip() else "is empty"
            raise HybridftError(f"{where}: {row_name(frame, i)} has no label (column {column!r} {held}); "
                                f"give it one or remove the row")


def _label_kind(value) -> str | None:
    if isinstance(value, str):
        return "integer text" if looks_like_integer(value) else "text"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not _is_missing(value):
        return "number"
    return None


def check_label_kinds(frame: pd.DataFrame, column: str, where: str) -> None:
    """Labels written as numbers in some rows and as text in others would be merged or split
    silently: 1, "1" and "pos" in one JSON column, or one "pos" row in a 0/1 TSV (a third class).
    One kind per column; the error names the first row of the rarer kind, likely the stray one."""
    first: dict[str, int] = {}
    count: dict[str, int] = {}
    for i, value in enumerate(frame[column].tolist()):
        kind = _label_kind(value)
        if kind is not None and not is_missing_label(value):
            first.setdefault(kind, i)
            count[kind] = count.get(kind, 0) + 1
    if len(first) < 2:
        return
    values = frame[column]
    kinds = sorted(first, key=("number", "integer text", "text").index)
    rare = min(kinds, key=lambda k: (count[k], -first[k]))
    stray = first[rare]
    raise HybridftError(f"{where}: label column {column!r} mixes numbers and text (e.g. {values.iloc[first[kinds[0]]]!r} "
                        f"and {values.iloc[first[kinds[1]]]!r}): {row_name(frame, stray)} has {values.iloc[stray]!r} "
                        f"({count[rare]} such row(s)); write every label the same way")


def clean_rows(frame: pd.DataFrame, text_columns: list[str], list_columns: list[str], label_column: str | None,
               strip: bool, drop_empty: bool, drop_duplicates: bool, where: str,
               label_required: bool = True) -> tuple[list[dict], dict]:
    """The cleaned rows as dicts keyed by column, and counts of what was dropped and why. A row with
    input but no label is an error; without ``label_required`` (gold labels of an unlabeled pool) it
    is kept with the label None. A row with neither is dropped as missing."""
    inputs = text_columns + list_columns
    label_columns = [label_column] if label_column else []
    columns = inputs + label_columns
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise HybridftError(f"{where}: no column {absent[0]!r}; columns are {', '.join(map(str, frame.columns))}")
    if label_column and label_required:
        refuse_missing_labels(frame, inputs, label_column, where)
        check_label_kinds(frame, label_column, where)
    counts = {"rows_read": len(frame), "dropped_missing": 0, "dropped_empty": 0, "dropped_duplicates": 0}
    rows, seen = [], set()
    for record in frame[columns].to_dict("records"):
        if any(_is_missing(record[c]) for c in inputs) or (label_required and any(
                is_missing_label(record[c]) for c in label_columns)):
            counts["dropped_missing"] += 1
            continue
        row = {c: _text(record[c], c, where) for c in text_columns}
        if strip:
            row = {c: v.strip() for c, v in row.items()}
        row.update({c: _tokens(record[c], c, where) for c in list_columns})
        if drop_empty and any(len(v) == 0 for v in row.values()):
            counts["dropped_empty"] += 1
            continue
        row.update({c: None if is_missing_label(record[c]) else _label(record[c], c, where) for c in label_columns})
        if drop_duplicates:
            key = tuple(tuple(v) if isinstance(v, list) else v for v in row.values())
            if key in seen:
                counts["dropped_duplicates"] += 1
                continue
            seen.add(key)
        rows.append(row)
    counts["rows_kept"] = len(rows)
    return rows, counts
