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
    """Batches of inputs of one length each: BERT-as-decoder then needs no padding at all (left
    padding would shift its absolute positions)."""
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(inputs):
        by_length.setdefault(len(ids), []).append(i)
    return [group[j:j + batch_size] for _, group in sorted(by_length.items()) for j in range(0, len(group), batch_size)]


def source_batches(inputs: list[list[int]], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def padded(inputs: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of a batch, padded on the right (an encoder's source) or on the
    left (a decoder's prompt, so that every row's continuation starts at the same position)."""
    width = max(len(ids) for ids in inputs)
    ids = torch.full((len(inputs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, tokens in enumerate(inputs):
        where = slice(width - len(tokens), width) if left else slice(0, len(tokens))
        ids[row, where], mask[row, where] = torch.tensor(tokens), 1
    return ids, mask


@torch.no_grad()
def generate_texts(model, tokenizer, inputs: list[list[int]], spec, batch_size: int, device, seed: int = 0,
                   desc: str = "generate", progress: bool = False) -> list[str]:
    """The text generated for each input (token ids: a source sentence, or a causal LM's prompt,
    whose continuation alone is returned), in batches of similar length with a KV cache; a decoder's
    prompts are padded on the left (BERT-as-decoder's, whose positions are absolute, not at all).
    The global RNG is left as it was: evaluating in the middle of training must not change what
    training draws next."""
    encoder_decoder = bool(model.config.is_encoder_decoder)
    absolute_positions = not encoder_decoder and getattr(model.config, "is_decoder", False)  # BERT-as-decoder
    batches = length_buckets(inputs, batch_size) if absolute_positions else source_batches(inputs, batch_size)
    texts: list[str | None] = [None] * len(inputs)
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for idx in track(batches, desc, progress):
            ids, mask = padded([inputs[i] for i in idx], tokenizer.pad_token_id, left=not encoder_decoder)
            # the cache even where training turned it off (gradient checkpointing sets use_cache: false)
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=True,
                                 **generation_kwargs(spec))
            if not encoder_decoder:
                out = out[:, ids.shape[1]:]  # the prompt comes back in front of the continuation
            for row, i in enumerate(idx):
                texts[i] = tokenizer.decode(out[row], skip_special_tokens=True).strip()
    model.train(was_training)
    return texts
