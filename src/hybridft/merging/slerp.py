"""`slerp`: spherical interpolation between M_fine and M_pre, tensor by tensor: the path keeps each
tensor's norm where linear interpolation shrinks it (Shoemake, 1985; as in mergekit)."""

from __future__ import annotations

import math

import torch

from .base import MergeMethod

PARALLEL = 0.9995  # nearly parallel tensors: the sphere's arc is a line, and sin(omega) ~ 0


def slerp(v0: torch.Tensor, v1: torch.Tensor, t: float) -> torch.Tensor:
    """From ``v0`` (t = 0) to ``v1`` (t = 1) along the great circle of their directions."""
    a, b = v0.flatten().double(), v1.flatten().double()
    cos = float(torch.dot(a / a.norm().clamp_min(1e-12), b / b.norm().clamp_min(1e-12)).clamp(-1.0, 1.0))
    if abs(cos) > PARALLEL:
        return torch.lerp(v0, v1, t)
    omega = math.acos(cos)
    mixed = (math.sin((1 - t) * omega) * a + math.sin(t * omega) * b) / math.sin(omega)
    return mixed.view_as(v0).to(v0.dtype)


class Slerp(MergeMethod):
    name = "slerp"
    about = "spherical interpolation from M_fine (alpha 0) to M_pre (alpha 1), tensor by tensor"
    searches = ("alpha",)
    several_models = False

    def merged(self, pre, fines, weights, point):
        return slerp(fines[0], pre, point.alpha)
