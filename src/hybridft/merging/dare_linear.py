"""`dare_linear`: DARE (Yu et al., 2024): drop each task-vector entry with probability 1 - density and
rescale the rest by 1 / density, then add up; through ``peft.utils.merge_utils``, seeded per tensor."""

from __future__ import annotations

from peft.utils import merge_utils

from .base import TaskVectorMethod, quiet_density


class DareLinear(TaskVectorMethod):
    name = "dare_linear"
    about = "drop task-vector entries at random (keep density), rescale by 1/density, weighted sum"
    searches = ("scale", "density")
    random = True

    def combine(self, vectors, weights, point):
        with quiet_density():
            return merge_utils.dare_linear(vectors, weights.to(vectors[0].dtype), point.density)
