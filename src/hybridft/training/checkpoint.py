"""Checkpoints that a kill at any moment cannot corrupt.

A checkpoint is a folder written under a temporary name and renamed into place (rename is atomic
on POSIX); ``latest`` is a one-line pointer file replaced the same way. Weights are safetensors;
optimizer, scheduler and RNG states are plain tensors/containers loaded with ``weights_only=True``,
so no pickled code is ever executed on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from ..data.readers import LANG, parallel_files
from ..errors import HybridftError
from ..folders import WRITE_ERRORS, write_atomic

LATEST = "latest"
SHARDED = "sharded"  # in a checkpoint of a sharded (fsdp) stage: its torch.distributed.checkpoint files
SELECTOR_STATE = "selectors.safetensors"
INPUTS = "inputs.json"  # the sha256 of every data file the run reads: in the checkpoints folder, and in each checkpoint


def selector_state(selectors) -> dict:
    """Every selector's state (e.g. importance masks) under ``<index>/<key>``."""
    return {f"{i}/{k}": v for i, s in enumerate(selectors) for k, v in s.state_dict().items()}


def restore_selector_state(path: Path, selectors) -> None:
    state = load_file(str(path / SELECTOR_STATE)) if (path / SELECTOR_STATE).is_file() else {}
    for i, s in enumerate(selectors):
        s.load_state_dict({k.split("/", 1)[1]: v for k, v in state.items() if k.split("/", 1)[0] == str(i)})


def objective_state(objectives) -> dict:
    """Every objective's state (e.g. a pseudo-labeled pool, an MLM head) under ``objective<index>/<key>``."""
    return {f"objective{i}/{k}": v for i, o in enumerate(objectives) for k, v in o.state_dict().items()}


def restore_objective_state(path: Path, objectives) -> None:
    state = load_file(str(path / SELECTOR_STATE)) if (path / SELECTOR_STATE).is_file() else {}
    for i, o in enumerate(objectives):
        prefix = f"objective{i}/"
        mine = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if mine:
            o.load_state_dict(mine)


FINE_TUNED = "fine_tuned/"
KEPT_STAGE = "stage_weights/"  # + "<stage index>/<tensor name>": the weights a stage:<name> teacher needs


def saved_artifacts(run) -> tuple[dict, dict]:
    """What later stages need from earlier ones: a mix stage's report (JSON) and M_fine's weights,
    and the final weights of stages that a later teacher names (tensors)."""
    artifacts = run.artifacts
    reports = {"mix": artifacts.mix_report} if artifacts.mix_report is not None else {}
    tensors = {FINE_TUNED + k: v for k, v in (artifacts.fine_tuned_state or {}).items()}
    for name, weights in artifacts.stage_weights.items():
        index = run.recipe.stage_index(name)  # stage names may hold "/"; indices cannot
        tensors.update({f"{KEPT_STAGE}{index}/{k}": v for k, v in weights.items()})
    return reports, tensors


def restore_artifacts(run, checkpoint: Path, state: dict) -> None:
    run.artifacts.mix_report = state.get("artifacts", {}).get("mix", run.artifacts.mix_report)
    extra = checkpoint / SELECTOR_STATE
    if not extra.is_file():
        return
    tensors = load_file(str(extra))
    fine = {k[len(FINE_TUNED):]: v for k, v in tensors.items() if k.startswith(FINE_TUNED)}
    if fine:
        run.artifacts.fine_tuned_state = fine
    kept = {}
    for key, value in tensors.items():
        if key.startswith(KEPT_STAGE):
            index, name = key[len(KEPT_STAGE):].split("/", 1)
            kept.setdefault(run.recipe.stage_name(int(index)), {})[name] = value
    if kept:
        run.artifacts.stage_weights = kept


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def process_rng_states(processes) -> list[dict]:
    """Every process's RNG state, in process order (call it on all processes). Each process draws
    its own dropout masks for its own share of the batch, so a resumed multi-process run is only
    bit-identical if each one gets its own state back, not the main process's."""
    return processes.gather(rng_state())


def rng_file(process_index: int) -> str:
    return "rng.pt" if process_index == 0 else f"rng-process{process_index}.pt"


def save_checkpoint(root: Path, name: str, model, optimizer, scheduler, state: dict, keep: int,
                    extra_files: tuple[Path, ...] = (), extra_tensors: dict | None = None,
                    rng_states: list[dict] | None = None, staged: bool = False) -> Path:
    """``extra_files`` (e.g. the best weights so far) are copied in, so the checkpoint is self-contained.
    ``staged``: the temporary folder already holds the processes' shards (``stage_sharded``); model and
    optimizer are then None. A failed write (a full disk) removes its partial folder and leaves the
    previous checkpoint as ``latest``."""
    tmp = root / f".tmp-{name}"
    try:
        return _write_checkpoint(root, tmp, name, model, optimizer, scheduler, state, keep, extra_files,
                                 extra_tensors, rng_states or [rng_state()], staged)
    except WRITE_ERRORS as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failure(f"checkpoint {name} in {root}", e, root) from None


def write_failure(what: str, error: Exception, checkpoint_dir: Path) -> HybridftError:
    """The one-line error of a failed write (a full disk, a read-only folder) during a run: it names
    the checkpoint that ``--resume`` continues from once the write can succeed."""
    reason = getattr(error, "strerror", None) or (str(error).splitlines() or [type(error).__name__])[0]
    previous = latest_checkpoint(checkpoint_dir)
    kept = f"; the last complete checkpoint, {previous.name}, is intact: free space, then continue with --resume" \
        if previous else ""
    return HybridftError(f"cannot write {what}: {reason}{kept}")


@contextmanager
def guarded_write(what: str, checkpoint_dir: Path):
    try:
        yield
    except WRITE_ERRORS as e:
        raise write_failure(what, e, checkpoint_dir) from None


def stage_sharded(root: Path, name: str, processes, model, optimizer) -> None:
    """Every process writes its shards of model and optimizer into checkpoint ``name``'s temporary
    folder (``torch.distributed.checkpoint``); ``save_checkpoint(..., staged=True)`` completes it."""
    tmp = root / f".tmp-{name}"
    if processes.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    processes.barrier()
    with guarded_write(f"checkpoint {name} in {root}", root):
        processes.save_sharded(tmp / SHARDED, model, optimizer)
    processes.barrier()


def _write_checkpoint(root, tmp, name, model, optimizer, scheduler, state, keep, extra_files, extra_tensors,
                      rng_states, staged):
    root.mkdir(parents=True, exist_ok=True)
    if not staged:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    for extra in (*extra_files, root / INPUTS):
        if extra.is_file():
            shutil.copy2(extra, tmp / extra.name)
    if model is not None:
        save_model(model, str(tmp / "model.safetensors"))
    if extra_tensors:
        save_file({k: v.contiguous() for k, v in extra_tensors.items()}, str(tmp / SELECTOR_STATE))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if scheduler is not None:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    for index, rng in enumerate(rng_states):
        torch.save(rng, tmp / rng_file(index))
    # state.json is written last: a folder without it is incomplete by construction
    write_atomic(tmp / "state.json", json.dumps(state))
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_atomic(root / LATEST, name)
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    done = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.stat().st_mtime_ns)
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint ``latest`` names, if it names a complete one (never raises: also used to word
    the error of a failed write)."""
    name = pointed_name(root)
    path = root / name if name else None
    return path if path is not None and (path / "state.json").is_file() else None


def pointed_name(root: Path) -> str | None:
    """What ``latest`` holds, if it is a checkpoint's name (a folder directly in ``root``)."""
    try:
        name = (root / LATEST).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if name and Path(name).name == name and name not in (".", "..") else None


def checkpoint_to_resume(root: Path) -> Path | None:
    """The checkpoint ``--resume`` continues from; None when the run wrote none yet. A ``latest`` that
    names no complete checkpoint (damaged, edited) is an error naming the newest complete one: a
    silent start from scratch would throw the run's training away."""
    pointer = root / LATEST
    if not pointer.exists():
        return None
    found = latest_checkpoint(root)
    if found is not None:
        return found
    complete = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                       and (p / "state.json").is_file()), key=lambda p: (p / "state.json").stat().st_mtime_ns)
    held = pointed_name(root)
    what = f"it names {held!r}, which is no complete checkpoint" if held else "it holds no checkpoint's name"
    fix = f"the newest complete checkpoint is {complete[-1].name}: write that name into {pointer} to resume from " \
          "it" if complete else "no complete checkpoint is left: start the run again with --overwrite"
    raise HybridftError(f"{pointer} is corrupt ({what}); {fix}")


def load_plain(path: Path):
    """A file of tensors and plain containers (optimizer, scheduler, RNG state). A pickle of other
    objects is refused by ``weights_only`` and never run; either way it is one line."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError:
        raise HybridftError(f"{path} holds pickled Python objects, which hybridft does not load; hybridft "
                            "did not write it: restore the checkpoint or resume from another one") from None
    except (RuntimeError, EOFError, OSError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise HybridftError(f"{path} cannot be read ({reason}): the checkpoint is damaged; resume from another "
                            "one") from None


def load_checkpoint(path: Path, model, optimizer=None, scheduler=None, process_index: int = 0) -> dict:
    """Weights (model None: a sharded checkpoint, loaded by the strategy), optimizer, scheduler, this
    process's RNG state; returns state.json's content."""
    if model is not None:
        try:
            load_model(model, str(path / "model.safetensors"))
        except (SafetensorError, OSError) as e:
            reason = (str(e).splitlines() or [type(e).__name__])[0]
            raise HybridftError(f"{path / 'model.safetensors'} cannot be read ({reason}): the checkpoint is "
                                "damaged; resume from another one") from None
    for part, name in ((optimizer, "optimizer.pt"), (scheduler, "scheduler.pt")):
        if part is None:
            continue
        if not (path / name).is_file():  # a fresh one would silently restart the run's moments or schedule
            raise HybridftError(f"{path} has no {name}: the checkpoint is incomplete; resume from another one")
        part.load_state_dict(load_plain(path / name))
    mine = path / rng_file(process_index)
    if not mine.is_file() and process_index > 0:
        print(f"note: {path.name} was written by fewer processes and holds no random state for process "
              f"{process_index}: it continues from the main process's (its dropout draws differ from an "
              "uninterrupted run's)", file=sys.stderr)
    set_rng_state(load_plain(mine if mine.is_file() else path / "rng.pt"))
    return json.loads((path / "state.json").read_text(encoding="utf-8"))


def input_files(recipe, base_dir: Path) -> dict[str, list[Path]]:
    """Every data file a recipe reads, by its recipe key (a saved dataset's folder: all its files)."""
    sections = {"data": recipe.data} if recipe.data is not None else \
        {f"tasks.{i}.data": t.data for i, t in enumerate(recipe.tasks)}
    named = {f"{where}.{split}": getattr(data, split) for where, data in sections.items()
             for split in ("train", "validation", "test") if getattr(data, split)}
    if recipe.data is not None and recipe.data.unlabeled is not None:
        named["data.unlabeled.path"] = recipe.data.unlabeled.path
    languages, files = recipe.data.languages if recipe.data is not None else None, {}
    for key, value in named.items():
        path = Path(value) if Path(value).is_absolute() else base_dir / value
        paths = parallel_files(path, languages) if LANG in str(value) else (path,)
        files[key] = sorted(f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
    return files


def fingerprint(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def input_fingerprints(recipe, base_dir: Path) -> dict[str, str]:
    """{recipe key: sha256 of its data}: a resumed run must read the data it started on."""
    return {key: fingerprint(files) for key, files in input_files(recipe, base_dir).items()}


def check_same_inputs(checkpoint: Path, now: dict[str, str], recipe, flag: str) -> None:
    """Refuse to resume on data other than the checkpoint's: the run would continue silently on
    other examples (or flipped labels). A checkpoint from before fingerprints were kept passes."""
    stored = checkpoint / INPUTS
    if not stored.is_file():
        return
    then = json.loads(stored.read_text(encoding="utf-8"))
    changed = [key for key in sorted(set(then) | set(now)) if then.get(key) != now.get(key)]
    if changed:
        names = ", ".join(f"{key} ({getattr_path(recipe, key) or 'none'})" for key in changed)
        raise HybridftError(f"the data changed since {checkpoint.name} was written: {names}; resume on the data the "
                            f"run started with, or pass {flag} to continue on the new data")


def getattr_path(obj, dotted: str):
    for part in dotted.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part, None)
    return obj
