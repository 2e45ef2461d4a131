"""Data for text generation: causal-LM text (plain, or prompt -> response) and seq2seq pairs.

Encoding, the same for every tokenizer family:
  causal_lm  [bos] prompt response [eos]; labels are the ids themselves with the prompt (and bos)
             set to -100, so the loss covers the response only. bos/eos fall back to BERT's
             [CLS]/[SEP], so an encoder turned decoder gets a start and an end.
  seq2seq    the source as the tokenizer encodes it (with its special tokens); the target without
             special tokens plus eos as labels. The decoder starts from the model's start token.
Rows that cannot make a training example are skipped and counted (an empty target, a prompt that
leaves no room for a response) rather than silently kept or fatal.
"""

from __future__ import annotations

from pathlib import Path

from ..data.clean import clean_rows, row_name
from ..data.prepare import TaskData, resolve_path, seeded_subset, split_train
from ..data.readers import read_table
from ..errors import HybridftError
from ..tasks import IGNORE_INDEX
from .chat import check_messages, conversations_from_rows, encode_chat, last_answer


def eos_id(tokenizer) -> int | None:
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id


def bos_id(tokenizer) -> int | None:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id


def ensure_pad_token(tokenizer) -> str | None:
    """Give a tokenizer without a pad token (GPT-2's) its end-of-sequence token as padding; padded
    positions are masked out of attention and loss, so the choice cannot change results. Returns a
    note for the report when it did so."""
    if tokenizer.pad_token_id is not None:
        return None
    end = eos_id(tokenizer)
    if end is None:
        raise HybridftError("the tokenizer has neither a pad token nor an end-of-sequence token; "
                            "use a tokenizer that has one of them")
    tokenizer.pad_token_id = end
    return f"the tokenizer has no pad token: padding uses {tokenizer.convert_ids_to_tokens(end)!r} (masked out)"


def roles(task: str, cols) -> dict[str, str]:
    """What each input column is for: role -> column name."""
    if task == "seq2seq":
        return {"source": cols.source, "target": cols.target}
    if cols.prompt:
        return {"prompt": cols.prompt, "response": cols.response}
    return {"text": cols.text}


TURN_KEYS = ("role", "content")  # all of a turn that is rendered and trained on


def refuse_untrained_keys(value, where: str) -> None:
    """Tool calls, a per-turn ``weight`` or a ``name`` would be dropped from the rendering without a
    word, and the model trained on a conversation other than the one in the file (an empty or null
    value is as if absent: exports often write ``"tool_calls": null`` on every turn)."""
    if not isinstance(value, list):
        return
    for number, turn in enumerate(value, 1):
        extra = [k for k, v in turn.items() if k not in TURN_KEYS and _given(v)] if isinstance(turn, dict) else []
        if extra:
            what = "tool calls, which hybridft does not train on" if extra[0] == "tool_calls" else \
                f"{extra[0]!r}, which hybridft would not render (a turn is {' and '.join(TURN_KEYS)} only)"
            raise HybridftError(f"{where}: turn {number} ({turn.get('role')}) has {what}; remove it or the row")


def _given(value) -> bool:
    return value is not None and not (isinstance(value, (str, list, tuple, dict)) and len(value) == 0)


def has_empty_answer(messages: list[dict]) -> bool:
    return any(m["role"] == "assistant" and not m["content"].strip() for m in messages)


def read_conversations(frame, column: str, where: str) -> tuple[list[dict], dict]:
    """The conversations of ``column``; one with an empty assistant turn (an export glitch, which
    would teach the model to end its turn at once) is skipped and counted, as an empty response is."""
    if column not in frame.columns:
        raise HybridftError(f"{where}: no column {column!r}; columns are {', '.join(map(str, frame.columns))}")
    rows, empty = [], 0
    for i, value in enumerate(frame[column].tolist()):
        here = f"{where}: {row_name(frame, i)}"
        refuse_untrained_keys(value, here)
        messages = check_messages(value, here)
        if next((m["role"] for m in messages if m["role"] != "system"), None) == "assistant":
            raise HybridftError(f"{here}: the conversation starts with the assistant's turn; it needs the "
                                "user's turn before the first answer")
        if has_empty_answer(messages):
            empty += 1
        else:
            rows.append({column: messages})
    return rows, {"rows_read": len(frame), "skipped_empty_assistant": empty, "rows_kept": len(rows)}


def read_generative_rows(data, task: str, base_dir: Path, split: str, deduplicate: bool) -> tuple[list[dict], dict]:
    path = resolve_path(getattr(data, split), base_dir)
    frame = read_table(path, data.format, task, split, data.bad_rows, data.languages, data.columns)
    if data.conversation is not None:
        frame = frame.fillna("")
        made = conversations_from_rows(frame.to_dict("records"), data.conversation, f"{split} data {path.name}",
                                       data.clean.strip)
        frame = frame.assign(**{data.columns.messages: made})
    if data.columns.messages:
        rows, counts = read_conversations(frame, data.columns.messages, f"{split} data {path.name}")
    else:
        rows, counts = clean_rows(frame, list(roles(task, data.columns).values()), [], None, data.clean.strip,
                                  False, data.clean.drop_duplicates and deduplicate, where=f"{split} data {path.name}")
        rows = drop_empty_roles(rows, counts, task, data.columns)
    if frame.attrs.get("malformed_rows_skipped"):
        counts["skipped_malformed"] = frame.attrs["malformed_rows_skipped"]
    if not rows:
        raise HybridftError(f"{split} data {path.name} has no usable rows ({counts})")
    return rows, counts


def drop_empty_roles(rows: list[dict], counts: dict, task: str, cols) -> list[dict]:
    """The rows whose every role but the prompt has text; the others are counted in ``counts``."""
    columns = roles(task, cols)
    kept = []
    for row in rows:  # an empty prompt is fine (plain continuation); nothing else may be empty
        empty = next((role for role, c in columns.items() if role != "prompt" and not row[c]), None)
        if empty is None:
            kept.append(row)
        else:
            counts[f"skipped_empty_{empty}"] = counts.get(f"skipped_empty_{empty}", 0) + 1
    counts["rows_kept"] = len(kept)
    return kept


def encode_causal(rows: list[dict], tokenizer, cols, max_length: int, packing: bool) -> tuple[list[dict], dict]:
    columns = roles("causal_lm", cols)
    start, end = bos_id(tokenizer), eos_id(tokenizer)
    body_col = columns.get("response", columns.get("text"))
    bodies = tokenizer([r[body_col] for r in rows], add_special_tokens=False)["input_ids"]
    prompts = tokenizer([r[columns["prompt"]] for r in rows], add_special_tokens=False)["input_ids"] \
        if "prompt" in columns else [[] for _ in rows]
    examples, counts = [], {"truncated": 0, "skipped_prompt_too_long": 0}
    for prompt, body in zip(prompts, bodies, strict=True):
        head = ([start] if start is not None else []) + prompt
        if not packing and len(head) >= max_length:  # no room left for a single response token
            counts["skipped_prompt_too_long"] += 1
            continue
        ids = head + body + ([end] if end is not None else [])
        labels = [IGNORE_INDEX] * len(head) + ids[len(head):]
        if not packing and len(ids) > max_length:
            counts["truncated"] += 1
            ids, labels = ids[:max_length], labels[:max_length]
        examples.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return (pack(examples, max_length) if packing else examples), counts


def pack(examples: list[dict], block: int) -> list[dict]:
    """Concatenate the examples and cut blocks of ``block`` tokens: no padding, no truncation (long
    texts continue in the next block). Attention crosses example boundaries inside a block, as in
    GPT-2's training; the last, shorter block is kept."""
    ids = [t for ex in examples for t in ex["input_ids"]]
    labels = [t for ex in examples for t in ex["labels"]]
    return [{"input_ids": ids[i:i + block], "attention_mask": [1] * len(ids[i:i + block]),
             "labels": labels[i:i + block]} for i in range(0, len(ids), block) if len(ids[i:i + block]) > 1]


def encode_seq2seq(rows: list[dict], tokenizer, cols, max_length: int, max_target_length: int) -> tuple[list[dict], dict]:
    sources = tokenizer([r[cols.source] for r in rows], truncation=False)["input_ids"]
    targets = tokenizer([r[cols.target] for r in rows], add_special_tokens=False)["input_ids"]
    end = eos_id(tokenizer)
    examples, counts = [], {"truncated": 0, "truncated_target": 0}
    for source, target in zip(sources, targets, strict=True):
        if len(source) > max_length:  # keep the closing special token, as truncation=True would
            counts["truncated"] += 1
            source = source[:max_length - 1] + source[-1:]
        labels = target + ([end] if end is not None else [])
        if len(labels) > max_target_length:
            counts["truncated_target"] += 1
            labels = labels[:max_target_length]
        examples.append({"input_ids": source, "attention_mask": [1] * len(source), "labels": labels})
    return examples, counts


def load_generative_data(recipe, base_dir: Path, tokenizer) -> TaskData:
    """Rows of every split, encoded; seq2seq keeps each evaluation split's source and target texts
    (BLEU is computed against the text, not against token ids)."""
    data, task, seed = recipe.data, recipe.task, recipe.seed
    stats: dict = {}
    note = ensure_pad_token(tokenizer)
    if note:
        stats["pad_token"] = note
    train, stats["train"] = read_generative_rows(data, task, base_dir, "train", deduplicate=True)
    train = seeded_subset(train, data.max_train_samples, seed)
    if data.validation:
        validation, stats["validation"] = read_generative_rows(data, task, base_dir, "validation", deduplicate=False)
    else:
        train, validation = split_train(train, data.validation_fraction, seed, lambda r: "")
        stats["validation"] = {"split_from_train": data.validation_fraction, "rows_kept": len(validation)}
    splits = {"train": train, "validation": seeded_subset(validation, data.max_eval_samples, seed)}
    if data.test:
        test, stats["test"] = read_generative_rows(data, task, base_dir, "test", deduplicate=False)
        splits["test"] = seeded_subset(test, data.max_eval_samples, seed)
    encoded, texts = {}, {}
    for name, rows in splits.items():
        if task == "seq2seq":
            encoded[name], counts = encode_seq2seq(rows, tokenizer, data.columns, recipe.model.max_length,
                                                   recipe.model.max_target_length)
            texts[name] = [(r[data.columns.source], r[data.columns.target]) for r in rows]
        elif data.columns.messages:
            encoded[name], counts = encode_chat([r[data.columns.messages] for r in rows], tokenizer,
                                                recipe.model.max_length)
            if name != "train":  # what each conversation asks last, and its answer: generation metrics
                texts[name] = [a for a in (last_answer(r[data.columns.messages]) for r in rows) if a]
            if not encoded[name]:
                raise HybridftError(f"{name} data: no conversation has an assistant turn within "
                                    f"model.max_length ({recipe.model.max_length} tokens): {counts}")
        else:
            encoded[name], counts = encode_causal(rows, tokenizer, data.columns, recipe.model.max_length, data.packing)
            if not encoded[name]:
                raise HybridftError(f"{name} data: every prompt is longer than model.max_length "
                                    f"({recipe.model.max_length} tokens)")
        for key, value in counts.items():
            stats.setdefault(key, {})[name] = value
        # the rows that made an example: not those the encoder skipped (no answer, prompt too long)
        stats.setdefault("rows_used", {})[name] = len(rows) - sum(v for k, v in counts.items()
                                                                   if k.startswith("skipped_"))
    if data.packing:
        stats["packed_blocks"] = {k: len(v) for k, v in encoded.items()}
    return TaskData(task, [], encoded["train"], encoded["validation"], encoded.get("test"), stats, texts=texts)
