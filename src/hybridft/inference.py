"""Use a saved model: evaluate it on a labeled file, or label new text."""

from __future__ import annotations

import numbers
from pathlib import Path

import torch
from pydantic import ValidationError
from transformers import DataCollatorWithPadding

from .data.collate import collator_for
from .data.memory import is_placeholder
from .data.prepare import check_labels, encode, read_rows
from .errors import HybridftError
from .evaluate import evaluate, predict
from .generative.chat import encode_chat, prompt_ids
from .generative.data import bos_id, encode_causal, encode_seq2seq, read_generative_rows
from .generative.evaluate import GENERATIVE_EVAL_ROWS, teacher_forced_metrics
from .generative.generate import generate_texts
from .generative.metrics import is_uncased, translation_metrics
from .generative.models import stop_at_end_of_turn
from .model_io import load_saved
from .recipe import Columns, DataSpec, GenerationSpec, LanguagePair, format_validation_error


def evaluate_file(model_dir: str, data_path: str, fmt: str, batch_size: int | None, columns: dict,
                  progress: bool = False) -> dict:
    return evaluate_with(*load_saved(model_dir), data_path, fmt, batch_size, columns, progress)


def data_place(data_path) -> str:
    """A data file's absolute path, or a table held in memory's placeholder (``data.memory``)."""
    return str(data_path) if is_placeholder(data_path) else str(Path(data_path).resolve())


def evaluate_with(model, tokenizer, meta: dict, labels: list[str], data_path, fmt: str, batch_size: int | None,
                  columns: dict, progress: bool = False, device=None) -> dict:
    """The metrics of a loaded model on labeled data (a file, or a table held in memory), as ``hybridft
    eval`` prints them; ``device``: where to run (default: a GPU if there is one)."""
    cols = Columns(**{**meta.get("columns", {}), **{k: v for k, v in columns.items() if v}})
    task = meta["task"]
    if task in ("causal_lm", "seq2seq"):
        return evaluate_generative_file(model, tokenizer, meta, data_path, fmt, batch_size, cols, progress, device)
    if task == "classification" and columns.get("text_pair"):
        task = "pair_classification"
    path = data_place(data_path)
    data = DataSpec(train=path, test=path, format=fmt, columns=cols)
    try:
        rows, _ = read_rows(data, task, Path.cwd(), "test", deduplicate=False, role="eval")
    except HybridftError as e:
        raise HybridftError(f"{e} (--text-column, --pair-column and --label-column name the columns)") from None
    check_labels(rows, task, cols, labels, "eval")
    examples, _ = encode(rows, tokenizer, task, cols, {n: i for i, n in enumerate(labels)},
                         meta.get("max_length", 128))
    metrics = evaluate(model, examples, task, labels, collator_for(task, tokenizer), batch_size,
                       device or device_for(model), progress=progress)
    return metrics


def evaluate_generative_file(model, tokenizer, meta: dict, data_path: str, fmt: str, batch_size: int | None,
                             cols, progress: bool, device=None) -> dict:
    """Perplexity and token accuracy; for seq2seq also BLEU and chrF with the saved generation
    settings. Parallel text (a path with {lang}) uses the languages the model was trained on."""

    task, batch_size = meta["task"], batch_size or GENERATIVE_EVAL_ROWS
    path = data_place(data_path)
    languages = LanguagePair(**meta["languages"]) if meta.get("languages") else None
    data = DataSpec(train=path, test=path, format=fmt, columns=cols, languages=languages)
    rows, counts = read_generative_rows(data, task, Path.cwd(), "test", deduplicate=False)
    max_length = meta.get("max_length", 128)
    if task == "seq2seq":
        examples, _ = encode_seq2seq(rows, tokenizer, cols, max_length, meta.get("max_target_length", 128))
    elif cols.messages:
        examples, _ = encode_chat([r[cols.messages] for r in rows], tokenizer, max_length)
    else:
        examples, _ = encode_causal(rows, tokenizer, cols, max_length, packing=False)
    device = device or device_for(model)
    metrics = teacher_forced_metrics(model, examples, collator_for(task, tokenizer, model), batch_size, device,
                                     task == "causal_lm", progress=progress)
    if task == "seq2seq":
        sources = [ex["input_ids"] for ex in examples]
        spec = within_context(GenerationSpec(**meta.get("generation", {})), model.config, sources, seq2seq=True)
        hypotheses = generate_texts(model, tokenizer, sources, spec, batch_size, device, progress=progress)
        uncased = spec.uncased if spec.uncased is not None else is_uncased(tokenizer)
        metrics.update(translation_metrics(hypotheses, [r[cols.target] for r in rows], uncased), uncased=uncased)
    return {**metrics, "examples": len(examples), "data": counts}


def device_for(model) -> torch.device:
    """Where the model runs: the GPU when there is one and the model is still on the CPU (as loaded),
    else where the caller put it."""
    current = next(model.parameters()).device
    if current.type == "cpu" and torch.cuda.is_available():
        model.to("cuda")
        return torch.device("cuda")
    return current


def generate_lines(model, tokenizer, meta: dict, lines: list[str], batch_size: int | None, generation: dict,
                   seed: int, device=None) -> list[dict]:
    """Text for each line: a translation (seq2seq) or a continuation of the prompt (causal_lm)."""
    try:
        spec = GenerationSpec(**{**meta.get("generation", {}), **generation})
    except ValidationError as e:
        raise HybridftError("generation settings: " + "; ".join(format_validation_error(e))) from None
    max_length = meta.get("max_length", 128)
    if meta["task"] == "seq2seq":
        inputs = tokenizer(lines, truncation=True, max_length=max_length)["input_ids"]
    elif meta.get("chat"):  # the line as the user's turn, with the template's prompt for the answer
        inputs = prompt_ids(tokenizer, lines, max_length, meta.get("conversation"))
    else:  # the prompt as training encoded it: [bos] prompt, no end token
        start = bos_id(tokenizer)
        inputs = [([start] if start is not None else []) + ids[-(max_length - 1):]
                  for ids in tokenizer(lines, add_special_tokens=False)["input_ids"]]
    if meta.get("chat"):  # a folder saved before generation_config kept it: stop where the answer ends
        stop_at_end_of_turn(model, tokenizer)
    spec = within_context(spec, model.config, inputs, meta["task"] == "seq2seq")
    texts = generate_texts(model, tokenizer, inputs, spec, batch_size or GENERATIVE_EVAL_ROWS,
                           device or device_for(model), seed)
    return [{"input": line, "generated": text} for line, text in zip(lines, texts, strict=True)]


def context_length(config) -> int | None:
    """The most positions the model (an encoder-decoder's decoder) has, if its config says."""
    for part in (getattr(config, "decoder", None), config):
        value = getattr(part, "max_position_embeddings", None) if part is not None else None
        if isinstance(value, int) and value > 0:
            return value
    return None


def within_context(spec, config, inputs: list[list[int]], seq2seq: bool):
    """``max_new_tokens`` cut to what fits the model's context after the longest prompt (a seq2seq
    target starts from one token): beyond it a model has no positions left, and asking for 100,000
    tokens would run for hours to no end."""
    context = context_length(config)
    if context is None or not inputs:
        return spec
    room = max(1, context - (1 if seq2seq else max(len(ids) for ids in inputs)))
    return spec if spec.max_new_tokens <= room else spec.model_copy(update={"max_new_tokens": room})


def split_pairs(lines: list[str], numbers: list[int] | None = None) -> tuple[list[str], list[str]]:
    """The two texts of each line of a pair model (``first<TAB>second``); ``numbers``: each line's
    number in the input (empty lines are left out before, so they are not 1, 2, 3...)."""
    firsts, seconds = [], []
    for number, line in zip(numbers or range(1, len(lines) + 1), lines, strict=True):
        first, tab, second = line.partition("\t")
        if not tab:
            raise HybridftError(f"line {number} has no tab: this model classifies pairs; give every line as "
                                "text<TAB>text")
        firsts.append(first)
        seconds.append(second)
    return firsts, seconds


def encoded_rows(encoding) -> list[dict]:
    return [{k: encoding[k][i] for k in encoding} for i in range(len(encoding["input_ids"]))]


def tag_lines(model, tokenizer, lines: list[str], labels: list[str], max_length: int, batch_size: int | None,
              device, progress: bool, extras: frozenset = frozenset()) -> list[dict]:
    """The tag of each word's first sub-token (words split on spaces); ``extras``: "probabilities"
    and/or "logits" of each word (a word cut off by max_length gets "O" and none)."""
    words = [line.split() for line in lines]
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    logits, _ = predict(model, encoded_rows(enc), DataCollatorWithPadding(tokenizer), batch_size, device, "predict",
                        progress)
    records = []
    for i, ws in enumerate(words):
        first = {}
        for pos, w in enumerate(enc.word_ids(i)):
            if w is not None and w not in first:
                first[w] = pos
        records.append({"tokens": ws, "tags": [labels[int(logits[i][first[w]].argmax())] if w in first else "O"
                                               for w in range(len(ws))],
                        **scores_of([logits[i][first[w]] if w in first else None for w in range(len(ws))], labels,
                                    extras, per_word=True)})
    return records


def scores_of(logits: list, labels: list[str], extras: frozenset, per_word: bool = False) -> dict:
    """``{"probabilities": {label: p}, "logits": [...]}`` as asked for by ``extras``, unrounded; for a
    tagged line, a list of them, one per word (None for a word the model did not see)."""
    def one(row, kind):
        if row is None:
            return None
        if kind == "logits":
            return [float(x) for x in row]
        return dict(zip(labels, torch.from_numpy(row).float().softmax(-1).tolist(), strict=True))

    return {kind: [one(row, kind) for row in logits] if per_word else one(logits[0], kind)
            for kind in ("probabilities", "logits") if kind in extras}


def label_lines(model, tokenizer, lines: list[str], labels: list[str], max_length: int, pairs: bool,
                batch_size: int | None, device, progress: bool, numbers: list[int] | None = None,
                extras: frozenset = frozenset()) -> list[dict]:
    texts, second = split_pairs(lines, numbers) if pairs else (lines, None)
    enc = tokenizer(texts, second, truncation=True, max_length=max_length)
    logits, _ = predict(model, encoded_rows(enc), DataCollatorWithPadding(tokenizer), batch_size, device, "predict",
                        progress)
    records = []
    for line, scores in zip(lines, logits, strict=True):
        probs = torch.from_numpy(scores).softmax(-1)
        j = int(probs.argmax())
        records.append({"text": line, "label": labels[j], "score": round(float(probs[j]), 4),
                        **scores_of([scores], labels, extras)})
    return records


def _whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)  # NumPy's too; True is no size


def check_predict_arguments(meta: dict, lines, batch_size, seed, pairs) -> None:
    """What predict is given, refused in one line (through the API nothing has checked it yet)."""
    if not isinstance(lines, (list, tuple)):
        raise HybridftError(f"texts: give a str or a list of str, not {type(lines).__name__}")
    odd = next((i for i, line in enumerate(lines) if not isinstance(line, str)), None)
    if odd is not None:
        raise HybridftError(f"texts: item {odd} is {type(lines[odd]).__name__} {lines[odd]!r}, not a str")
    if batch_size is not None and not (_whole(batch_size) and batch_size >= 1):
        raise HybridftError(f"batch_size must be a whole number above 0, got {batch_size!r}")
    if not (_whole(seed) and 0 <= seed < 2**32):
        raise HybridftError(f"seed must be a whole number from 0 to 2**32 - 1, got {seed!r}")
    if pairs is None or (not pairs and meta["task"] != "pair_classification"):
        return
    if meta["task"] not in ("classification", "pair_classification"):
        raise HybridftError(f"pairs (--pair) is for classification models; this is a {meta['task']} model")
    # hybridft.json's columns: hybridft trained it and knows what it reads; a plain transformers folder
    # says nothing of it (an MNLI model reads pairs), so there pairs decides
    if "columns" in meta and pairs != (meta["task"] == "pair_classification"):
        trained = "pairs of texts" if meta["task"] == "pair_classification" else "single texts"
        raise HybridftError(f"pairs={pairs} (--pair): this model was trained on {trained} "
                            f"({meta['task']}); it reads lines as it was trained")


def predict_with(model, tokenizer, meta: dict, labels: list[str], lines: list[str], batch_size: int | None,
                 generation: dict | None = None, seed: int = 0, pairs: bool | None = None,
                 progress: bool = False, device=None, extras: frozenset = frozenset()) -> list[dict]:
    """One record per line, in order: a label (a pair model reads ``first<TAB>second``; whether the
    model reads pairs comes from its task, or ``pairs``), tags (words split on spaces), or generated
    text. An empty line gets a record with an error instead of being dropped. Batches are
    length-sorted, of ``batch_size`` lines or, without one, as many as fit a token budget.
    ``device``: where to run (default: a GPU if there is one); ``extras``: "probabilities" and/or
    "logits" added to each label's (or word's) record."""
    check_predict_arguments(meta, lines, batch_size, seed, pairs)
    if extras and meta["task"] in ("causal_lm", "seq2seq"):
        raise HybridftError(f"probabilities and logits are for classification and tagging models; this is a "
                            f"{meta['task']} model")
    texts = [x for x in lines if x.strip()]
    if meta["task"] in ("causal_lm", "seq2seq"):
        predicted = generate_lines(model, tokenizer, meta, texts, batch_size, generation or {}, seed, device)
    elif not texts:
        predicted = []
    elif meta["task"] == "token_classification":
        predicted = tag_lines(model, tokenizer, texts, labels, meta.get("max_length", 128), batch_size,
                              device or device_for(model), progress, extras)
    else:
        pairs = meta["task"] == "pair_classification" if pairs is None else pairs
        predicted = label_lines(model, tokenizer, texts, labels, meta.get("max_length", 128), pairs, batch_size,
                                device or device_for(model), progress, [i for i, x in enumerate(lines, 1) if x.strip()],
                                extras)
    answers = iter(predicted)
    key = "input" if meta["task"] in ("causal_lm", "seq2seq") else "text"  # as the task's other records
    return [next(answers) if line.strip() else {key: line, "error": "empty text"} for line in lines]


def predict_lines(model_dir: str, lines: list[str], batch_size: int | None, generation: dict | None = None,
                  seed: int = 0, pairs: bool | None = None, progress: bool = False) -> list[dict]:
    """``predict_with`` on a saved model folder."""
    model, tokenizer, meta, labels = load_saved(model_dir)
    return predict_with(model, tokenizer, meta, labels, lines, batch_size, generation, seed, pairs, progress)
