"""Which parameters a stage trains: its selectors prepared on the run's model, everything else frozen."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..architecture import trainable_by_module
from ..errors import HybridftError
from ..pooling import pooled_as
from ..registry import SELECTORS
from ..selectors import check_one_entry_per_module
from .checkpoint import restore_selector_state
from .masking import EntryMasks, union_selection
from .search import choose_value


@dataclass
class Selection:
    model: torch.nn.Module
    selectors: list
    masks: dict  # name -> bool mask of the tensors trained in part
    n_trainable: int
    where: dict  # trainable entries per module, for the report


def select_parameters(model, selectors) -> tuple[int, dict]:
    """Freeze everything, then train the union of what the selectors name.
    Returns the number of trainable entries and the entry masks of partly trained tensors."""
    whole, masks = union_selection(model, selectors)
    for name, p in model.named_parameters():
        p.requires_grad_(name in whole or name in masks)
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in whole) + EntryMasks.count(masks), masks


def select(run, spec, name: str, resume_from, train_stage) -> Selection:
    """Prepare the stage's selectors on the run's model and freeze all that they do not select.
    A resumed stage takes the selectors' data-dependent state from its checkpoint. ``train_stage``
    (the stage runner) trains the trials of a selector that chooses a value on held-out data."""
    selectors = [SELECTORS.build(c) for c in spec.select]
    model = pooled_as(run.model, spec)
    check_one_entry_per_module(selectors, model)
    for s in selectors:
        model = s.prepare(model, run)
    if resume_from is not None:
        restore_selector_state(resume_from, selectors)
    else:
        for s in selectors:
            for part in s.parts():
                if part.search_values():
                    part.choose(*choose_value(part, model, run, spec, train_stage))
            s.fit(model, run, spec)
    n_trainable, masks = select_parameters(model, selectors)
    if n_trainable == 0:
        raise HybridftError(f"stage {name}: the selection trains no parameter")
    return Selection(model, selectors, masks, n_trainable, trainable_by_module(model))
