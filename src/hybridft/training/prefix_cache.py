"""Frozen-prefix cache: when the embeddings and the bottom N layers are frozen, their output for an
example never changes, so it is computed once and reused in later epochs and later stages.

The prefix runs in eval mode (no dropout) and without gradients, once per example, on unpadded
inputs (examples of one length share a batch, so no padding enters them). A training step pads the
cached outputs of its examples and runs only the trained layers above them; backward never enters
the prefix. Examples beyond the memory cap are recomputed each time through the same code, so
results with and without the cache are identical, bit for bit (tested). Compared with a run
without ``prefix_cache``, the difference is that the frozen prefix has no dropout.

Supported: BERT-family encoders (an ``embeddings`` module feeding a list of layers, with nothing
between the layers and the head), which is what hybridft's classification and tagging models are.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .. import architecture
from ..errors import HybridftError


class _Replay(nn.Module):
    """Stands in for the embeddings module during a step: returns the cached prefix output."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.hidden


def _owner(model: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    parent, _, attr = dotted.rpartition(".")
    return (model.get_submodule(parent) if parent else model), attr


class PrefixCache:
    def __init__(self, model: nn.Module, depth: int, max_mb: float):
        base_name = architecture.base_prefix(model)
        self.base = getattr(model, base_name) if base_name else model
        if not hasattr(self.base, "embeddings"):
            raise HybridftError(f"prefix_cache: {type(model).__name__} has no embeddings module feeding its layers "
                                "(supported: BERT-family encoders)")
        stack_name, self.stack = architecture.main_layer_stack(self.base)
        self.owner, self.attr = _owner(self.base, stack_name)
        self.depth, self.max_bytes = depth, max_mb * 2**20
        self.prefix_modules = [self.base.embeddings, *list(self.stack)[:depth]]
        self.fingerprint = self.current_fingerprint()
        self.store: dict[tuple[str, int], torch.Tensor] = {}
        self.bytes = 0
        self.hits = self.misses = 0

    def current_fingerprint(self) -> tuple:
        """Which prefix weights the cache holds outputs of: a weight changed in place (an optimizer
        step, a load) bumps its version counter, and the cache is no longer valid."""
        return tuple((id(p), p._version) for m in self.prefix_modules for p in m.parameters())

    def valid_for(self, model: nn.Module, depth: int) -> bool:
        return depth == self.depth and self.current_fingerprint() == self.fingerprint and \
            self.base is (getattr(model, architecture.base_prefix(model)) if architecture.base_prefix(model) else model)

    def eval_prefix(self) -> None:
        """The prefix has no dropout, whether its output comes from the cache or not."""
        for m in self.prefix_modules:
            m.eval()

    @contextmanager
    def _layers(self, layers: list[nn.Module]):
        setattr(self.owner, self.attr, nn.ModuleList(layers))
        try:
            yield
        finally:
            setattr(self.owner, self.attr, self.stack)

    @torch.no_grad()
    def _compute(self, examples: list[dict], collate) -> list[torch.Tensor]:
        """Prefix outputs, one unpadded [length, hidden] tensor per example."""
        out: list[torch.Tensor | None] = [None] * len(examples)
        by_length: dict[int, list[int]] = {}
        for i, ex in enumerate(examples):
            by_length.setdefault(len(ex["input_ids"]), []).append(i)
        self.eval_prefix()
        with self._layers(list(self.stack)[: self.depth]):
            for idx in by_length.values():
                batch = collate([{k: v for k, v in examples[i].items() if k != "labels"} for i in idx])
                hidden = self.base(**batch).last_hidden_state
                for row, i in enumerate(idx):
                    out[i] = hidden[row].clone()  # owns its memory: the cap counts what is kept
        return out

    def hidden_for(self, examples: list[dict], keys: list[tuple[str, int]], collate, width: int) -> torch.Tensor:
        """[batch, width, hidden]: the cached (or computed) prefix outputs, zero-padded to ``width``."""
        missing = [j for j, k in enumerate(keys) if k not in self.store]
        computed = dict(zip(missing, self._compute([examples[j] for j in missing], collate), strict=True))
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        rows = []
        for j, key in enumerate(keys):
            hidden = self.store.get(key)
            if hidden is None:
                hidden = computed[j]
                size = hidden.numel() * hidden.element_size()
                if self.bytes + size <= self.max_bytes:  # beyond the cap: recomputed next time
                    self.store[key] = hidden
                    self.bytes += size
            rows.append(hidden)
        padded = rows[0].new_zeros(len(rows), width, rows[0].shape[-1])
        for j, hidden in enumerate(rows):
            padded[j, : hidden.shape[0]] = hidden
        return padded

    def forward(self, model: nn.Module, batch: dict, examples: list[dict], keys: list[tuple[str, int]], collate,
                **kwargs):
        """The model's forward pass on ``batch`` with the prefix replaced by its cached outputs."""
        hidden = self.hidden_for(examples, keys, collate, batch["input_ids"].shape[1])
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with self._layers(list(self.stack)[self.depth:]):
            self.base.embeddings, embeddings = _Replay(hidden), self.base.embeddings
            try:
                return model(**inputs, **kwargs)
            finally:
                self.base.embeddings = embeddings

    def summary(self) -> dict:
        return {"frozen_layers": self.depth, "cached_examples": len(self.store), "cached_mb": self.bytes / 2**20,
                "hits": self.hits, "computed": self.misses}


def unsupported(model: nn.Module) -> str | None:
    """Why the cache cannot serve this model (it replays the output of an ``embeddings`` module that
    feeds the layers, as BERT-family encoders have; decoders embed and position inside their layers)."""
    base_name = architecture.base_prefix(model)
    base = getattr(model, base_name) if base_name else model
    if hasattr(base, "embeddings"):
        return None
    return f"off: the cache serves BERT-family encoders; {type(model).__name__} has no embeddings module feeding its layers"


def frozen_depth(model: nn.Module) -> int:
    """How many bottom layers, with the embeddings, have no trainable parameter (0: no prefix)."""
    base_name = architecture.base_prefix(model)
    base = getattr(model, base_name) if base_name else model
    if not hasattr(base, "embeddings") or any(p.requires_grad for p in base.embeddings.parameters()):
        return 0
    _, stack = architecture.main_layer_stack(base)
    for i, layer in enumerate(stack):
        if any(p.requires_grad for p in layer.parameters()):
            return i
    return len(stack)


def prefix_cache_for_stage(run, model: nn.Module, max_mb: float) -> PrefixCache | None:
    """The run's cache if it still holds this prefix's outputs (a later stage that keeps it frozen),
    else a new one; None when nothing below the trained layers is frozen."""
    depth = frozen_depth(model)
    if depth == 0:
        return None
    cache = run.artifacts.prefix_cache
    if cache is None or not cache.valid_for(model, depth):
        cache = PrefixCache(model, depth, max_mb)
        run.artifacts.prefix_cache = cache
    cache.max_bytes = max_mb * 2**20
    cache.hits = cache.misses = 0  # counted per stage
    return cache
