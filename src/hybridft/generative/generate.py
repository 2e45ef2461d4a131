"""Text generation with a recipe's settings (greedy, sampling or beam search), reproducible by seed."""

from __future__ import annotations

import torch

from ..progress import track


def generation_kwargs(spec) -> dict:
    kwargs = {"max_new_tokens": spec.max_new_tokens, "num_beams": spec.num_beams, "do_sample": spec.do_sample}
    if spec.do_sample:
        kwargs.update(temperature=spec.temperature, top_k=spec.top_k, top_p=spec.top_p)
    return kwargs


def length_buckets(inputs: list[list[int]], batch_size: int) -> list[list[int]]:
    """Batches of inputs of one length each: a decoder-only model then needs no padding at all
    (left padding would shift absolute positions in models such as BERT-as-decoder)."""
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(inputs):
        by_length.setdefault(len(ids), []).append(i)
    return [group[j:j + batch_size] for _, group in sorted(by_length.items()) for j in range(0, len(group), batch_size)]


def source_batches(inputs: list[list[int]], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def generate_texts(model, tokenizer, inputs: list[list[int]], spec, batch_size: int, device, seed: int = 0,
                   desc: str = "generate", progress: bool = False) -> list[str]:
    """The text generated for each input (token ids: a source sentence, or a causal LM's prompt,
    whose continuation alone is returned). The global RNG is left as it was: evaluating in the
    middle of training must not change what training draws next."""
    encoder_decoder = bool(model.config.is_encoder_decoder)
    batches = source_batches(inputs, batch_size) if encoder_decoder else length_buckets(inputs, batch_size)
    texts: list[str | None] = [None] * len(inputs)
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for idx in track(batches, desc, progress):
            width = max(len(inputs[i]) for i in idx)
            ids = torch.full((len(idx), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(idx):
                ids[row, : len(inputs[i])] = torch.tensor(inputs[i])
                mask[row, : len(inputs[i])] = 1
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **generation_kwargs(spec))
            if not encoder_decoder:
                out = out[:, width:]  # the prompt comes back in front of the continuation
            for row, i in enumerate(idx):
                texts[i] = tokenizer.decode(out[row], skip_special_tokens=True).strip()
    model.train(was_training)
    return texts
