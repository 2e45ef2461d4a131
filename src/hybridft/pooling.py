"""``pooling: mean``: a classification head that reads the mean of the last layer's token states.

Sentence-embedding models (the embedded MiniLM among them) were trained on mean-pooled tokens, while
transformers' classification heads read the first token ([CLS]), which such a model never trained:
on 500 SST-2 labels a mean-pooled head fine-tunes about a point and a half better. The model stays
the same transformers class with the same weights: a hook replaces the last layer's first-token
state by the mean over the real tokens, where every first-token head (BERT's pooler, RoBERTa's and
DistilBERT's classifiers) reads it. Plain transformers would read such a model differently, so a
recipe may use it only in stages that a later ``init: pretrained`` stage replaces: teachers, whose
knowledge a fresh first-token student then learns by distillation."""

from __future__ import annotations

import torch
from torch import nn

from .architecture import main_layer_stack

# model types whose sequence-classification head reads the first token of the last layer
FIRST_TOKEN_HEADS = frozenset({"albert", "bert", "camembert", "deberta", "deberta-v2", "distilbert", "electra",
                               "mpnet", "roberta", "xlm-roberta"})
_ATTRIBUTE = "_hybridft_mean_pooling"


class MeanPooling:
    """The two hooks and what they share. A plain object, not a module: it adds no weights, and
    ``copy.deepcopy`` of the model copies it with the hooks bound to it (teachers are such copies)."""

    def __init__(self):
        self.attention_mask = None

    def remember_mask(self, module, args, kwargs):
        self.attention_mask = kwargs.get("attention_mask")

    def pool_into_first_token(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if self.attention_mask is None:
            mean = hidden.mean(dim=1)
        else:
            mask = self.attention_mask[:, : hidden.shape[1], None].to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        pooled = torch.cat([mean[:, None], hidden[:, 1:]], dim=1)  # not in place: autograd needs hidden
        return (pooled, *output[1:]) if isinstance(output, tuple) else pooled


def supports_mean_pooling(model: nn.Module) -> bool:
    return getattr(model.config, "model_type", None) in FIRST_TOKEN_HEADS


def use_mean_pooling(model: nn.Module) -> nn.Module:
    """Make ``model``'s head read mean-pooled tokens (once; a model that already does is returned as is)."""
    if getattr(model, _ATTRIBUTE, None) is not None:
        return model
    pooling = MeanPooling()
    model.base_model.register_forward_pre_hook(pooling.remember_mask, with_kwargs=True)
    main_layer_stack(model)[1][-1].register_forward_hook(pooling.pool_into_first_token)
    setattr(model, _ATTRIBUTE, pooling)
    return model


def pooled_as(model: nn.Module, spec) -> nn.Module:
    """``model`` reading its tokens as stage ``spec`` says (a mix stage: as it was)."""
    return use_mean_pooling(model) if getattr(spec, "pooling", "first") == "mean" else model
