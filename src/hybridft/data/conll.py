"""CoNLL column files (one token per line, blank line between sentences) and IOB1 -> BIO2."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import HybridftError


def iob1_to_bio2(tags: list[str]) -> list[str]:
    """IOB1 starts entities with I- and uses B- only between two adjacent entities of one type;
    BIO2 starts every entity with B-. Converting BIO2 input changes nothing, so this is safe on
    files whose scheme is unknown."""
    out = []
    previous = "O"
    for tag in tags:
        if tag.startswith("I-"):
            kind = tag[2:]
            if previous == "O" or previous[2:] != kind:
                tag = "B-" + kind
        out.append(tag)
        previous = tag
    return out


def read_conll(path: Path, text: str | None = None, token_column: int = 0, tag_column: int = -1) -> pd.DataFrame:
    """Sentences of a CoNLL-2003-style file as a frame with list columns ``tokens`` and ``tags``.

    ``-DOCSTART-`` lines are dropped; columns may be separated by spaces or tabs.
    """
    sentences: list[tuple[list[str], list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    if text is None:  # ``text``: the file already read (and decompressed) by the caller
        text = Path(path).read_text(encoding="utf-8-sig")
    for lineno, line in enumerate(text.split("\n"), 1):
        fields = line.split()
        if not fields:
            if tokens:
                sentences.append((tokens, iob1_to_bio2(tags)))
            tokens, tags = [], []
            continue
        if fields[0] == "-DOCSTART-":
            continue
        if len(fields) < 2:
            raise HybridftError(f"{path}:{lineno}: a CoNLL line needs a token and a tag, got {line.strip()!r}")
        tokens.append(fields[token_column])
        tags.append(fields[tag_column])
    if tokens:
        sentences.append((tokens, iob1_to_bio2(tags)))
    return pd.DataFrame({"tokens": [s[0] for s in sentences], "tags": [s[1] for s in sentences]})
