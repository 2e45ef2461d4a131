"""Read a data file or a saved datasets folder into a pandas frame, with one-line errors.

pandas reads the files (rather than ``datasets.load_dataset``) because it lets us choose quoting
per format (GLUE TSVs are unquoted), report the exact malformed line, and avoid a cache folder.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import HybridftError
from .conll import read_conll
from .memory import held_table, is_placeholder

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
    ``columns.source`` and ``.target`` columns. A table held in memory (``memory``) is read as it is,
    whatever the format."""
    if is_placeholder(path):
        return held_table(path)
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
            return read_conll(path, _text_of(path))
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


# the first bytes of compressed files: gzip is read, the others are named in an error
COMPRESSED = {b"\x1f\x8b": "gzip", b"PK\x03\x04": "zip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz",
              b"\x28\xb5\x2f\xfd": "zstd"}


def _bytes_of(path: Path) -> bytes:
    """The file's bytes, decompressed if it is gzip-compressed (told by its first bytes, not its name:
    a ``.jsonl.gz`` and a gzip file named ``.jsonl`` read alike)."""
    if not path.is_file():
        raise HybridftError(f"{path} is not a regular file")
    raw = path.read_bytes()
    kind = next((name for magic, name in COMPRESSED.items() if raw.startswith(magic)), None)
    if kind is None:
        return raw
    if kind != "gzip":
        raise HybridftError(f"{path} is {kind}-compressed; decompress it first (gzip files are read as they are)")
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise HybridftError(f"{path} is gzip-compressed but cannot be decompressed ({e}); is it truncated?") from None


def _text_of(path: Path) -> str:
    raw = _bytes_of(path)
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
    rows in 0.1 s). Fields may be of any length (the csv module stops at 128 KiB by default; the
    limit is raised for this read only): long texts are truncated to model.max_length when they are
    tokenized. ``attrs["line_numbers"]`` holds the file line each row starts on, for errors."""
    sep = "\t" if fmt == "tsv" else ","
    quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
    text = _text_of(path)
    header = header_line(text)
    check_header_width(path, header, sep)
    check_separator(path, header, fmt)
    previous_limit = csv.field_size_limit(2**31 - 1)
    try:
        check_unique_columns(path, header, sep, quoting)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            frame = pd.read_csv(io.StringIO(text, newline=""), sep=sep, dtype=str, keep_default_na=False,
                                quoting=quoting, on_bad_lines="warn", engine="python")
        lines = row_start_lines(text, sep, quoting, len(frame))
    finally:
        csv.field_size_limit(previous_limit)
    bad = [line for w in caught if issubclass(w.category, pd.errors.ParserWarning)
           for line in str(w.message).splitlines() if line.startswith("Skipping line")]
    if bad and bad_rows == "error":
        raise HybridftError(f"{path} is malformed: {bad[0].removeprefix('Skipping ')} "
                            f"({len(bad)} such line(s)); set data.bad_rows: skip to drop them")
    frame.attrs["malformed_rows_skipped"] = len(bad)
    if lines is not None:
        frame.attrs["line_numbers"] = lines
    return frame


MAX_COLUMNS = 10_000


def header_line(text: str) -> str:
    """The first non-blank line (pandas skips blank lines before the header too)."""
    start = re.match(r"[\r\n]*", text).end()
    end = text.find("\n", start)
    return text[start:end if end >= 0 else len(text)].rstrip("\r")


def check_header_width(path: Path, header: str, sep: str) -> None:
    """Refuse a header of absurd width before pandas reads it (its python engine is quadratic in the
    number of columns: a 1 MB header line took more than 11 minutes)."""
    if header.count(sep) >= MAX_COLUMNS:
        raise HybridftError(f"{path} has more than {MAX_COLUMNS:,} columns in its header line; is it a "
                            f"{'TSV' if sep == chr(9) else 'CSV'} file with one example per row?")


def check_separator(path: Path, header: str, fmt: str) -> None:
    """A CSV file read as TSV (or the reverse) reads as one column named like the whole header line,
    and the error would be a puzzling "no column 'sentence'; columns are sentence,label"."""
    other = {"csv": "tsv", "tsv": "csv"}[fmt]
    sep, other_sep = ("\t", ",") if fmt == "tsv" else (",", "\t")
    if sep not in header and other_sep in header:
        raise HybridftError(f"{path} is read as {fmt.upper()} (from its name or data.format), but its header line "
                            f"{header[:60]!r} is separated by {'tabs' if other == 'tsv' else 'commas'}: set "
                            f"data.format: {other} or rename the file")


def check_unique_columns(path: Path, header: str, sep: str, quoting: int) -> None:
    """pandas renames a repeated column name (sentence, sentence.1), so the data would be read from the
    first one silently."""
    names = next(csv.reader([header], delimiter=sep, quoting=quoting), [])
    seen: dict[str, int] = {}
    for number, name in enumerate(names, 1):
        if name in seen and name.strip():
            raise HybridftError(f"{path}: the header line names column {name!r} twice (columns {seen[name]} and "
                                f"{number}); rename one of them")
        seen.setdefault(name, number)


def row_start_lines(text: str, sep: str, quoting: int, rows: int) -> np.ndarray | None:
    """The file line each data row starts on, found by replaying pandas' python engine (which reads
    with the csv module): blank lines are skipped, and lines with more fields than the header are
    dropped as malformed. None where the replay does not find as many rows as pandas did."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, quoting=quoting)
    starts, width, end = [], None, 0
    try:
        for fields in reader:
            start, end = end + 1, reader.line_num
            if not (len(fields) > 1 or (fields and fields[0].strip())):
                continue
            if width is None:
                width = len(fields)
            elif len(fields) <= width:
                starts.append(start)
    except csv.Error:
        return None
    return np.asarray(starts, dtype=np.int64) if len(starts) == rows else None


class _RepeatedKey(ValueError):
    """A JSON object naming one key twice: json keeps the last value without a word."""


def _unique_keys(pairs: list[tuple]) -> dict:
    record = {}
    for key, value in pairs:
        if key in record:
            raise _RepeatedKey(key)
        record[key] = value
    return record


def _read_json(path: Path, lines: bool, bad_rows: str = "error") -> pd.DataFrame:
    """JSON lines keep the file line of each record in ``attrs["line_numbers"]``, for errors."""
    text = _text_of(path)
    if not lines and not text.lstrip().startswith("["):
        lines = True  # a .json file holding one object per line
    if not lines:
        return pd.read_json(io.StringIO(text), dtype=False)
    records, numbers, skipped = [], [], 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as e:
            record, why = None, f"line {number} is not JSON ({e.msg})"
        except _RepeatedKey as e:
            record, why = None, f"line {number} names the key {e.args[0]!r} twice (which value was meant?)"
        else:
            why = None if isinstance(record, dict) else f"line {number} is not a JSON object"
        if why is None:
            records.append(record)
            numbers.append(number)
        elif bad_rows == "skip":
            skipped += 1
        else:
            raise HybridftError(f"{path} is malformed: {why}; set data.bad_rows: skip to drop such lines")
    frame = pd.DataFrame.from_records(records)
    frame.attrs["malformed_rows_skipped"] = skipped
    frame.attrs["line_numbers"] = np.asarray(numbers, dtype=np.int64)
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
