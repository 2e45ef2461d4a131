"""Folders hybridft writes, and the one rule for replacing them.

Every folder hybridft writes carries a marker file. ``--overwrite`` deletes a folder only when it
carries the marker of the kind being replaced, and only once the new content is ready: a model is
written to a temporary sibling first and renamed into place, so the folder is either the old one or
the new one, never half of each. Nothing without a marker is ever deleted.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError

from .errors import HybridftError

# what a failed write raises: the OS (a full disk, a read-only folder) or safetensors, which wraps it
WRITE_ERRORS = (OSError, SafetensorError)

RUN_MARKER = ".hybridft-run"
MODEL_MARKER = ".hybridft-model"
COMPARE_MARKER = ".hybridft-compare"
WHAT = {RUN_MARKER: "run", MODEL_MARKER: "model", COMPARE_MARKER: "comparison"}
LOCK_NAME = ".hybridft-lock"  # a run folder's lock (RunLock); a folder holding only it is empty


def is_empty(path: Path) -> bool:
    return path.is_dir() and all(p.name == LOCK_NAME for p in path.iterdir())


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


@contextmanager
def new_folder(path: Path, marker: str):
    """A temporary folder to write ``path``'s new content into; on success it is marked, its files
    follow the umask, and it replaces ``path`` (see ``replace_folder``); on failure it is removed."""
    tmp = temporary_sibling(path)
    try:
        yield tmp
        mark(tmp, marker)
        follow_umask(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written stays behind
        raise
    replace_folder(tmp, path, marker)


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


class RunLock:
    """An exclusive lock on a run folder for the whole run, held by the main process.

    It is a ``flock`` on ``<folder>/.hybridft-lock``: the kernel releases it when the process ends,
    however it ends, so a killed run never blocks ``--resume``. The file holds the holder's PID, for
    the message a second run gets. A folder the lock had to create is removed again if the run
    stops before writing anything into it (bad input leaves no folder behind)."""

    def __init__(self, folder: Path):
        self.folder, self.fd, self.created = folder.resolve(), None, False

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def __enter__(self) -> RunLock:
        if self.folder.exists() and not self.folder.is_dir():
            raise HybridftError(f"{self.folder} is a file, not a folder; choose another output folder")
        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise HybridftError(f"{self.folder} is in use by another hybridft run (PID {holder}); wait for it to "
                                "end or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.created and [p.name for p in self.folder.iterdir()] == [LOCK_NAME]:
            shutil.rmtree(self.folder)  # ours, and nothing but the lock was written into it
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def clear_folder(folder: Path) -> None:
    """Delete what a folder holds, but its lock (``--overwrite`` of a run, under that lock)."""
    for path in folder.iterdir():
        if path.name != LOCK_NAME:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def follow_umask(folder: Path) -> None:
    """Files the way the user's umask says (safetensors writes its files 0600, the rest are 0644)."""
    mask = os.umask(0)
    os.umask(mask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~mask)
