"""Weight-space merges of M_pre with one or more fine-tuned models: linear (today's interpolation,
bit for bit), slerp, task arithmetic, TIES, DARE. One method per file; ``merge_states`` applies one
to whole state dicts, tensor by tensor.

Tensors without a pretrained counterpart (a task head) are the weighted mean of the fine-tuned
models' (with one model: its own, as interpolation does); integer buffers come from the first
fine-tuned model. Random methods draw from a generator seeded by ``seed`` and the tensor's name, so a
merge is the same whatever else was drawn before it and in whatever order the tensors come.
"""

from __future__ import annotations

import math
import zlib

import torch

from ..errors import HybridftError
from ..mixing import align_keys, check_compatible, interpolate
from .base import MergeMethod, MergePoint, weighted_mean
from .dare_linear import DareLinear
from .dare_ties import DareTies
from .linear import Linear
from .slerp import Slerp
from .task_arithmetic import TaskArithmetic
from .ties import Ties

METHODS: dict[str, type[MergeMethod]] = {m.name: m for m in (Linear, Slerp, TaskArithmetic, Ties, DareLinear, DareTies)}


def build_method(name: str, majority_sign: str = "total") -> MergeMethod:
    cls = METHODS[name]
    return cls(majority_sign) if cls in (Ties, DareTies) else cls()


def weights_problem(weights: list[float] | None) -> str | None:
    """Why these merge weights cannot work (None when they can): the task heads are the weighted mean,
    divided by the weights' sum, so the sum must be a finite number other than 0."""
    if weights is None:
        return None
    odd = next((w for w in weights if not math.isfinite(w)), None)
    if odd is not None:
        return f"each weight must be a finite number, got {odd}"
    total = sum(weights)
    if total == 0:
        return f"the weights {weights} add up to 0; the task heads are their mean weighted by them"
    if not math.isfinite(total):
        return f"the weights {weights} add up to {total}: use smaller weights"
    return None


def check_same_model(first: dict, other: dict, label: str) -> None:
    """Fine-tuned models merged together have the same tensors: same names, shapes and dtypes."""
    if first.keys() != other.keys():
        missing = sorted(first.keys() ^ other.keys())[0]
        raise HybridftError(f"{label} is not the same model as the fine-tuned one: only one of them has {missing}")
    for name, t in first.items():
        o = other[name]
        if t.shape != o.shape or t.dtype != o.dtype:
            raise HybridftError(f"{label}: tensor {name} is {tuple(o.shape)} {o.dtype}, the fine-tuned model's is "
                                f"{tuple(t.shape)} {t.dtype} (a different label set, vocabulary or architecture?)")


def merge_states(pre: dict, fines: list[dict], method: MergeMethod, point: MergePoint,
                 weights: list[float] | None = None, seed: int = 0, labels: list[str] | None = None) -> dict:
    """The merged state dict, with the first fine-tuned model's keys."""
    if method.name == "linear" and len(fines) == 1:
        return interpolate(pre, fines[0], point.alpha)  # today's interpolation, bit for bit
    pre = align_keys(pre, fines[0])
    check_compatible(pre, fines[0])
    for i, other in enumerate(fines[1:], 1):
        check_same_model(fines[0], other, labels[i] if labels else f"model {i + 1}")
    w = torch.tensor(weights if weights is not None else [1.0] * len(fines), dtype=torch.float64)
    merged = {}
    for name, first in fines[0].items():
        versions = [f[name] for f in fines]
        p = pre.get(name)
        if not first.is_floating_point():
            merged[name] = first.clone()
        elif p is None:
            merged[name] = weighted_mean(versions, w)
        else:
            merged[name] = merge_tensor(method, p.to(first.device), versions, w, point, seed, name).to(first.dtype)
    return merged


def merge_tensor(method: MergeMethod, pre, versions, weights, point: MergePoint, seed: int, name: str):
    if point.alpha == 0.0 and method.searches == ("alpha",) and len(versions) == 1:
        return versions[0].clone()  # the endpoints exactly, as interpolation gives them
    if point.alpha == 1.0 and method.searches == ("alpha",):
        return pre.clone()
    if not method.random:
        return method.merged(pre, versions, weights, point)
    # DARE's drops: seeded per tensor, every global generator untouched (torch.manual_seed would reseed
    # each GPU's too, which fork_rng restores only for the devices it is given)
    with torch.random.fork_rng(devices=[pre.device] if pre.is_cuda else []):
        tensor_seed = seed * 1_000_003 + zlib.crc32(name.encode())
        (torch.cuda.default_generators[pre.device.index or 0] if pre.is_cuda
         else torch.random.default_generator).manual_seed(tensor_seed)
        return method.merged(pre, versions, weights, point)
