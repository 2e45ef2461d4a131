"""`badam`: BAdam (Luo et al. 2024), block coordinate descent with Adam: one block (a transformer
layer) trains at a time, the next one every ``switch_block_every`` optimizer steps, in ascending,
descending, fixed or random order; at each switch the optimizer state starts afresh, so Adam's
moments are held for one block only, and on one process only that block's gradients are computed.

hybridft's own implementation (an AdamW whose stage calls it before each step, as it calls the
selectors), not the ``badam`` package's ``BlockOptimizer``: that one keeps the block position outside
its ``state_dict`` (a resumed run would start again from the first block), draws its random order
from the global RNG (moving every dropout mask after it), finds blocks only by a ``layers.<i>.`` name
(not BERT's ``layer.<i>.``) and keeps fp32 copies of a block for a half-precision model, where
hybridft already trains fp32 weights. Here the block of each step is a function of the step and the
stage's seed, so a resumed run trains the blocks the interrupted one would have.

Combined with a selector, the blocks are what it trains, layer by layer (LoRA's factors of each
layer, the layers ``layers`` names); what trains outside the layers (embeddings, head, final norm)
trains at every step, or is one more block (``outside_layers: block``). A block's entries stay bit for
bit as they were while it is inactive. Under several processes (DDP, FSDP), where every process must
hand in the same parameters, the inactive blocks' gradients are dropped after the reduction, before
clipping and the step, which makes the update one process's.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from .. import architecture
from ..errors import HybridftError
from .base import OPTIMIZERS, OptimizerEntrySpec, parameter_groups, trained_parameters


class BadamSpec(OptimizerEntrySpec):
    name: Literal["badam"] = "badam"
    switch_block_every: int = Field(50, ge=1, description="optimizer steps each block trains before the next")
    switch_mode: Literal["ascending", "descending", "random", "fixed"] = Field(
        "descending", description="the order of the blocks: from the bottom layer up, from the top down, a seeded "
                                  "random order each round, or start_block alone")
    start_block: int | None = Field(None, ge=0, description="the first block (ascending, descending, fixed); "
                                                            "default: the bottom for ascending, the top otherwise")
    outside_layers: Literal["always", "block"] = Field(
        "always", description="what trains outside the transformer layers (embeddings, head, final norm): always, "
                              "at every step; block, as one more block after the layers")

    def problem(self, model, trained: set[str]) -> str | None:
        blocks, _ = block_names(model, trained, self.outside_layers)
        if not blocks:
            return "badam: the stage trains no transformer layer, so there is no block to switch between"
        if self.start_block is not None and self.start_block >= len(blocks):
            return f"badam: start_block {self.start_block} but the stage trains {len(blocks)} blocks (0..{len(blocks) - 1})"
        return None


def block_names(model, trained: set[str], outside_layers: str) -> tuple[list[list[str]], list[str]]:
    """(blocks: the trained parameters of each layer that has some, bottom first; then those that
    train at every step)."""
    blocks, inside = [], set()
    for i in range(architecture.num_layers(model)):
        names = architecture.layer_param_names(model, i)
        inside.update(names)
        mine = [n for n in names if n in trained]
        if mine:
            blocks.append(mine)
    rest = [n for n, _ in model.named_parameters() if n in trained and n not in inside]
    if outside_layers == "block" and rest:
        return [*blocks, rest], []
    return blocks, rest


class BlockAdamW(torch.optim.AdamW):
    """AdamW over every trained parameter, of which only the active block's and the always-trained
    ones have gradients at a step; ``before_step`` and ``after_backward`` are called by the stage."""

    def __init__(self, groups: list[dict], blocks: list[list[torch.nn.Parameter]], spec: BadamSpec):
        super().__init__(groups, lr=spec.lr, betas=spec.betas, eps=spec.eps, fused=True)
        self.blocks, self.spec = blocks, spec
        self.period: int | None = None
        self.active: int | None = None
        self.one_process = True

    def block_at(self, period: int, seed: int) -> int:
        n, spec = len(self.blocks), self.spec
        if spec.switch_mode == "random":  # a new seeded order each round of n blocks
            generator = torch.Generator().manual_seed(seed * 7919 + period // n)
            return torch.randperm(n, generator=generator).tolist()[period % n]
        start = spec.start_block if spec.start_block is not None else (0 if spec.switch_mode == "ascending" else n - 1)
        direction = {"ascending": 1, "descending": -1, "fixed": 0}[spec.switch_mode]
        return (start + direction * period) % n

    def before_step(self, model, stage) -> None:
        """At a switch, the next block, and a fresh optimizer state; on one process the other blocks
        are frozen outright (no gradient computed or held)."""
        step = stage.state.step
        period = step // self.spec.switch_block_every
        if period == self.period:
            return
        if step % self.spec.switch_block_every == 0:  # a switch (not a resume in the middle of a period)
            self.state.clear()  # as BAdam: every moment starts afresh with the new block
        self.active = self.block_at(period, stage.seed)
        self.period = period
        self.one_process = stage.run.processes.world == 1
        if self.one_process:
            for i, block in enumerate(self.blocks):
                for p in block:
                    p.requires_grad_(i == self.active)

    def after_backward(self, model) -> None:
        if self.one_process:
            return
        for i, block in enumerate(self.blocks):
            if i != self.active:
                for p in block:
                    p.grad = None  # several processes: every gradient was reduced; the inactive ones are dropped


@OPTIMIZERS.register(BadamSpec)
def build_badam(spec: BadamSpec, model, lr_overrides=None, extra=()):
    """BAdam: one transformer layer trains at a time with Adam, switching every K steps (hybridft's own)."""
    trained = {n for n, _ in trained_parameters(model, extra)}
    problem = spec.problem(model, trained)
    if problem:
        raise HybridftError(problem)
    params = dict(model.named_parameters())
    blocks, _ = block_names(model, trained, spec.outside_layers)
    groups = parameter_groups(model, spec.weight_decay, spec.lr, lr_overrides, extra)
    return BlockAdamW(groups, [[params[n] for n in block] for block in blocks], spec)
