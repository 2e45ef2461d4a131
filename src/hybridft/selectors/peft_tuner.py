"""`peft`: any of peft's injectable tuners (LoHa, LoKr, IA3, OFT, FourierFT, HRA...) as one
member of a union: ``{name: peft, type: loha, r: 8, target_modules: [query, value]}``, the keys after
``type`` being the tuner's own config keys.

The tuner's layers are injected in place (``peft.inject_adapter_in_model``), so other selectors of
the stage keep their parameter names; at stage end they are merged into the base weights and the
model loads with plain ``transformers``. When the tuner is the whole recipe, it is also saved alone as
a PEFT adapter folder for ``PeftModel.from_pretrained``. Tuners that prepend virtual tokens (prompt
and prefix tuning), and those that need peft's own training loop or inputs, cannot join a union and
are refused with the reason.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from .. import architecture
from ..errors import HybridftError
from ..registry import SELECTORS
from .base import Selector, SelectorSpec, peft_targets

# each tested in tests/test_peft_tuners.py: trains alone and beside `layers`, merges, reloads
MERGED_TUNERS = ("loha", "lokr", "ia3", "oft", "fourierft", "hra")
WHY_NOT = {
    "lora": "has a selector of its own: use the lora selector (it takes use_dora, use_rslora, init and "
            "loraplus_lr_ratio)",
    "adalora": "reallocates its rank budget in a hook that peft's own training loop calls every step",
    "poly": "routes by task ids given with every batch",
    "xlora": "mixes several trained LoRA adapters at inference; it trains none",
    "boft": "compiles a CUDA extension when it first runs (writing to ~/.cache; on a CPU it warns and falls back)",
    "vera": "keeps its shared random projections on peft's model wrapper, which an injected union has not",
}


def tuner_config(tuner: str, keys: dict):
    """peft's config object of ``tuner`` with the recipe's keys (a ValueError names a bad one)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    kinds = {str(k.value).lower(): k for k in PEFT_TYPE_TO_CONFIG_MAPPING}
    kind = kinds.get(tuner.lower())
    if kind is None:
        raise ValueError(f"peft.type {tuner!r} is not a peft tuner (merged ones: {', '.join(MERGED_TUNERS)})")
    config_class = PEFT_TYPE_TO_CONFIG_MAPPING[kind]
    if tuner in WHY_NOT:
        raise ValueError(f"peft.type {tuner} cannot join a union: it {WHY_NOT[tuner]}")
    if config_class().is_prompt_learning or getattr(PEFT_TYPE_TO_TUNER_MAPPING.get(kind), "prefix", None) is None:
        raise ValueError(f"peft.type {tuner} prepends virtual tokens through PeftModel's own forward; it cannot "
                         "join a union of selectors (merged tuners: " + ", ".join(MERGED_TUNERS) + ")")
    if tuner not in MERGED_TUNERS:
        raise ValueError(f"peft.type {tuner}: hybridft merges a tuner into plain weights at stage end and has "
                         f"tested that for {', '.join(MERGED_TUNERS)}")
    try:
        return config_class(**keys)
    except TypeError as e:
        raise ValueError(f"peft.type {tuner}: {e}") from None


def all_finite(value) -> bool:
    """No nan or inf in a config value (numbers, lists and mappings of them)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(all_finite(v) for v in value)
    return True


class PeftSpec(SelectorSpec):
    model_config = ConfigDict(extra="allow", validate_default=True)

    name: Literal["peft"] = "peft"
    type: str = Field(description="the peft tuner: " + ", ".join(MERGED_TUNERS) + "; the entry's other keys are "
                                  "its config keys (r, target_modules, ...)")
    head: bool | None = Field(None, description="the task head trains too; default: when it is new")
    saves: ClassVar[tuple[str, ...]] = ("peft_adapter/",)  # when it is the whole recipe

    @model_validator(mode="before")
    @classmethod
    def _unknown_keys(cls, data):  # the tuner's config checks its own keys
        return data

    @model_validator(mode="after")
    def _a_config_peft_accepts(self):
        # the tuner's own keys are not typed here, so the schema's finite-floats rule is applied by hand
        odd = next((k for k, v in self.tuner_keys().items() if not all_finite(v)), None)
        if odd is not None:
            raise ValueError(f"{odd}: Input should be a finite number")
        tuner_config(self.type, self.tuner_keys())
        return self

    def tuner_keys(self) -> dict:
        return dict(self.model_extra or {})


@SELECTORS.register(PeftSpec)
class PeftTuner(Selector):
    """Any merged peft tuner (LoHa, LoKr, IA3, OFT, FourierFT, HRA) as one member of a union."""

    def config_for(self, model):
        config = tuner_config(self.config.type, self.config.tuner_keys())
        # the head (classifier, pooler) trains whole, so the tuner never wraps it
        head = sorted({n.rpartition(".")[0] for n in architecture.head_param_names(model) if self.prefix not in n})
        if head and hasattr(config, "exclude_modules"):
            config.exclude_modules = head
        return config

    def adapts(self, model):
        return peft_targets(self.config_for(model), model)

    @property
    def prefix(self) -> str:
        from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

        return next(t.prefix for k, t in PEFT_TYPE_TO_TUNER_MAPPING.items() if str(k.value).lower() == self.config.type)

    def prepare(self, model, run=None):
        from peft import inject_adapter_in_model

        try:
            return inject_adapter_in_model(self.config_for(model), model, adapter_name=self.config.type)
        except (ValueError, TypeError) as e:
            raise HybridftError(f"peft {self.config.type}: {str(e).splitlines()[0]}") from None

    def trainable(self, model):
        names = {n for n, _ in model.named_parameters() if f".{self.prefix}" in n}
        if architecture.trains_head(self.config.head, model):
            names.update(architecture.head_param_names(model))
        return names

    def finish(self, model):
        from peft.tuners.tuners_utils import BaseTunerLayer

        from .lora import merge_tuner_layers

        return merge_tuner_layers(model, [(n, m) for n, m in model.named_modules()
                                          if isinstance(m, BaseTunerLayer) and self.prefix in "".join(m.adapter_layer_names)])

    def export(self, model, run_dir) -> None:
        """The tuner alone (and the head) as a PEFT adapter folder, for ``PeftModel.from_pretrained``."""
        from .lora import save_peft_folder

        save_peft_folder(model, self.config_for(model), run_dir / "peft_adapter", self.config.type,
                         with_head=self.config.head)
