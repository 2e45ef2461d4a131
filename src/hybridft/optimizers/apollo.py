"""`apollo_adamw`: APOLLO (Zhu et al. 2024), through the ``apollo-torch`` package. Adam's moments are
kept for a low-rank (by default random, seeded) projection of each projected weight's gradient; from
them APOLLO reads how much to scale each channel (or the whole tensor) of the raw gradient, and
applies that scaled gradient as the update. rank: 1 with scale_type: tensor is APOLLO-Mini (SGD-like
memory).

The package seeds each weight's random projection with its position among the optimizer's
parameters: the same on every process, so DDP matches one process; a state freed by a selector (lisa)
gets its seed back. Under FSDP a process would project a shard: refused.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from .base import OPTIMIZERS, import_part, refuse_sharded
from .lowrank import LowRankSpec, ProjectorState, projected_groups


class ApolloSpec(LowRankSpec):
    package = "apollo-torch"
    module = "apollo_torch"
    install = "--no-deps apollo-torch (its bitsandbytes serves 8-bit variants hybridft does not use)"

    name: Literal["apollo_adamw"] = "apollo_adamw"
    proj: Literal["random", "svd"] = Field("random", description="the projection: random (seeded, no SVD) or svd "
                                                                  "(GaLore's)")
    proj_type: Literal["std", "reverse_std", "left", "right"] = Field(
        "std", description="which side is projected: std, the smaller one; reverse_std, the larger; left, right")
    scale_type: Literal["channel", "tensor"] = Field(
        "channel", description="one gradient scale per channel, or one per tensor (APOLLO-Mini)")
    scale_front: bool = Field(False, description="apply sqrt(scale) to the scaled gradient before the norm-growth "
                                                 "limiter instead of after")
    norm_growth_limiter: bool = Field(True, description="limit how fast the update's norm grows from step to step "
                                                        "(Fira's limiter, 1.01x)")


def apollo_class(spec: ApolloSpec):
    apollo = import_part(spec, "apollo")

    class APOLLOAdamW(ProjectorState, apollo.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # the package's own numbering (its __init__ puts it into each state): kept, so that a state
            # another part of the stage freed (lisa's leaving layers) gets its weight's seed back
            order = [p for group in self.param_groups for p in group["params"]]
            self.seeds = {p: i for i, p in enumerate(order, start=1) if p.requires_grad}

        def new_projector(self, group, state):
            return self._initialize_projector(group, state)

        @torch.no_grad()
        def step(self, closure=None):
            for p, seed in self.seeds.items():
                if p.grad is not None:
                    self.state[p].setdefault("seed", seed)
            return super().step(closure)

    return APOLLOAdamW


@OPTIMIZERS.register(ApolloSpec)
def build_apollo(spec: ApolloSpec, model, lr_overrides=None, extra=()):
    """APOLLO: AdamW's update scaled from the moments of a low-rank projection (apollo-torch)."""
    refuse_sharded(spec, model, "it projects each weight's whole gradient")
    projection = {"rank": spec.rank, "proj": spec.proj, "update_proj_gap": spec.update_proj_gap, "scale": spec.scale,
                  "proj_type": spec.proj_type, "scale_type": spec.scale_type}
    groups = projected_groups(spec, model, lr_overrides, extra, projection)
    return apollo_class(spec)(groups, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay,
                              scale_front=spec.scale_front, disable_nl=not spec.norm_growth_limiter)
