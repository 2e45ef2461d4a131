"""Where the parts of a transformers model live: embeddings, the stack of layers, the head.

Selectors name parts ("top 2 layers", "the head") rather than parameter names, so that one recipe
works for BERT, RoBERTa, DistilBERT, GPT-2, T5... This module maps the parts to parameter names.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from .errors import HybridftError

# Names of the ModuleList that holds the transformer blocks in common architectures.
LAYER_LIST_NAMES = ("layer", "layers", "h", "block", "blocks")
_LAYER_LIST = re.compile(rf"(^|\.)({'|'.join(LAYER_LIST_NAMES)})$")
# a parameter inside block i of a layer stack: captures i
LAYER_INDEX = re.compile(rf"\.(?:{'|'.join(LAYER_LIST_NAMES)})\.(\d+)\.")
_EMBEDDING = re.compile(r"(^|\.)(embeddings|embed_tokens|embed_positions|wte|wpe|shared|word_embeddings)(\.|$)")
# Modules that only serve the task head although they sit inside the base model (BERT's pooler).
_HEAD_INSIDE_BASE = re.compile(r"(^|\.)pooler(\.|$)")


def layer_stacks(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Every ModuleList of transformer blocks (an encoder-decoder has two), not the lists of
    sublayers inside a block (T5's ``block.<i>.layer``)."""
    stacks: list[tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and _LAYER_LIST.search(name) and \
                not any(name.startswith(outer + ".") for outer, _ in stacks):
            stacks.append((name, module))
    return stacks


def main_layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    stacks = layer_stacks(model)
    if not stacks:
        raise HybridftError(f"cannot find the stack of transformer layers in {type(model).__name__}")
    return max(stacks, key=lambda s: len(s[1]))


_ATTENTION = re.compile(r"att", re.IGNORECASE)  # self_attn, attention, attn, SelfAttention, EncDecAttention...


# a projection wrapped by a method keeps its place: peft's LoRA layers hold it as ``base_layer``,
# hybridft's adapters as ``base``
WRAPPED = ("base_layer", "base")


def projections(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module, nn.Module]]:
    """(name, module, the projection it is or wraps) of every Linear-like leaf (a 2-d weight:
    nn.Linear, GPT-2's Conv1D), in registration order; a wrapped projection counts once, as its wrapper."""
    inner = next((getattr(module, a) for a in WRAPPED if isinstance(getattr(module, a, None), nn.Module)), None)
    if inner is not None:
        return [(prefix, module, inner)]
    children = list(module.named_children())
    if not children:
        weight = getattr(module, "weight", None)
        is_projection = isinstance(weight, torch.Tensor) and weight.dim() == 2 and not isinstance(module, nn.Embedding)
        return [(prefix, module, module)] if is_projection else []
    return [p for name, child in children for p in projections(child, f"{prefix}.{name}" if prefix else name)]


def out_features(projection: nn.Module) -> int:
    return projection.out_features if isinstance(projection, nn.Linear) else projection.weight.shape[-1]  # Conv1D


def attention_modules(block: nn.Module) -> list[str]:
    """The attention sublayers of a block (self-attention first, then any cross-attention), outermost."""
    found: list[str] = []
    for name, module in block.named_modules():
        if name and _ATTENTION.search(name.rsplit(".", 1)[-1]) and projections(module) and \
                not any(name.startswith(a + ".") for a in found):
            found.append(name)
    return found


def sublayer_outputs(block: nn.Module, hidden: int) -> dict[str, str]:
    """Where each sublayer of a transformer block writes back to the residual stream, found from the
    block's structure: the last projection to the hidden size inside its self-attention, and the last
    one outside any attention (the feed-forward's). Names are relative to the block."""
    attention = attention_modules(block)
    found = {}
    if attention:
        inside = [f"{attention[0]}.{n}" for n, _, p in projections(block.get_submodule(attention[0]))
                  if out_features(p) == hidden]
        if inside:
            found["attention"] = inside[-1]
    outside = [n for n, _, p in projections(block) if out_features(p) == hidden
               and not any(n.startswith(a + ".") for a in attention)]
    if outside:
        found["ffn"] = outside[-1]
    return found


def hidden_size(model: nn.Module) -> int:
    """The width of the residual stream (an encoder-decoder's config has none: its embeddings' width)."""
    return getattr(getattr(model, "config", None), "hidden_size", None) or model.get_input_embeddings().embedding_dim


def num_layers(model: nn.Module) -> int:
    return len(main_layer_stack(model)[1])


def checked_layer_indices(indices: list[int], model: nn.Module, what: str) -> list[int]:
    """Layer indices (negative counts from the top) as sorted non-negative ones, or a clear error."""
    n = num_layers(model)
    bad = [i for i in indices if not -n <= i < n]
    if bad:
        raise HybridftError(f"{what} has {bad[0]} but the model has layers 0..{n - 1}")
    return sorted({i % n for i in indices})


def layer_param_names(model: nn.Module, index: int) -> list[str]:
    prefix, stack = main_layer_stack(model)
    return [f"{prefix}.{index}.{n}" for n, _ in stack[index].named_parameters()]


def base_prefix(model: nn.Module) -> str:
    prefix = getattr(model, "base_model_prefix", "")
    return prefix if prefix and hasattr(model, prefix) else ""


def head_param_names(model: nn.Module) -> list[str]:
    """Parameters outside the pretrained base model (classifier), plus BERT-style poolers."""
    prefix = base_prefix(model)
    names = []
    for name, _ in model.named_parameters():
        outside = bool(prefix) and not name.startswith(prefix + ".")
        if outside or _HEAD_INSIDE_BASE.search(name):
            names.append(name)
    return names


def trains_head(head: bool | None, model: nn.Module) -> bool:
    """A selector's ``head`` setting; unset, the head trains when it is new (a classifier, a tagger)
    and not when it is a language model's pretrained LM head."""
    if head is not None:
        return head
    can_generate = getattr(model, "can_generate", None)
    return not (callable(can_generate) and can_generate())


def embedding_param_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if _EMBEDDING.search(n)]


def trainable_by_module(model: nn.Module) -> dict[str, int]:
    """Trainable parameter counts grouped by module (down to the layer index), for reports."""
    groups: dict[str, int] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        parts = name.split(".")[:-1]
        cut = next((i + 2 for i, part in enumerate(parts) if _LAYER_LIST.search(part) and i + 1 < len(parts)
                    and parts[i + 1].isdigit()), min(len(parts), 2))
        key = ".".join(parts[:cut]) or name
        groups[key] = groups.get(key, 0) + p.numel()
    return groups
