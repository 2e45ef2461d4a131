"""Weight-space mixing of a pretrained model M_pre and a fine-tuned model M_fine (pure functions).

M_mix = alpha * M_pre + (1 - alpha) * M_fine over matching tensors (WiSE-FT: Wortsman et al., 2022).
Tensors that exist only in M_fine (the task head) are taken from it. alpha may be one number or a
function of the tensor name (per-layer mixing). alpha = 0 and alpha = 1 return the endpoints bit
for bit; integer buffers are always taken from M_fine.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .architecture import LAYER_INDEX
from .errors import HybridftError

Alpha = float | Callable[[str], float]


def align_keys(pre: dict, fine: dict) -> dict:
    """Rename M_pre's keys to M_fine's: a bare encoder (``embeddings.x``) inside a task model
    (``bert.embeddings.x``) gets the task model's prefix."""
    if set(pre) & set(fine):
        return pre
    prefixes = {k.split(".", 1)[0] + "." for k in fine if "." in k}
    best = max(prefixes, key=lambda p: len({p + k for k in pre} & set(fine)), default="")
    renamed = {best + k: v for k, v in pre.items()}
    if not set(renamed) & set(fine):
        raise HybridftError("the two models share no tensor names: they are not the same architecture")
    return renamed


def check_compatible(pre: dict, fine: dict) -> None:
    """Error naming the first tensor that both have but that differs in shape or dtype."""
    for name in sorted(set(pre) & set(fine)):
        a, b = pre[name], fine[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            raise HybridftError(f"tensor {name} differs: {tuple(a.shape)} {a.dtype} in the pretrained model, "
                                f"{tuple(b.shape)} {b.dtype} in the fine-tuned one (different architecture or vocabulary?)")
    # tensors only in M_fine (the head) are kept from it; but if most are missing, these are not the same model
    missing = sorted(n for n in fine if n not in pre)
    if len(missing) > len(fine) // 2:
        raise HybridftError(f"the pretrained model lacks most tensors of the fine-tuned one (first: {missing[0]})")


def _alpha_of(alpha: Alpha, name: str) -> float:
    a = alpha(name) if callable(alpha) else alpha
    if not 0.0 <= a <= 1.0:
        raise HybridftError(f"alpha must be in [0, 1], got {a} (for {name})")
    return a


def interpolate(pre: dict, fine: dict, alpha: Alpha) -> dict:
    """The mixed state dict, with M_fine's keys."""
    pre = align_keys(pre, fine)
    check_compatible(pre, fine)
    mixed = {}
    for name, f in fine.items():
        a = _alpha_of(alpha, name)
        p = pre.get(name)
        if p is None or not f.is_floating_point() or a == 0.0:
            mixed[name] = f.clone()
        elif a == 1.0:
            mixed[name] = p.clone()
        else:
            mixed[name] = torch.lerp(f, p.to(f.device), a)  # f + a (p - f) = a p + (1 - a) f
    return mixed


PART_ORDER = ("embeddings", "lower", "upper", "head")


def part_of(name: str, n_layers: int) -> str:
    """Which of embeddings / lower half / upper half of the layers / head a tensor belongs to."""
    m = LAYER_INDEX.search(name)
    if m:
        return "lower" if int(m.group(1)) < n_layers / 2 else "upper"
    if "embed" in name or ".wte." in name or ".wpe." in name:
        return "embeddings"
    return "head"


def per_part_alpha(alphas: dict[str, float], n_layers: int) -> Callable[[str], float]:
    unknown = set(alphas) - set(PART_ORDER)
    if unknown:
        raise HybridftError(f"per-layer alphas are for {', '.join(PART_ORDER)}; got {sorted(unknown)[0]!r}")
    return lambda name: alphas.get(part_of(name, n_layers), 0.0)
