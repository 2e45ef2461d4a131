"""The order examples are visited in: seeded epochs for training, endless seeded streams over a pool
(an unlabeled corpus, a pseudo-labeled set), and length-sorted batches for inference.

Every order depends only on sizes, seeds and counters, never on RNG state: a resumed run sees exactly
the batches the interrupted one would have, without saving any sampler state.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch


def epoch_batches(lengths: list[int], batch_size: int, seed: int, group_by_length: bool = False) -> list[list[int]]:
    """A seeded shuffle per (run seed, stage, epoch): the data order never depends on RNG state,
    so a resumed run sees exactly the batches the interrupted one would have.

    With ``group_by_length``, examples of similar length share a batch (sorted within shuffled
    windows of 50 batches, then the batches shuffled), so dynamic padding wastes little compute."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(lengths), generator=g).tolist()
    if not group_by_length:
        return [perm[i:i + batch_size] for i in range(0, len(perm), batch_size)]
    window = 50 * batch_size
    batches = []
    for start in range(0, len(perm), window):
        chunk = sorted(perm[start:start + window], key=lambda i: -lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def length_sorted_batches(examples: list[dict], batch_size: int) -> list[list[int]]:
    """Batches of similar length: evaluation order does not matter and padding is wasted work."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@lru_cache(maxsize=8)
def _permutation(n: int, seed: int) -> tuple[int, ...]:
    return tuple(torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist())


def stream_batch(n: int, batch_size: int, seed: int, draw: int) -> list[int]:
    """Indices of the ``draw``-th batch: a fresh permutation of the pool each pass."""
    per_pass = math.ceil(n / batch_size)
    perm = _permutation(n, seed * 1_000_003 + draw // per_pass)
    start = (draw % per_pass) * batch_size
    return list(perm[start:start + batch_size])


def my_batches(count: int, processes) -> list[int]:
    """The batches this process computes: every world-th one, repeated at the end so that every process
    runs as many forward passes as the others (sharded weights gather in every forward)."""
    if processes is None or processes.world == 1:
        return list(range(count))
    mine = list(range(processes.rank, count, processes.world))
    turns = -(-count // processes.world)
    return mine + [mine[-1] if mine else 0] * (turns - len(mine))
