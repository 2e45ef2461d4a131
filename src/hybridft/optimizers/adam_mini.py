"""`adam_mini`: Adam-mini (Zhang et al. 2024), through the ``adam-mini`` package: Adam's first moment
for every entry, but one second moment per block (an attention head of the query and key, an output
neuron of the other matrices, a whole norm) instead of one per entry, so about half of AdamW's state.

The package finds blocks by name (``q_proj``, ``query``, ``mlp``, ``output``...). hybridft adds the
names it does not know of common models (BERT's ``dense`` and ``intermediate``, a classification
head), and hands it 1-d tensors other than biases under a neutral name, which the package treats as
one block each (as it does norms): its per-neuron rule would index a 1-d tensor as a matrix. Weight
decay follows hybridft's rule (none on 1-d tensors), and selectors' own learning rates hold.

The package reduces a statistic across processes when it sees several GPUs; every process of a
hybridft DDP run holds whole gradients already averaged, so that reduction is turned off (it would
also fail on one process of a machine with several GPUs). Under FSDP: refused.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..errors import HybridftError
from .base import OPTIMIZERS, OptimizerEntrySpec, import_package, refuse_sharded, trained_parameters

# names the package does not know, which it would otherwise give a single learning rate per matrix
EXTRA_NEURON_NAMES = {"dense", "intermediate", "classifier", "score"}
NEUTRAL = "block"  # contains none of the package's keywords: one second moment for the whole tensor


class AdamMiniSpec(OptimizerEntrySpec):
    package = "adam-mini"
    module = "adam_mini"
    install = "adam-mini"

    name: Literal["adam_mini"] = "adam_mini"
    dim: int | None = Field(None, gt=0, description="hidden size (default: the model config's hidden_size)")
    n_heads: int | None = Field(None, gt=0, description="attention heads (default: the model config's "
                                                        "num_attention_heads)")
    n_kv_heads: int | None = Field(None, gt=0, description="key/value heads of grouped-query attention (default: "
                                                           "the model config's num_key_value_heads, else n_heads)")

    def shape(self, model) -> tuple[int, int, int]:
        """(dim, n_heads, n_kv_heads), from the entry or the model's config."""
        config = getattr(model, "config", None)
        dim = self.dim or getattr(config, "hidden_size", None)
        heads = self.n_heads or getattr(config, "num_attention_heads", None)
        if not dim or not heads:
            raise HybridftError("adam_mini: the model config has no hidden_size or num_attention_heads; give dim "
                                "and n_heads")
        kv = self.n_kv_heads or getattr(config, "num_key_value_heads", None) or heads
        if heads % kv or (dim * dim) % heads:
            raise HybridftError(f"adam_mini: dim {dim}, n_heads {heads}, n_kv_heads {kv} do not divide: n_heads must "
                                "be a multiple of n_kv_heads and dim x dim of n_heads")
        return dim, heads, kv

    def problem(self, model, trained: set[str]) -> str | None:
        try:
            self.shape(model)
        except HybridftError as e:
            return str(e)
        return self.missing_package()


def name_for_package(name: str, p, head_numel: int, query_key: set[str]) -> str:
    """What the package is told a parameter is called: its own name, unless its rule for that name
    cannot take the tensor's shape."""
    lower = name.lower()
    if "bias" in lower:
        return lower  # the package's plain-Adam block
    if p.ndim != 2 or (any(k in lower for k in query_key) and p.numel() % head_numel):
        return NEUTRAL  # a norm, or a query/key matrix not cut into heads (a LoRA factor)
    return lower


@OPTIMIZERS.register(AdamMiniSpec)
def build_adam_mini(spec: AdamMiniSpec, model, lr_overrides=None, extra=()):
    """Adam-mini: one second moment per block (head, neuron, norm) instead of per entry (adam-mini)."""
    refuse_sharded(spec, model, "its per-block statistics of a shard would need a reduction the package does only "
                                "between GPUs")
    package = import_package(spec)
    dim, heads, kv = spec.shape(model)
    named = trained_parameters(model, extra)
    optimizer = package.Adam_mini(named, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay,
                                  dim=dim, n_heads=heads, n_kv_heads=kv, verbose=False)
    optimizer.world_size = 1  # whole, already averaged gradients on every process: nothing to reduce
    optimizer.mlp_names |= EXTRA_NEURON_NAMES
    names = {id(p): n for n, p in named}
    for group in optimizer.param_groups:  # one per parameter
        (p,) = group["params"]
        group["name"] = name_for_package(names[id(p)], p, optimizer.head_numel, optimizer.wqk_names)
        group["weight_decay"] = spec.weight_decay if p.ndim >= 2 else 0.0
        group["lr"] = (lr_overrides or {}).get(names[id(p)], spec.lr)
    return optimizer
