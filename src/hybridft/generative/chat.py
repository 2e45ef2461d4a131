"""Chat fine-tuning: conversations (``[{role, content}, ...]``) rendered with a chat template, the loss
on the assistant's turns only.

A conversation is rendered once; each assistant turn's characters are found by rendering the
conversation up to the turn (with the template's generation prompt) and up to its end: the tokens
whose characters fall between the two are the turn's, and carry labels; every other token (system,
user, the template's own markup) is labelled -100. So a multi-turn row teaches every assistant turn
and none of the user's.
"""

from __future__ import annotations

import string
from pathlib import Path

from ..errors import HybridftError
from ..tasks import IGNORE_INDEX

ROLES = ("system", "user", "assistant", "tool")


def template_text(value: str, base_dir: Path) -> str:
    """``model.chat_template``: a Jinja string, or a file holding one (relative to the recipe)."""
    if "{" in value:
        return value
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        raise HybridftError(f"model.chat_template: {value} is neither a Jinja template nor a file")
    return path.read_text(encoding="utf-8")


def use_template(tokenizer, template: str | None) -> None:
    """The recipe's template replaces the tokenizer's (and is saved with it); with neither, an error."""
    if template is not None:
        tokenizer.chat_template = template
    if not getattr(tokenizer, "chat_template", None):
        raise HybridftError("data.columns.messages: the tokenizer has no chat template; give one in "
                            "model.chat_template (a Jinja string or a file)")


def check_messages(value, where: str) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise HybridftError(f"{where}: a conversation is a list of {{role, content}} turns, found {value!r:.60}")
    for turn in value:
        if turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise HybridftError(f"{where}: a turn needs a role ({', '.join(ROLES)}) and text content, found "
                                f"{turn!r:.60}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def render(tokenizer, messages: list[dict], prompt: bool = False) -> str:
    """The conversation as the chat template writes it; a template that does not compile, or that
    refuses the conversation (``raise_exception``), is one line."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
    except TemplateError as e:
        raise HybridftError(f"the chat template: {str(e).splitlines()[0]}") from None


def assistant_spans(tokenizer, messages: list[dict], text: str) -> list[tuple[int, int]]:
    """Character spans of the assistant's turns in the rendered conversation ``text``."""
    spans = []
    for k, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        before, upto = render(tokenizer, messages[:k], prompt=True), render(tokenizer, messages[:k + 1])
        if not (text.startswith(upto) and upto.startswith(before)):
            raise HybridftError("the chat template does not render a conversation as the sum of its turns, so "
                                "the assistant's tokens cannot be found; use a template that does")
        spans.append((len(before), len(upto)))
    return spans


def encode_chat(conversations: list[list[dict]], tokenizer, max_length: int) -> tuple[list[dict], dict]:
    """Token ids with labels on the assistant's tokens; rows without an assistant turn, or whose
    first assistant token lies beyond ``max_length``, are skipped and counted."""
    examples, counts = [], {"truncated": 0, "skipped_no_assistant": 0, "skipped_prompt_too_long": 0}
    end_of_turn = end_of_turn_id(tokenizer)
    for messages in conversations:
        if not any(m["role"] == "assistant" for m in messages):
            counts["skipped_no_assistant"] += 1
            continue
        text = render(tokenizer, messages)
        spans = assistant_spans(tokenizer, messages, text)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        labels = [t if any(a <= start and end <= b for a, b in spans) and end > start else IGNORE_INDEX
                  for t, (start, end) in zip(ids, enc["offset_mapping"], strict=True)]
        labels = through_end_of_turn(labels, end_of_turn)
        if len(ids) > max_length:
            counts["truncated"] += 1
            ids, labels = ids[:max_length], labels[:max_length]
        if all(x == IGNORE_INDEX for x in labels):
            counts["skipped_prompt_too_long"] += 1
            continue
        examples.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return examples, counts


def through_end_of_turn(labels: list[int], end_of_turn: int | None) -> list[int]:
    """An answer is learnt up to and including the token that ends its turn (where generation stops);
    what the template writes after it (SmolLM2's newline) is markup, as the user's turns are."""
    if end_of_turn is None:
        return labels
    kept, ended = [], False
    for label in labels:
        ended = ended and label != IGNORE_INDEX  # a new answer starts after masked tokens
        kept.append(IGNORE_INDEX if ended else label)
        ended = ended or label == end_of_turn
    return kept


def prompt_ids(tokenizer, lines: list[str], max_length: int, conversation: dict | None = None) -> list[list[int]]:
    """Each line as the user's turn, rendered with the generation prompt: what the model answers. A
    model trained on rows made into conversations (``data.conversation``) is asked as it was trained:
    its system turn, and the line in its user turn's frame when that frame names one column."""
    return conversation_prompt_ids(tokenizer, [as_asked(line, conversation) for line in lines], max_length)


def as_asked(line: str, conversation: dict | None) -> list[dict]:
    if not conversation:
        return [{"role": "user", "content": line}]
    fields = {name for _, name, _, _ in string.Formatter().parse(conversation["user"]) if name}
    user = conversation["user"].format_map({fields.pop(): line}) if len(fields) == 1 else line
    system = [{"role": "system", "content": conversation["system"]}] if conversation.get("system") else []
    return [*system, {"role": "user", "content": user}]


def last_answer(messages: list[dict]) -> tuple[list[dict], str] | None:
    """(the turns before the conversation's last assistant turn, that turn's text): what the model is
    asked and what it should answer, for generation-based metrics. None without an assistant turn."""
    last = max((k for k, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    return None if last is None else (messages[:last], messages[last]["content"])


def conversation_prompt_ids(tokenizer, conversations: list[list[dict]], max_length: int) -> list[list[int]]:
    """Each conversation rendered with the generation prompt (the last ``max_length`` tokens)."""
    texts = [render(tokenizer, messages, prompt=True) for messages in conversations]
    return [ids[-max_length:] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def end_of_turn_id(tokenizer) -> int | None:
    """The special token the template closes an assistant turn with (SmolLM2's ``<|im_end|>``), where
    generation stops; None when the template closes turns with plain text."""
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    text = render(tokenizer, probe)
    answer_end = text.rindex("ok") + 2
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_encoder.values())
    for token, (start, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        if start >= answer_end and text[start:end].strip():
            return token if token in special else None
    return None


def conversations_from_rows(rows: list[dict], spec, where: str, strip: bool = True) -> list[list[dict]]:
    """``data.conversation``: each row's system, user and assistant turns, ``{column}`` filled in
    (with its value stripped of surrounding spaces, as ``data.clean.strip`` does for columns)."""
    turns = [("system", spec.system), ("user", spec.user), ("assistant", spec.assistant)]
    made = []
    for number, row in enumerate(rows, 1):
        text = {k: str(v).strip() if strip else str(v) for k, v in row.items()}
        values = {k: spec.values[k].get(v) if k in spec.values else v for k, v in text.items()}
        missing = next((k for k in spec.values if k in row and values[k] is None), None)
        if missing:
            raise HybridftError(f"{where}: row {number}: {missing} value {row[missing]!r} has no word in "
                                f"data.conversation.values.{missing} ({', '.join(spec.values[missing])})")
        try:
            made.append([{"role": role, "content": text.format_map(values)} for role, text in turns if text])
        except KeyError as e:
            raise HybridftError(f"data.conversation: no column {e.args[0]!r} in {where}; columns are "
                                f"{', '.join(map(str, row))}") from None
        except (ValueError, IndexError) as e:
            raise HybridftError(f"data.conversation: {e}; a turn names columns as {{column}}") from None
    return made

