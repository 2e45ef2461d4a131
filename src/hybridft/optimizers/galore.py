"""`galore_adamw`: GaLore (Zhao et al. 2024), Adam on a low-rank projection of each projected
weight's gradient (the top singular vectors of the gradient, recomputed every ``update_proj_gap``
steps), through the ``galore-torch`` package. The moments of a projected m x n weight are rank x n
(or m x rank) instead of m x n; everything else trains with the package's plain Adam.

Under DDP every process holds the same averaged gradient, so each computes the same projection and
the run matches one process (``tests/test_optimizers.py``). Under FSDP a process holds a shard of
each weight, whose SVD is another projection: refused.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import OPTIMIZERS, import_part, refuse_sharded
from .lowrank import LowRankSpec, ProjectorState, projected_groups


class GaloreSpec(LowRankSpec):
    package = "galore-torch"
    module = "galore_torch"
    install = "--no-deps galore-torch (its bitsandbytes serves an 8-bit variant hybridft does not use)"

    name: Literal["galore_adamw"] = "galore_adamw"
    scale: float = Field(0.25, gt=0, description="scale of the projected-back update (GaLore's alpha)")
    proj_type: Literal["std", "reverse_std", "left", "right", "full"] = Field(
        "std", description="which side is projected: std, the smaller one; reverse_std, the larger; left, right; "
                           "full, both")


def galore_class(spec: GaloreSpec):
    adamw, projector = import_part(spec, "adamw"), import_part(spec, "galore_projector")

    class GaLoreAdamW(ProjectorState, adamw.AdamW):
        def new_projector(self, group, state):
            return projector.GaLoreProjector(group["rank"], update_proj_gap=group["update_proj_gap"],
                                             scale=group["scale"], proj_type=group["proj_type"])

    return GaLoreAdamW


@OPTIMIZERS.register(GaloreSpec)
def build_galore(spec: GaloreSpec, model, lr_overrides=None, extra=()):
    """GaLore: Adam on a low-rank projection of each large 2-D weight's gradient (galore-torch)."""
    refuse_sharded(spec, model, "it projects each weight's whole gradient (the SVD of a shard is another projection)")
    projection = {"rank": spec.rank, "update_proj_gap": spec.update_proj_gap, "scale": spec.scale,
                  "proj_type": spec.proj_type}
    groups = projected_groups(spec, model, lr_overrides, extra, projection)
    return galore_class(spec)(groups, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay,
                              no_deprecation_warning=True)
