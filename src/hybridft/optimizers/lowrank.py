"""What GaLore and APOLLO share: the keys of a low-rank projection, the weights it applies to, and
checkpoints of the projectors their packages keep in the optimizer state.

Both packages keep a projector object in the state of each projected weight. A hybridft checkpoint
holds tensors and plain values only (it is loaded with ``weights_only``, never unpickled), so the
projector is saved as its matrices and counters and rebuilt on loading: a resumed run projects with
the very matrices the interrupted one had.
"""

from __future__ import annotations

import re

import torch
from pydantic import Field, field_validator

from .. import architecture
from ..errors import HybridftError
from .base import OptimizerEntrySpec, parameter_groups, trained_parameters

# what a projector is saved as: its matrices (a pair for GaLore's proj_type full) and, for APOLLO's
# random projection, the seed of its next matrix
PROJECTOR_FIELDS = ("ortho_matrix", "seed", "svd_count")


class LowRankSpec(OptimizerEntrySpec):
    rank: int = Field(128, ge=1, description="rank of the projection: the optimizer moments of a projected "
                                             "weight are rank wide instead of its full width")
    update_proj_gap: int = Field(200, ge=1, description="optimizer steps between new projections")
    scale: float = Field(1.0, gt=0, description="scale of the projected-back update")
    target_modules: list[str] | None = Field(
        None, description="regular expressions searched in module names (e.g. [attn, mlp]); the 2-D weights of "
                          "the modules they match are projected. Default: every 2-D weight inside the transformer "
                          "layers. A weight whose both sides are not above rank is not projected (nothing to "
                          "save); it trains with plain Adam, as every other parameter does")

    @field_validator("target_modules")
    @classmethod
    def _patterns_compile(cls, patterns):
        for pat in patterns or []:
            try:
                re.compile(pat)
            except re.error as e:
                raise ValueError(f"{pat!r} is not a regular expression ({e})") from None
        return patterns

    def problem(self, model, trained: set[str]) -> str | None:
        missing = self.missing_package()
        if missing:
            return missing
        if projected_names(model, trained, self.target_modules, self.rank):
            return None
        where = f"of the modules {self.target_modules} match" if self.target_modules else "inside the layers"
        return (f"{self.name} projects no weight: no trained 2-D weight {where} has both sides above rank "
                f"{self.rank}; lower rank or change target_modules")


def projected_names(model: torch.nn.Module, trained: set[str], patterns: list[str] | None, rank: int) -> list[str]:
    """The trained 2-D weights the projection applies to: of the modules ``patterns`` match
    (``re.search`` on the module's name), or by default those inside the transformer layers
    (attention and MLP), each with both sides above ``rank`` (a smaller matrix's moments are no
    wider than the projection's)."""
    inside = None if patterns else {n for i in range(architecture.num_layers(model))
                                    for n in architecture.layer_param_names(model, i)}
    found = []
    for name, p in model.named_parameters():
        if name not in trained or p.ndim != 2 or min(p.shape) <= rank:
            continue
        module = name.rpartition(".")[0]
        if any(re.search(pat, module) for pat in patterns) if patterns else name in inside:
            found.append(name)
    return found


def projected_groups(spec: LowRankSpec, model, lr_overrides, extra, projection: dict) -> list[dict]:
    """hybridft's parameter groups (weight decay, per-selector learning rates), each split into its
    projected weights (with ``projection``'s keys, which is how both packages tell them) and the rest."""
    trained = {n for n, _ in trained_parameters(model, extra)}
    params = dict(model.named_parameters())
    chosen = {id(params[n]) for n in projected_names(model, trained, spec.target_modules, spec.rank)}
    if not chosen:
        raise HybridftError(spec.problem(model, trained))
    groups = []
    for group in parameter_groups(model, spec.weight_decay, spec.lr, lr_overrides, extra):
        low = [p for p in group["params"] if id(p) in chosen]
        rest = [p for p in group["params"] if id(p) not in chosen]
        groups += [{**group, "params": rest}] if rest else []
        groups += [{**group, "params": low, **projection}] if low else []
    return groups


class ProjectorState:
    """Mixed into a package's optimizer: its projectors saved as tensors and plain values, rebuilt on
    loading by ``new_projector(group, state)``."""

    def new_projector(self, group: dict, state: dict):
        raise NotImplementedError

    def state_dict(self):
        out = super().state_dict()
        # the packed state shares its dicts with the live one: each is copied before its projector is replaced
        out["state"] = {k: {**s, "projector": {f: getattr(s["projector"], f) for f in PROJECTOR_FIELDS
                                               if hasattr(s["projector"], f)}} if "projector" in s else s
                        for k, s in out["state"].items()}
        return out

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p, {})
                if isinstance(state.get("projector"), dict):
                    saved = state["projector"]
                    state["projector"] = self.new_projector(group, state)
                    for field, value in saved.items():
                        setattr(state["projector"], field, value)
