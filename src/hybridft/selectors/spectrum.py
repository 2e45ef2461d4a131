"""`spectrum`: train the weight matrices whose spectrum carries the most signal (Hartford et al. 2024).

Each projection of the transformer blocks is scored from its weights alone, no data: its singular
values are split at the Marchenko–Pastur edge of a random matrix of its shape, with the noise scale
estimated from their interquartile range (IQR / 1.349, robust to the few large signal values). The
score is the sum of the values above the edge over the sum of those below, divided by the largest
singular value, as Spectrum's scanner ranks matrices. Within each module type (``self_attn.q_proj``,
``mlp.down_proj``, ...) the top ``top_fraction`` train whole, with their biases; the rest stay
frozen. The head trains when it is new; the embeddings on request.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from .. import architecture
from ..registry import SELECTORS
from .base import Selector, SelectorSpec


class SpectrumSpec(SelectorSpec):
    name: Literal["spectrum"] = "spectrum"
    top_fraction: float = Field(0.25, gt=0, le=1, description="the share of each module type's matrices that train, "
                                                              "those of highest signal-to-noise ratio")
    head: bool | None = Field(None, description="also train the task head; default: when it is new")
    embeddings: bool = Field(False, description="also train the embeddings")


def marchenko_pastur_edge(sigma: float, rows: int, cols: int) -> float:
    """The largest singular value a rows x cols matrix of i.i.d. noise of scale ``sigma`` reaches."""
    beta = min(rows, cols) / max(rows, cols)
    return sigma * (1 + math.sqrt(beta))


def singular_values(weight: torch.Tensor) -> torch.Tensor:
    """Largest first, from the eigenvalues of the smaller Gram matrix in float64: an SVD of every
    block matrix of an LLM would take minutes on a CPU, this takes seconds."""
    w = weight.detach().double()
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    return torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(0)


def signal_to_noise(weight: torch.Tensor) -> float:
    """The matrix's signal over its noise by its singular values, over its largest one."""
    values = singular_values(weight)
    sigma = float(torch.quantile(values, 0.75) - torch.quantile(values, 0.25)) / 1.349
    edge = marchenko_pastur_edge(sigma, *weight.shape)
    signal, noise = float(values[values > edge].sum()), float(values[values <= edge].sum())
    return (signal / noise if noise > 0 else math.inf) / float(values[0])


def module_type(name: str) -> str:
    """``model.layers.3.self_attn.q_proj`` -> ``self_attn.q_proj``: the same matrix in every block."""
    match = architecture.LAYER_INDEX.search(f".{name}.")
    return name[match.end() - 1:] if match else name


@SELECTORS.register(SpectrumSpec)
class Spectrum(Selector):
    """The highest-SNR fraction of each type of block matrix, scored from the weights (no data)."""

    def __init__(self, config):
        super().__init__(config)
        self.snr: dict[str, float] = {}  # weight name -> score, once scored
        self.chosen: list[str] = []

    def matrices(self, model) -> list[str]:
        """The weight names of every projection inside the transformer blocks (a LoRA-wrapped one's
        own weight, ``...q_proj.base_layer.weight``, in a union with LoRA)."""
        names = {id(p): n for n, p in model.named_parameters()}
        return [names[id(projection.weight)] for _, stack in architecture.layer_stacks(model) for block in stack
                for _, _, projection in architecture.projections(block) if id(projection.weight) in names]

    def choose(self, model) -> list[str]:
        by_type: dict[str, list[str]] = {}
        for name in self.matrices(model):
            kind = module_type(name.removesuffix(".weight"))
            for wrapper in architecture.WRAPPED:
                kind = kind.removesuffix(f".{wrapper}")
            by_type.setdefault(kind, []).append(name)
        weights = dict(model.named_parameters())
        if next(iter(weights.values())).is_meta:  # validate's weightless skeleton: every candidate's shape
            return [n for names in by_type.values() for n in names]
        self.snr = {n: signal_to_noise(weights[n]) for names in by_type.values() for n in names}
        chosen = []
        for names in by_type.values():
            keep = max(1, math.floor(len(names) * self.config.top_fraction))
            chosen += sorted(names, key=lambda n: (-self.snr[n], n))[:keep]
        return sorted(chosen)

    def trainable(self, model):
        self.chosen = self.choose(model)
        params = dict(model.named_parameters())
        names = {n for w in self.chosen for n in (w, w.removesuffix("weight") + "bias") if n in params}
        if self.config.embeddings:
            names.update(architecture.embedding_param_names(model))
        if architecture.trains_head(self.config.head, model):
            names.update(architecture.head_param_names(model))
        return names

    def summary(self) -> dict:
        return {"chosen": self.chosen, "snr": {n: round(v, 6) for n, v in sorted(self.snr.items())}}
