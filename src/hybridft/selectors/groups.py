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

from typing import Annotated, Any, Literal, Union

from pydantic import Field, TypeAdapter, ValidationError, field_validator

from ..registry import SELECTORS
from ..spec import Spec
from .base import Selector, SelectorSpec


def _inner_selector_adapter():
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


class GroupsSpec(SelectorSpec):
    name: Literal["groups"] = "groups"
    groups: list[GroupSpec] = Field(min_length=1)

    def _members(self) -> list[SelectorSpec]:
        return [c for g in self.groups for c in g.select]

    @property
    def data_dependent(self) -> bool:
        return any(c.data_dependent for c in self._members())

    def unsupported(self, task: str) -> str | None:
        return next((why for c in self._members() if (why := c.unsupported(task))), None)


@SELECTORS.register(GroupsSpec)
class Groups(Selector):
    """Parameter groups with their own loss weight and lr (L = a L_FT + b L_PT + c L_AT)."""

    def __init__(self, config):
        super().__init__(config)
        self.members = [[SELECTORS.build(c) for c in g.select] for g in config.groups]
        self._scale = None

    def _each(self):
        return [s for group in self.members for s in group]

    def parts(self):
        return self._each()

    @property
    def keeps_structure(self) -> bool:
        return any(s.keeps_structure for s in self._each())

    def restore_structure(self, model):
        for s in self._each():
            model = s.restore_structure(model)
        return model

    def prepare(self, model, run=None):
        for s in self._each():
            model = s.prepare(model, run)
        return model

    def fit(self, model, run, stage):
        for s in self._each():
            s.fit(model, run, stage)

    def _group_selection(self, model, i: int) -> tuple[set[str], dict]:
        whole, masks = set(), {}
        for s in self.members[i]:
            whole |= s.trainable(model)
            for n, m in s.masks(model).items():
                masks[n] = m if n not in masks else masks[n] | m
        return whole, masks

    def weights(self, model) -> dict[str, float]:
        """Per parameter: the sum of the loss weights of the groups that train it."""
        total: dict[str, float] = {}
        for i, spec in enumerate(self.config.groups):
            whole, masks = self._group_selection(model, i)
            for n in whole | set(masks):
                total[n] = total.get(n, 0.0) + spec.loss_weight
        return total

    def _active(self):
        return [i for i, g in enumerate(self.config.groups) if g.loss_weight > 0]

    def trainable(self, model):
        return set().union(*(self._group_selection(model, i)[0] for i in self._active()))

    def masks(self, model):
        out: dict = {}
        for i in self._active():
            for n, m in self._group_selection(model, i)[1].items():
                out[n] = m if n not in out else out[n] | m
        return out

    def lr_overrides(self, model, lr: float) -> dict[str, float]:
        """A group's lr for its parameters; a member's own (LoRA+'s B) relative to it."""
        lrs: dict[str, float] = {}
        for i, spec in enumerate(self.config.groups):
            if spec.lr is not None:
                whole, masks = self._group_selection(model, i)
                lrs.update(dict.fromkeys(whole | set(masks), spec.lr))
            for s in self.members[i]:
                lrs.update(s.lr_overrides(model, spec.lr if spec.lr is not None else lr))
        return lrs

    def state_dict(self):
        return {f"{i}.{j}/{k}": v for i, group in enumerate(self.members) for j, s in enumerate(group)
                for k, v in s.state_dict().items()}

    def load_state_dict(self, state):
        for i, group in enumerate(self.members):
            for j, s in enumerate(group):
                prefix = f"{i}.{j}/"
                s.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    def after_backward(self, model):
        if self._scale is None:  # the weights do not change within a stage: compute them once
            weights = self.weights(model)
            self._scale = [(p, weights[n]) for n, p in model.named_parameters()
                           if weights.get(n, 0.0) > 0 and weights[n] != 1.0]
        for p, w in self._scale:
            if p.grad is not None:
                p.grad.mul_(w)
        for s in self._each():
            s.after_backward(model)

    def before_step(self, model, stage):
        for s in self._each():
            s.before_step(model, stage)

    def after_step(self, model):
        for s in self._each():
            s.after_step(model)

    def finish(self, model):
        for s in self._each():
            model = s.finish(model)
        return model

    def summary(self):
        return {"name": "groups", "groups": [
            {"selectors": [c.name for c in g.select], "loss_weight": g.loss_weight, "lr": g.lr,
             "members": [s.summary() for s in self.members[i]]} for i, g in enumerate(self.config.groups)]}
