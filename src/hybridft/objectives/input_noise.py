"""Input noise for a student (Noisy Student, Xie et al., 2020; the token masking of UDA-style
consistency training): a random fraction of the real tokens is replaced by the mask token, so the
student must match its teacher from less of the sentence than the teacher saw."""

from __future__ import annotations

import torch

from ..errors import HybridftError


def student_noise(run, probability: float):
    """``inputs -> noised copy`` for a run's tokenizer, or the identity when ``probability`` is 0. The
    stand-in token is the mask token, else the unknown token."""
    if not probability:
        return lambda inputs: inputs
    tokenizer = run.tokenizer
    token_id = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.unk_token_id
    if token_id is None:
        raise HybridftError("noise needs a tokenizer with a mask or unknown token; this one has neither")
    special_ids = torch.tensor(tokenizer.all_special_ids, device=run.device)
    return lambda inputs: mask_random_tokens(inputs, probability, token_id, special_ids)


def mask_random_tokens(inputs: dict, probability: float, token_id: int, special_ids: torch.Tensor) -> dict:
    """A copy of ``inputs`` whose real, non-special tokens are each replaced by ``token_id`` with
    ``probability`` (the global torch RNG, so a resumed run draws the same masks). The input is not
    changed."""
    ids = inputs["input_ids"]
    candidates = (inputs["attention_mask"] == 1) & ~torch.isin(ids, special_ids)
    hit = (torch.rand(ids.shape, device=ids.device) < probability) & candidates
    return {**inputs, "input_ids": ids.masked_fill(hit, token_id)}
