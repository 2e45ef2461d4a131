"""The order examples are visited in: seeded epochs for training, endless seeded streams over a pool
(an unlabeled corpus, a pseudo-labeled set), and length-sorted batches for inference.

Every order depends only on sizes, seeds and counters, never on RNG state: a resumed run sees exactly
the batches the interrupted one would have, without saving any sampler state.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch


def epoch_batches(lengths: list[int], batch_size: int, seed: int, group_by_length: bool = False,
                  accumulate: int = 1) -> list[list[int]]:
    """A seeded shuffle per (run seed, stage, epoch): the data order never depends on RNG state,
    so a resumed run sees exactly the batches the interrupted one would have.

    With ``group_by_length``, examples of similar length share an optimizer step's batch (sorted
    within shuffled windows of 50 steps, then the steps shuffled), so dynamic padding wastes little
    compute; each step's examples are cut into ``accumulate`` micro-batches, so accumulating k
    micro-batches of n trains on the same examples as one batch of k x n. The one short step (the
    epoch's remainder) comes last."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(lengths), generator=g).tolist()
    if not group_by_length:
        return [perm[i:i + batch_size] for i in range(0, len(perm), batch_size)]
    step = batch_size * accumulate
    window = 50 * step
    steps = []
    for start in range(0, len(perm), window):
        chunk = sorted(perm[start:start + window], key=lambda i: -lengths[i])
        steps += [chunk[i:i + step] for i in range(0, len(chunk), step)]
    short = [steps.pop()] if len(steps[-1]) < step else []  # stays last, as without grouping
    shuffled = [steps[i] for i in torch.randperm(len(steps), generator=g).tolist()] + short
    return [s[i:i + batch_size] for s in shuffled for i in range(0, len(s), batch_size)]


def length_sorted_batches(lengths: list[int], max_rows: int | None, max_tokens: int) -> list[list[int]]:
    """Inference batches: examples sorted by length (order does not matter and padding is wasted work),
    longest first so that a batch too large for the device fails at once. ``max_rows`` examples per
    batch when given; otherwise as many as fit ``max_tokens`` padded tokens, so short sentences go
    in large batches and long ones in small."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if max_rows is not None:
        return [order[i:i + max_rows] for i in range(0, len(order), max_rows)]
    batches: list[list[int]] = []
    for i in order:  # the first of a batch is its longest, so the padded size is rows x that length
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


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
