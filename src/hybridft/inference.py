"""Use a saved model: evaluate it on a labeled file, or label new text."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import HybridftError
from .model_io import load_saved


def evaluate_file(model_dir: str, data_path: str, fmt: str, batch_size: int, columns: dict,
                  progress: bool = False) -> dict:
    from .data.prepare import check_labels, encode, read_rows
    from .evaluate import evaluate
    from .recipe import Columns, DataSpec
    from .training.stages import collator_for

    model, tokenizer, meta, labels = load_saved(model_dir)
    cols = Columns(**{**meta.get("columns", {}), **{k: v for k, v in columns.items() if v}})
    task = meta["task"]
    if task in ("causal_lm", "seq2seq"):
        return evaluate_generative_file(model, tokenizer, meta, data_path, fmt, batch_size, cols, progress)
    if task == "classification" and columns.get("text_pair"):
        task = "pair_classification"
    path = str(Path(data_path).resolve())
    data = DataSpec(train=path, test=path, format=fmt, columns=cols)
    rows, _ = read_rows(data, task, Path.cwd(), "test", deduplicate=False)
    check_labels(rows, task, cols, labels, "eval")
    examples, _ = encode(rows, tokenizer, task, cols, {n: i for i, n in enumerate(labels)},
                         meta.get("max_length", 128))
    metrics = evaluate(model, examples, task, labels, collator_for(task, tokenizer), batch_size,
                       torch.device("cpu"), progress=progress)
    return metrics


def evaluate_generative_file(model, tokenizer, meta: dict, data_path: str, fmt: str, batch_size: int, cols,
                             progress: bool) -> dict:
    """Perplexity and token accuracy; for seq2seq also BLEU and chrF with the saved generation
    settings. Parallel text (a path with {lang}) uses the languages the model was trained on."""
    from .generative.data import encode_causal, encode_seq2seq, read_generative_rows
    from .generative.evaluate import teacher_forced_metrics
    from .generative.generate import generate_texts
    from .generative.metrics import is_uncased, translation_metrics
    from .recipe import DataSpec, GenerationSpec, LanguagePair
    from .training.stages import collator_for

    task = meta["task"]
    path = str(Path(data_path).resolve())
    languages = LanguagePair(**meta["languages"]) if meta.get("languages") else None
    data = DataSpec(train=path, test=path, format=fmt, columns=cols, languages=languages)
    rows, counts = read_generative_rows(data, task, Path.cwd(), "test", deduplicate=False)
    max_length = meta.get("max_length", 128)
    if task == "seq2seq":
        examples, _ = encode_seq2seq(rows, tokenizer, cols, max_length, meta.get("max_target_length", 128))
    else:
        examples, _ = encode_causal(rows, tokenizer, cols, max_length, packing=False)
    device = torch.device("cpu")
    metrics = teacher_forced_metrics(model, examples, collator_for(task, tokenizer, model), batch_size, device,
                                     task == "causal_lm", progress=progress)
    if task == "seq2seq":
        spec = GenerationSpec(**meta.get("generation", {}))
        hypotheses = generate_texts(model, tokenizer, [ex["input_ids"] for ex in examples], spec, batch_size, device,
                                    progress=progress)
        uncased = spec.uncased if spec.uncased is not None else is_uncased(tokenizer)
        metrics.update(translation_metrics(hypotheses, [r[cols.target] for r in rows], uncased), uncased=uncased)
    return {**metrics, "examples": len(examples), "data": counts}


def generate_lines(model, tokenizer, meta: dict, lines: list[str], batch_size: int, generation: dict,
                   seed: int) -> list[dict]:
    """Text for each line: a translation (seq2seq) or a continuation of the prompt (causal_lm)."""
    from pydantic import ValidationError

    from .generative.data import bos_id
    from .generative.generate import generate_texts
    from .recipe import GenerationSpec, format_validation_error

    try:
        spec = GenerationSpec(**{**meta.get("generation", {}), **generation})
    except ValidationError as e:
        raise HybridftError("generation settings: " + "; ".join(format_validation_error(e))) from None
    max_length = meta.get("max_length", 128)
    if meta["task"] == "seq2seq":
        inputs = tokenizer(lines, truncation=True, max_length=max_length)["input_ids"]
    else:  # the prompt as training encoded it: [bos] prompt, no end token
        start = bos_id(tokenizer)
        inputs = [([start] if start is not None else []) + ids[-(max_length - 1):]
                  for ids in tokenizer(lines, add_special_tokens=False)["input_ids"]]
    texts = generate_texts(model, tokenizer, inputs, spec, batch_size, torch.device("cpu"), seed)
    return [{"input": line, "generated": text} for line, text in zip(lines, texts, strict=True)]


@torch.no_grad()
def predict_lines(model_dir: str, lines: list[str], batch_size: int, generation: dict | None = None,
                  seed: int = 0) -> list[dict]:
    """Labels for texts; a tab in a line separates the two texts of a pair; tagging splits on spaces.
    Language models generate text instead, with the recipe's generation settings unless overridden."""
    model, tokenizer, meta, labels = load_saved(model_dir)
    if meta["task"] in ("causal_lm", "seq2seq"):
        return generate_lines(model, tokenizer, meta, lines, batch_size, generation or {}, seed)
    max_length = meta.get("max_length", 128)
    records = []
    for start in range(0, len(lines), batch_size):
        chunk = lines[start:start + batch_size]
        if meta["task"] == "token_classification":
            words = [line.split() for line in chunk]
            enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length,
                            padding=True, return_tensors="pt")
            probs = model(**enc).logits.softmax(-1)
            for i, ws in enumerate(words):
                first = {}
                for pos, w in enumerate(enc.word_ids(i)):
                    if w is not None and w not in first:
                        first[w] = pos
                tags = [labels[int(probs[i, first[w]].argmax())] if w in first else "O" for w in range(len(ws))]
                records.append({"tokens": ws, "tags": tags})
        else:
            pairs = [line.split("\t", 1) for line in chunk]
            second = [p[1] if len(p) > 1 else None for p in pairs]
            if any(second) and not all(second):
                line = start + second.index(None) + 1
                raise HybridftError(f"line {line} has no tab: give every line as a pair (text<TAB>text) or none")
            enc = tokenizer([p[0] for p in pairs], second if any(second) else None, truncation=True,
                            max_length=max_length, padding=True, return_tensors="pt")
            probs = model(**enc).logits.softmax(-1)
            for line, pr in zip(chunk, probs, strict=True):
                j = int(pr.argmax())
                records.append({"text": line, "label": labels[j], "score": round(float(pr[j]), 4)})
    return records
