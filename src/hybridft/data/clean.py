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


def check_label_kinds(values: list, column: str, where: str) -> None:
    """Labels written as numbers in some rows and as text in others (1, "1", "pos" in one JSON
    column) would be merged or split silently: one kind per column."""
    number = next((v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and not _is_missing(v)), None)
    text = next((v for v in values if isinstance(v, str)), None)
    if number is not None and text is not None:
        raise HybridftError(f"{where}: label column {column!r} mixes numbers and text (e.g. {number!r} and "
                            f"{text!r}); write every label the same way")


def clean_rows(frame: pd.DataFrame, text_columns: list[str], list_columns: list[str], label_column: str | None,
               strip: bool, drop_empty: bool, drop_duplicates: bool, where: str) -> tuple[list[dict], dict]:
    """The cleaned rows as dicts keyed by column, and counts of what was dropped and why."""
    label_columns = [label_column] if label_column else []
    columns = text_columns + list_columns + label_columns
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise HybridftError(f"{where}: no column {absent[0]!r}; columns are {', '.join(map(str, frame.columns))}")
    if label_column:
        check_label_kinds(frame[label_column].tolist(), label_column, where)
    counts = {"rows_read": len(frame), "dropped_missing": 0, "dropped_empty": 0, "dropped_duplicates": 0}
    rows, seen = [], set()
    for record in frame[columns].to_dict("records"):
        if any(_is_missing(record[c]) for c in columns):
            counts["dropped_missing"] += 1
            continue
        row = {c: _text(record[c], c, where) for c in text_columns}
        if strip:
            row = {c: v.strip() for c, v in row.items()}
        row.update({c: _tokens(record[c], c, where) for c in list_columns})
        row.update({c: _label(record[c], c, where) for c in label_columns})
        if drop_empty and any(len(v) == 0 for v in row.values()):
            counts["dropped_empty"] += 1
            continue
        if drop_duplicates:
            key = tuple(tuple(v) if isinstance(v, list) else v for v in row.values())
            if key in seen:
                counts["dropped_duplicates"] += 1
                continue
            seen.add(key)
        rows.append(row)
    counts["rows_kept"] = len(rows)
    return rows, counts
