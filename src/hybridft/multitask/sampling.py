"""Which task each batch of a multi-task epoch comes from.

An epoch has as many batches as all tasks together. ``proportional`` uses every batch of every task
once, in a seeded random interleaving; ``temperature`` draws the task of each batch with probability
proportional to size^(1/T) (T > 1 favours small tasks; a task that runs out starts a new pass over
its data); ``round_robin`` takes one batch from each task in turn.
"""

from __future__ import annotations

import torch


def multitask_batches(task_rows: list[list[int]], batch_size: int, seed: int, strategy: str,
                      temperature: float, lengths: list[int] | None = None) -> list[list[int]]:
    """``task_rows[t]``: the indices (into the flat training list) of task t's examples. With
    ``lengths`` (of every example), each task's batches hold examples of similar length, as
    ``group_by_length`` does for one task: sorted within shuffled windows of 50 batches, the
    batches then shuffled."""
    g = torch.Generator().manual_seed(seed)
    passes = [0] * len(task_rows)

    def shuffled(t: int) -> list[list[int]]:
        rows = task_rows[t]
        gt = torch.Generator().manual_seed(seed * 7919 + t * 104729 + passes[t])
        perm = [rows[i] for i in torch.randperm(len(rows), generator=gt).tolist()]
        passes[t] += 1
        if lengths is None:
            return [perm[i:i + batch_size] for i in range(0, len(perm), batch_size)]
        window = 50 * batch_size
        grouped = [i for w in range(0, len(perm), window) for i in sorted(perm[w:w + window], key=lambda i: -lengths[i])]
        batches = [grouped[i:i + batch_size] for i in range(0, len(grouped), batch_size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=gt).tolist()]

    queues = [shuffled(t) for t in range(len(task_rows))]
    total = sum(len(q) for q in queues)
    if strategy == "proportional":
        order = [t for t, q in enumerate(queues) for _ in q]
        order = [order[i] for i in torch.randperm(len(order), generator=g).tolist()]
    elif strategy == "round_robin":
        order = [i % len(queues) for i in range(total)]
    else:
        weights = torch.tensor([len(r) ** (1.0 / temperature) for r in task_rows], dtype=torch.float64)
        order = torch.multinomial(weights / weights.sum(), total, replacement=True, generator=g).tolist()
    batches = []
    for t in order:
        if not queues[t]:
            queues[t] = shuffled(t)
        batches.append(queues[t].pop(0))
    return batches
