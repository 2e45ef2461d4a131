"""`groups`: one stage, several parameter groups, each with its own loss weight and learning rate.

This is the combined loss L = alpha L_FT + beta L_PT + gamma L_AT of a "full + top layers + adapters"
hybrid, implemented honestly as per-group loss scaling: every term is the stage's loss, and the
term of group g only reaches the parameters of g. So a parameter's gradient is
(sum of the weights of the groups that hold it) x dL/dθ, and a parameter whose weights sum to 0 is
frozen (bit-identical; weight 0 means "this term trains nothing"). A parameter takes the learning
rate of the last group that lists it.

Know what this means for your optimizer: under SGD a constant gradient scale is a learning-rate
scale; under Adam/AdamW the update is (almost) invariant to it, so there the weights matter only as
zero vs non-zero and the per-group learning rates do the real work.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, field_validator

from ..registry import SELECTORS
from ..spec import Spec
from .base import Selector


def _inner_selector_adapter():
    from typing import Annotated, Union

    configs = tuple(c for c in SELECTORS.configs() if c.model_fields["name"].default != "groups")
    return TypeAdapter(list[Annotated[Union[configs], Field(discriminator="name")]])  # noqa: UP007


class GroupSpec(Spec):
    select: list[Any] = Field(min_length=1, description="selectors whose union is this group")
    loss_weight: float = Field(1.0, ge=0)
    lr: float | None = Field(None, gt=0, description="default: the stage optimizer's lr")

    @field_validator("select")
    @classmethod
    def _inner(cls, value):
        try:
            return _inner_selector_adapter().validate_python(value)
        except ValidationError as e:
            first = e.errors()[0]
            raise ValueError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None


class GroupsSpec(Spec):
    name: Literal["groups"] = "groups"
    groups: list[GroupSpec] = Field(min_length=1)


@SELECTORS.register(GroupsSpec)
class Groups(Selector):
    """Parameter groups with their own loss weight and lr (L = a L_FT + b L_PT + c L_AT)."""

    def __init__(self, config):
        super().__init__(config)
        self.members = [[SELECTORS.build(c) for c in g.select] for g in config.groups]

    @property
    def keeps_structure(self) -> bool:
        return any(s.keeps_structure for group in self.members for s in group)

    def prepare(self, model, run=None):
        for group in self.members:
            for s in group:
                model = s.prepare(model, run)
        return model

    def fit(self, model, run, stage):
        for group in self.members:
            for s in group:
                s.fit(model, run, stage)

    def group_names(self, model) -> list[set[str]]:
        return [set().union(*(s.trainable(model) | set(s.masks(model)) for s in group)) for group in self.members]

    def weights(self, model) -> dict[str, float]:
        total: dict[str, float] = {}
        for names, spec in zip(self.group_names(model), self.config.groups, strict=True):
            for n in names:
                total[n] = total.get(n, 0.0) + spec.loss_weight
        return total

    def trainable(self, model):
        return {n for n, w in self.weights(model).items() if w > 0}

    def lr_overrides(self, model) -> dict[str, float]:
        lrs: dict[str, float] = {}
        for names, spec in zip(self.group_names(model), self.config.groups, strict=True):
            if spec.lr is not None:
                lrs.update(dict.fromkeys(names, spec.lr))
        return lrs

    def after_backward(self, model):
        if not hasattr(self, "_scale"):
            self._scale = [(p, w) for n, p in model.named_parameters()
                           if (w := self.weights(model).get(n, 0.0)) > 0 and w != 1.0]
        for p, w in self._scale:
            if p.grad is not None:
                p.grad.mul_(w)

    def finish(self, model):
        for group in self.members:
            for s in group:
                model = s.finish(model)
        return model

    def summary(self):
        return {"name": "groups", "groups": [{"selectors": [c.name for c in g.select], "loss_weight": g.loss_weight,
                                              "lr": g.lr} for g in self.config.groups]}
