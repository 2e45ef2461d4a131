"""Batches of encoded examples as tensors: dynamic padding with transformers' collators."""

from __future__ import annotations

from transformers import DataCollatorForSeq2Seq, DataCollatorForTokenClassification, DataCollatorWithPadding

from ..tasks import GENERATIVE_TASKS


def collator_for(task: str, tokenizer, model=None):
    if task in GENERATIVE_TASKS:  # labels padded with -100; an encoder-decoder also gets its decoder inputs
        encoder_decoder = model is not None and model.config.is_encoder_decoder
        return DataCollatorForSeq2Seq(tokenizer, model=model if encoder_decoder else None, return_tensors="pt")
    if task == "token_classification":
        return DataCollatorForTokenClassification(tokenizer, return_tensors="pt")
    return DataCollatorWithPadding(tokenizer, return_tensors="pt")
