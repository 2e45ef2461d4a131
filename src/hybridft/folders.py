"""Folders hybridft writes, and the one rule for replacing them.

Every folder hybridft writes carries a marker file. ``--overwrite`` deletes a folder only when it
carries the marker of the kind being replaced, and only once the new content is ready: a model is
written to a temporary sibling first and renamed into place, so the folder is either the old one or
the new one, never half of each. Nothing without a marker is ever deleted.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import HybridftError

RUN_MARKER = ".hybridft-run"
MODEL_MARKER = ".hybridft-model"
COMPARE_MARKER = ".hybridft-compare"
WHAT = {RUN_MARKER: "run", MODEL_MARKER: "model", COMPARE_MARKER: "comparison"}


def is_empty(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def check_output(path: Path, marker: str, overwrite: bool, flag: str = "--overwrite") -> None:
    """Refuse an output path that holds anything but a replaceable hybridft folder of this kind.
    Deletes nothing."""
    what = WHAT[marker]
    if not path.exists() or is_empty(path):
        return
    if not path.is_dir():
        raise HybridftError(f"{path} is a file, not a folder; choose another output folder")
    if not (path / marker).is_file():
        raise HybridftError(f"{path} is not empty and holds no hybridft {what}; choose another output folder")
    if not overwrite:
        raise HybridftError(f"{path} already holds a hybridft {what}; pass {flag} to replace it")


def mark(path: Path, marker: str) -> None:
    (path / marker).write_text(f"hybridft {WHAT[marker]} folder\n", encoding="utf-8")


def temporary_sibling(path: Path) -> Path:
    """An empty folder next to ``path`` to write the new content into (``path`` itself may be ``.``)."""
    path = path.resolve()
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # left by an interrupted write of ours: the name is hybridft's
    tmp.mkdir(parents=True)
    return tmp


def replace_folder(tmp: Path, path: Path, marker: str) -> None:
    """Move the finished ``tmp`` to ``path``. An existing ``path`` is deleted only when it carries
    ``marker`` (or is empty); it is first moved aside, so a failure leaves the old folder in place."""
    path = path.resolve()
    if path.exists() and not is_empty(path) and not (path / marker).is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        raise HybridftError(f"{path} holds no hybridft {WHAT[marker]}; it was left as it was")
    old = path.with_name(f".{path.name}.old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def write_atomic(path: Path, text: str) -> None:
    """The file holds the old text or the new, never a part of either (a kill or a full disk)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
