"""`dare_ties`: DARE's random drop and rescale (Yu et al., 2024), then TIES's sign election and
disjoint mean; through ``peft.utils.merge_utils``, seeded per tensor."""

from __future__ import annotations

from peft.utils import merge_utils

from .base import TaskVectorMethod, quiet_density


class DareTies(TaskVectorMethod):
    name = "dare_ties"
    about = "drop task-vector entries at random and rescale (DARE), then elect signs (TIES)"
    searches = ("scale", "density")
    random = True

    def __init__(self, majority_sign: str = "total"):
        self.majority_sign = majority_sign

    def combine(self, vectors, weights, point):
        with quiet_density():
            return merge_utils.dare_ties(vectors, weights.to(vectors[0].dtype), point.density, self.majority_sign)
