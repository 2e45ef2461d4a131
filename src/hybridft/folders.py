"""Folders hybridft writes, and the one rule for replacing them.

Every folder hybridft writes carries a marker file. ``--overwrite`` deletes a folder only when it
carries the marker of the kind being replaced, and only once the new content is ready: a model is
written to a temporary sibling first and renamed into place, so the folder is either the old one or
the new one, never half of each. Nothing without a marker is ever deleted, and in a marked folder only
the entries hybridft writes (their names are known): what a user added stays. Temporary names are
unique to the process that makes them, so no one else's entry is ever taken for one.
"""

from __future__ import annotations

import fcntl
import fnmatch
import os
import secrets
import shutil
import sys
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
TEMP_TAG = "-hybridft"  # in the names of temporary entries: .<name>.<random>-hybridft.tmp (or .old)


# What hybridft writes into each kind of folder: ``--overwrite`` deletes these entries and nothing else
# (patterns as in fnmatch; a model folder's marker also lists the files that folder was written with)
RUN_ENTRIES = (RUN_MARKER, "recipe.yaml", "metrics.jsonl", "report.json", "report.md", "report.html", "model",
               "checkpoints", "peft_adapter", "tensorboard", "wandb", "trackers.json")
MODEL_ENTRIES = (MODEL_MARKER, "config.json", "generation_config.json", "hybridft.json", "adapters.safetensors",
                 "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors", "encoder",
                 "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                 "tokenizer.model", "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece*.model",
                 "*.spm", "chat_template.jinja", "chat_template.json")
ENTRIES = {RUN_MARKER: RUN_ENTRIES, MODEL_MARKER: MODEL_ENTRIES}


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


def mark(path: Path, marker: str, wrote: list[str] | None = None) -> None:
    """The marker; ``wrote``: the entries hybridft put in the folder, which a later ``--overwrite``
    may delete (beside the known names)."""
    listing = "".join(f"{name}\n" for name in wrote or [])
    (path / marker).write_text(f"hybridft {WHAT[marker]} folder\n{listing}", encoding="utf-8")


def written_entries(folder: Path, marker: str) -> set[str]:
    """The entries the folder's marker lists (none in a marker written before markers listed them)."""
    try:
        return set((folder / marker).read_text(encoding="utf-8").splitlines()[1:])
    except (OSError, UnicodeDecodeError):
        return set()


def kind_of(entry: Path) -> str | None:
    """The marker of the hybridft folder ``entry`` is (a run's model/, a multi-task model's task folder)."""
    if entry.is_dir() and not entry.is_symlink():
        return next((m for m in ENTRIES if (entry / m).is_file()), None)
    return None


def is_ours(entry: Path, marker: str, listed: set[str]) -> bool:
    """Whether hybridft wrote ``entry`` into a folder of kind ``marker`` (its temporary names included)."""
    name = entry.name
    if name in listed or any(fnmatch.fnmatchcase(name, pattern) for pattern in ENTRIES[marker]):
        return True
    if marker == MODEL_MARKER and kind_of(entry) == MODEL_MARKER:
        return True  # a multi-task model's task folder
    return any(fnmatch.fnmatchcase(name, f".{known}.*{TEMP_TAG}.{end}") for known in ENTRIES[marker]
               for end in ("tmp", "old"))


def remove(entry: Path) -> None:
    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def remove_ours(folder: Path, marker: str) -> list[str]:
    """Delete what hybridft wrote into ``folder`` but its marker and lock; returns the entries it
    kept (``a/b`` inside a nested hybridft folder, which then keeps its marker)."""
    listed, kept = written_entries(folder, marker), []
    for entry in sorted(folder.iterdir()):
        if entry.name in (marker, LOCK_NAME):
            continue
        if not is_ours(entry, marker, listed):
            kept.append(entry.name + ("/" if entry.is_dir() else ""))
            continue
        inner = kind_of(entry)
        left = remove_ours(entry, inner) if inner else []
        kept += [f"{entry.name}/{k}" for k in left]
        if not left:
            remove(entry)
    return kept


def say_kept(folder: Path, kept: list[str]) -> None:
    if kept:
        print(f"note: kept {', '.join(kept)} in {folder}: hybridft did not write them", file=sys.stderr, flush=True)


def fresh_name(path: Path, end: str, make) -> Path:
    """A new entry ``.<name>.<random>-hybridft.<end>`` beside ``path``, made by ``make`` (which must
    fail on an existing name): unique to this process, so no one else's entry is ever taken for it."""
    for _ in range(100):
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_TAG}.{end}")
        try:
            make(candidate)
            return candidate
        except FileExistsError:
            continue
    raise HybridftError(f"cannot find a free temporary name beside {path}")


def temporary_sibling(path: Path) -> Path:
    """An empty folder next to ``path`` to write the new content into (``path`` itself may be ``.``)."""
    path = path.resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HybridftError(f"cannot create the folder {path.parent}: {e.strerror or e}") from None
    return fresh_name(path, "tmp", lambda p: p.mkdir(0o777))  # mode 0777: the umask applies


@contextmanager
def new_folder(path: Path, marker: str):
    """A temporary folder to write ``path``'s new content into; on success it is marked, its files
    follow the umask, and it replaces ``path`` (see ``replace_folder``); on failure it is removed."""
    tmp = temporary_sibling(path)
    try:
        yield tmp
        mark(tmp, marker, wrote=sorted(p.name for p in tmp.iterdir()))
        follow_umask(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written stays behind
        raise
    replace_folder(tmp, path, marker)


def replace_folder(tmp: Path, path: Path, marker: str) -> None:
    """Move the finished ``tmp`` to ``path``. An existing ``path`` is replaced only when it carries
    ``marker`` (or is empty); it is first moved aside, so a failure leaves the old folder in place.
    What hybridft did not write in the old folder moves into the new one."""
    path = path.resolve()
    if path.exists() and not is_empty(path) and not (path / marker).is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        raise HybridftError(f"{path} holds no hybridft {WHAT[marker]}; it was left as it was")
    if not path.exists():
        os.replace(tmp, path)
        return
    old = fresh_name(path, "old", lambda p: p.mkdir(0o700))
    os.replace(path, old)  # onto the empty folder just made: its name is this process's alone
    os.replace(tmp, path)
    say_kept(path, carry_over(old, path, marker))
    if remove_ours(old, marker):  # names the new folder holds too: the old ones stay, and we say where
        print(f"note: the replaced {WHAT[marker]}'s entries that hybridft did not write are in {old}",
              file=sys.stderr, flush=True)
    else:
        shutil.rmtree(old)


def carry_over(old: Path, new: Path, marker: str) -> list[str]:
    """Move the entries of ``old`` that hybridft did not write (and its lock) into ``new``, where the
    name is free; returns what moved."""
    listed, moved = written_entries(old, marker), []
    for entry in sorted(old.iterdir()):
        target = new / entry.name
        if entry.name != LOCK_NAME and is_ours(entry, marker, listed):
            inner = kind_of(entry)
            if inner and kind_of(target) == inner:
                moved += [f"{entry.name}/{k}" for k in carry_over(entry, target, inner)]
        elif not (target.exists() or target.is_symlink()):
            os.replace(entry, target)
            moved += [] if entry.name == LOCK_NAME else [entry.name + ("/" if target.is_dir() else "")]
    return moved


def write_atomic(path: Path, text: str) -> None:
    """The file holds the old text or the new, never a part of either (a kill or a full disk)."""
    fd = None

    def create(candidate: Path) -> None:
        nonlocal fd
        fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies

    tmp = fresh_name(path, "tmp", create)
    try:
        with open(fd, "w", encoding="utf-8") as f:
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
    the message a second run gets. ``check`` decides whether the folder may be written at all: it
    runs once a lock file that is already there is held, and before one is created, so that a
    refused folder gets nothing written into it. A folder the lock had to create is removed again if
    the run stops before writing anything into it (bad input leaves no folder behind)."""

    def __init__(self, folder: Path, check=None):
        self.folder, self.fd, self.created, self.check = folder.resolve(), None, False, check

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def __enter__(self) -> RunLock:
        if self.folder.exists() and not self.folder.is_dir():
            raise HybridftError(f"{self.folder} is a file, not a folder; choose another output folder")
        if self.path.is_file():  # a live run's lock is the first thing to say
            self.fd = self._locked(self._open(os.O_RDWR))
        try:
            if self.check is not None:
                self.check()
            if self.fd is None:
                self.created = not self.folder.exists()
                self._open_new()
        except BaseException:
            self._release()
            raise
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def _open(self, flags: int) -> int:
        try:
            return os.open(self.path, flags, 0o666)
        except OSError as e:  # a read-only mount, no permission, a full disk: the run's first write
            raise HybridftError(f"cannot write into {self.folder}: {e.strerror or e}; choose another output "
                                "folder") from None

    def _open_new(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise HybridftError(f"cannot create {self.folder}: {e.strerror or e}; choose another output "
                                "folder") from None
        try:
            self.fd = self._locked(self._open(os.O_RDWR | os.O_CREAT))
        except HybridftError:
            if self.created and not any(self.folder.iterdir()):
                self.folder.rmdir()
            raise

    def _locked(self, fd: int) -> int:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise HybridftError(f"{self.folder} is in use by another hybridft run (PID {holder}); wait for it to "
                                "end or choose another --out") from None
        return fd

    def _release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __exit__(self, *exc) -> None:
        if self.created and [p.name for p in self.folder.iterdir()] == [LOCK_NAME]:
            shutil.rmtree(self.folder)  # ours, and nothing but the lock was written into it
        self._release()


def clear_folder(folder: Path) -> None:
    """Delete what hybridft wrote into a run folder, but its lock (``--overwrite`` of a run, under that
    lock); what someone else put there stays, and the user is told."""
    say_kept(folder, remove_ours(folder, RUN_MARKER))


def follow_umask(folder: Path) -> None:
    """Files the way the user's umask says (safetensors writes its files 0600, the rest are 0644)."""
    mask = os.umask(0)
    os.umask(mask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~mask)
