"""Metrics of generated text: corpus BLEU and chrF (sacrebleu), on consistently normalised text."""

from __future__ import annotations

import unicodedata


def is_uncased(tokenizer) -> bool:
    """An uncased WordPiece tokenizer (BERT, MiniLM) lower-cases and strips accents: its output can
    have neither, so references are compared the same way."""
    return bool(getattr(tokenizer, "do_lower_case", False) or tokenizer.init_kwargs.get("do_lower_case", False))


def normalize(text: str, uncased: bool) -> str:
    if not uncased:
        return text
    decomposed = unicodedata.normalize("NFD", text.lower())
    return "".join(c for c in decomposed if unicodedata.category(c) != "Mn")


def translation_metrics(hypotheses: list[str], references: list[str], uncased: bool) -> dict:
    import sacrebleu

    hyps = [normalize(h, uncased) for h in hypotheses]
    refs = [normalize(r, uncased) for r in references]
    return {"bleu": sacrebleu.corpus_bleu(hyps, [refs]).score, "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score}
