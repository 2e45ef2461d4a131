"""Read a data file or a saved datasets folder into a pandas frame, with one-line errors.

pandas reads the files (rather than ``datasets.load_dataset``) because it lets us choose quoting
per format (GLUE TSVs are unquoted), report the exact malformed line, and avoid a cache folder.
"""

from __future__ import annotations

import csv
import gzip
import json
import warnings
from pathlib import Path

import pandas as pd

from ..errors import HybridftError
from .conll import read_conll

SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet",
                  ".conll": "conll", ".iob": "conll", ".bio": "conll", ".txt": "txt"}
LANG = "{lang}"  # in a parallel-text path: replaced by the source and the target language


def detect_format(path: Path, fmt: str, task: str) -> str:
    if fmt != "auto":
        return fmt
    if LANG in str(path):
        return "parallel"
    if path.is_dir():
        return "disk"
    suffix = Path(path.stem).suffix if path.suffix.lower() == ".gz" else path.suffix  # x.txt.gz reads as x.txt
    if suffix.lower() in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[suffix.lower()]
    if task == "token_classification":
        return "conll"  # CoNLL files often have names like eng.train
    raise HybridftError(f"cannot tell the format of {path} from its name; set data.format")


def read_table(path: Path, fmt: str, task: str, split: str, bad_rows: str = "error", languages=None,
               columns=None) -> pd.DataFrame:
    """The rows of one split. ``split`` picks the split of a saved DatasetDict. With
    ``bad_rows="skip"``, malformed csv/tsv/jsonl lines are dropped and counted in
    ``frame.attrs["malformed_rows_skipped"]``; otherwise the first one is an error naming its line.
    Parallel text (a path with ``{lang}``) reads ``languages.source`` and ``.target`` into the
    ``columns.source`` and ``.target`` columns."""
    fmt = detect_format(path, fmt, task)
    files = parallel_files(path, languages) if fmt == "parallel" else (path,)
    for file in files:
        if not file.exists():
            raise HybridftError(f"data file not found: {file}")
    try:
        if fmt == "parallel":
            return _read_parallel(files, (columns.source, columns.target))
        if fmt == "txt":
            return pd.DataFrame({"text": [line for line in _text_of(path).splitlines() if line.strip()]})
        if fmt == "disk":
            return _read_disk(path, split)
        if fmt == "conll":
            return read_conll(path)
        if fmt in ("csv", "tsv"):
            return _read_csv(path, fmt, bad_rows)
        if fmt in ("json", "jsonl"):
            return _read_json(path, lines=fmt == "jsonl", bad_rows=bad_rows)
        if fmt == "parquet":
            return pd.read_parquet(path)
    except UnicodeDecodeError as e:
        raise HybridftError(f"{e.__dict__.get('path', path)} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except pd.errors.ParserError as e:
        raise HybridftError(f"{path} is malformed: {str(e).strip().splitlines()[-1]}; "
                            "set data.bad_rows: skip to drop such rows") from None
    except pd.errors.EmptyDataError:
        raise HybridftError(f"{path} is empty") from None
    except (ValueError, OSError) as e:
        raise HybridftError(f"cannot read {path} as {fmt}: {str(e).strip().splitlines()[0]}") from None
    raise HybridftError(f"unsupported data format {fmt!r}")


def parallel_files(path: Path, languages) -> tuple[Path, Path]:
    if LANG not in str(path):
        raise HybridftError(f"parallel text: the path {path} needs {LANG} where the language goes (train.{LANG}.gz)")
    if languages is None:
        raise HybridftError("parallel text needs data.languages (source and target, e.g. de and en)")
    return tuple(Path(str(path).replace(LANG, lang)) for lang in (languages.source, languages.target))


def _text_of(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix.lower() == ".gz":
        raw = gzip.decompress(raw)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        e.path = path  # which of two parallel files, for the error message
        raise


def _read_parallel(files: tuple[Path, Path], names: tuple[str, str]) -> pd.DataFrame:
    """Line i of the source file translates line i of the target file (blank lines kept: they align)."""
    sides = [_text_of(f).splitlines() for f in files]
    if len(sides[0]) != len(sides[1]):
        raise HybridftError(f"parallel files do not align: {files[0].name} has {len(sides[0])} lines, "
                            f"{files[1].name} has {len(sides[1])}")
    return pd.DataFrame(dict(zip(names, sides, strict=True)))


def _read_csv(path: Path, fmt: str, bad_rows: str) -> pd.DataFrame:
    """dtype=str keeps labels like "01" and texts like "NA" exactly as written. The python engine
    reports every malformed line (a wrong field count or broken quoting) as a warning with its line
    number, where the C engine silently accepts some broken quoting; it is fast enough (67k SST-2
    rows in 0.1 s). Fields may be of any length (the csv module stops at 128 KiB by default): long
    texts are truncated to model.max_length when they are tokenized."""
    sep = "\t" if fmt == "tsv" else ","
    check_header_width(path, sep)
    csv.field_size_limit(2**31 - 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False,
                            quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL, encoding="utf-8-sig",
                            on_bad_lines="warn", engine="python")
    bad = [line for w in caught if issubclass(w.category, pd.errors.ParserWarning)
           for line in str(w.message).splitlines() if line.startswith("Skipping line")]
    if bad and bad_rows == "error":
        raise HybridftError(f"{path} is malformed: {bad[0].removeprefix('Skipping ')} "
                            f"({len(bad)} such line(s)); set data.bad_rows: skip to drop them")
    frame.attrs["malformed_rows_skipped"] = len(bad)
    return frame


MAX_COLUMNS = 10_000


def check_header_width(path: Path, sep: str) -> None:
    """Refuse a header of absurd width before pandas reads it (its python engine is quadratic in the
    number of columns: a 1 MB header line took more than 11 minutes)."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        header = f.readline(64 * MAX_COLUMNS)
    if header.count(sep) >= MAX_COLUMNS:
        raise HybridftError(f"{path} has more than {MAX_COLUMNS:,} columns in its header line; is it a "
                            f"{'TSV' if sep == chr(9) else 'CSV'} file with one example per row?")


def _read_json(path: Path, lines: bool, bad_rows: str = "error") -> pd.DataFrame:
    text = path.read_bytes().decode("utf-8-sig")
    if not lines and not text.lstrip().startswith("["):
        lines = True  # a .json file holding one object per line
    if not lines:
        from io import StringIO

        return pd.read_json(StringIO(text), dtype=False)
    records, skipped = [], 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            record, why = None, f"line {number} is not JSON ({e.msg})"
        else:
            why = None if isinstance(record, dict) else f"line {number} is not a JSON object"
        if why is None:
            records.append(record)
        elif bad_rows == "skip":
            skipped += 1
        else:
            raise HybridftError(f"{path} is malformed: {why}; set data.bad_rows: skip to drop such lines")
    frame = pd.DataFrame.from_records(records)
    frame.attrs["malformed_rows_skipped"] = skipped
    return frame


def _read_disk(path: Path, split: str) -> pd.DataFrame:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as e:
        raise HybridftError(f"{path} is not a datasets.save_to_disk folder: {e}") from None
    if isinstance(loaded, datasets.DatasetDict):
        names = {"validation": ("validation", "dev", "valid"), "test": ("test",), "train": ("train",)}[split]
        for name in names:
            if name in loaded:
                return loaded[name].to_pandas()
        raise HybridftError(f"{path} has splits {list(loaded)}; none is a {split} split")
    return loaded.to_pandas()
