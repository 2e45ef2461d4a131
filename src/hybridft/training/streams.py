"""Endless seeded batch streams over a pool of examples (an unlabeled corpus, a pseudo-labeled set).

The k-th batch depends only on (pool size, batch size, seed, k): a resumed run draws exactly the
batches the interrupted one would have, without saving any sampler state.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch


@lru_cache(maxsize=8)
def _permutation(n: int, seed: int) -> tuple[int, ...]:
    return tuple(torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist())


def stream_batch(n: int, batch_size: int, seed: int, draw: int) -> list[int]:
    """Indices of the ``draw``-th batch: a fresh permutation of the pool each pass."""
    per_pass = math.ceil(n / batch_size)
    perm = _permutation(n, seed * 1_000_003 + draw // per_pass)
    start = (draw % per_pass) * batch_size
    return list(perm[start:start + batch_size])
