"""Learned mixing: one mixing coefficient per part (embeddings / lower / upper / head) or per tensor,
alpha_g = sigmoid(c_g), trained on training data with every weight of both models frozen.

The mixed model is M_fine + alpha_g * (M_pre - M_fine) for each group g; only the c_g receive
gradients (through ``torch.func.functional_call``), so this is a learned "attention over the two
models" with as many parameters as groups. Starts from the alpha the sweep chose.
"""

from __future__ import annotations

import math

import torch
from torch.func import functional_call

from ..architecture import num_layers
from ..mixing import align_keys, part_of
from ..tasks import task_loss


def mix_groups(names: list[str], granularity: str, n_layers: int) -> dict[str, str]:
    return {n: (part_of(n, n_layers) if granularity == "part" else n) for n in names}


def learn_mixing(run, model, pre: dict, fine: dict, start_alpha: float, spec, batch_size: int) -> dict:
    """Train the coefficients; returns the learned alphas per group (the model is left unchanged)."""
    pre = align_keys(pre, fine)
    mixable = [n for n, t in fine.items() if n in pre and t.is_floating_point()]
    groups = mix_groups(mixable, spec.learn_granularity, num_layers(model))
    keys = sorted(set(groups.values()))
    index = {k: i for i, k in enumerate(keys)}
    start = min(max(start_alpha, 1e-3), 1 - 1e-3)
    coeffs = torch.nn.Parameter(torch.full((len(keys),), math.log(start / (1 - start)), device=run.device))
    delta = {n: (pre[n].to(fine[n].device) - fine[n]) for n in mixable}
    buffers = {n: b for n, b in model.named_buffers()}
    optimizer = torch.optim.Adam([coeffs], lr=spec.learn_lr)
    train, bs = run.data.train, batch_size
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(run.recipe.seed)).tolist()
    was_training = model.training
    model.train()
    for step in range(spec.learn_steps):
        start_i = (step * bs) % len(order)
        batch = {k: v.to(run.device) for k, v in run.collator([train[i] for i in order[start_i:start_i + bs]]).items()}
        labels = batch.pop("labels")
        alphas = torch.sigmoid(coeffs)
        params = {n: (fine[n] + alphas[index[groups[n]]] * delta[n]) if n in delta else fine[n]
                  for n, _ in model.named_parameters()}
        logits = functional_call(model, {**params, **buffers}, args=(), kwargs=batch).logits
        loss = task_loss(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        run.log.write(run.global_step, {"stage": "learned-mix", "learn_step": step + 1, "loss/learned_mix": float(loss.detach())})
    model.train(was_training)
    learned = torch.sigmoid(coeffs.detach()).tolist()
    return {k: learned[index[k]] for k in keys}
