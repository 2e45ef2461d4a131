"""`linear`: alpha * M_pre + (1 - alpha) * M_fine (WiSE-FT, Wortsman et al., 2022); with several
fine-tuned models, M_fine is their weighted mean (a model soup, Wortsman et al., 2022)."""

from __future__ import annotations

import torch

from .base import MergeMethod, weighted_mean


class Linear(MergeMethod):
    name = "linear"
    about = "alpha * M_pre + (1 - alpha) * mean of the fine-tuned models (WiSE-FT; a model soup)"
    searches = ("alpha",)

    def merged(self, pre, fines, weights, point):
        return torch.lerp(weighted_mean(fines, weights), pre, point.alpha)
