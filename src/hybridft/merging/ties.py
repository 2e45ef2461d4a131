"""`ties`: TIES-merging (Yadav et al., 2023): keep each task vector's largest entries (``density``),
elect each entry's sign by the summed values, and average the entries that agree with it; through
``peft.utils.merge_utils``."""

from __future__ import annotations

from peft.utils import merge_utils

from .base import TaskVectorMethod, quiet_density


class Ties(TaskVectorMethod):
    name = "ties"
    about = "trim each task vector to its top density, elect signs, average the agreeing entries"
    searches = ("scale", "density")

    def __init__(self, majority_sign: str = "total"):
        self.majority_sign = majority_sign

    def combine(self, vectors, weights, point):
        with quiet_density():
            return merge_utils.ties(vectors, weights.to(vectors[0].dtype), point.density, self.majority_sign)
