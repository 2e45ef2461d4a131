"""`lora`: low-rank adapters through peft (Hu et al., 2021, "LoRA: Low-Rank Adaptation of LLMs").

LoRA layers are injected in place (``peft.inject_adapter_in_model``), so parameter names keep their
meaning for other selectors in the same stage. At stage end the low-rank updates are merged into the
base weights (the model loads with plain ``transformers``), and the adapter alone is kept as a PEFT
adapter folder for ``PeftModel.from_pretrained``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from pydantic import Field, model_validator

from .. import architecture
from ..errors import HybridftError
from ..registry import SELECTORS
from .base import Selector, SelectorSpec, peft_targets


class LoraSpec(SelectorSpec):
    name: Literal["lora"] = "lora"
    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = Field(
        None, description="module name suffixes to adapt; default: the query and value projections of the model "
                          "at hand (peft's table of architectures), else every projection of its attention")
    layers: list[int] | None = Field(None, description="only these layer indices (default: all)")
    head: bool | None = Field(None, description="the task head trains too; default: when it is new (classification, tagging), not a language model's pretrained LM head")
    merge: bool = Field(True, description="merge into the base weights at stage end")
    use_dora: bool = Field(False, description="DoRA: a trained magnitude per output feature, LoRA on the direction "
                                              "(Liu et al., 2024)")
    use_rslora: bool = Field(False, description="rank-stabilised scaling alpha / sqrt(r) instead of alpha / r "
                                                "(Kalajdzievski, 2023)")
    init: Literal["default", "gaussian", "pissa", "olora", "eva"] = Field(
        "default", description="how A and B start: default (B = 0, A Kaiming-uniform), gaussian, from the base "
                               "weight: pissa (its principal singular vectors), olora (its QR factors), which move "
                               "that part out of the base weight and so need merge: true; or from the data: eva "
                               "(A = the top-r singular vectors of each layer's inputs on the training set, B = 0; "
                               "the same r in every layer)")
    loraplus_lr_ratio: float | None = Field(None, gt=0, description="LoRA+: B trains at this multiple of the "
                                                                   "learning rate A has (Hayou et al., 2024; ~16)")
    saves: ClassVar[tuple[str, ...]] = ("peft_adapter/",)  # when it is the whole recipe

    @model_validator(mode="after")
    def _initialised_from_the_base_merges(self):
        if self.init in ("pissa", "olora") and not self.merge:
            raise ValueError(f"lora.init {self.init} takes its start out of the base weights, which are only whole "
                             "again once merged: it needs merge: true")
        return self


def peft_config(spec: LoraSpec, model):
    from peft import LoraConfig

    # the head (classifier, BERT's pooler) trains whole, so LoRA never wraps it
    head_modules = sorted({n.rpartition(".")[0].replace(".base_layer", "") for n in architecture.head_param_names(model)
                           if ".lora_" not in n})
    # eva's A is computed from the data before injection and copied in (eva_components)
    init = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora", "eva": True}[spec.init]
    return LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, use_dora=spec.use_dora,
                      use_rslora=spec.use_rslora, init_lora_weights=init,
                      target_modules=lora_targets(spec, model), fan_in_fan_out=targets_conv1d(spec, model),
                      layers_to_transform=architecture.checked_layer_indices(spec.layers, model, "lora.layers")
                      if spec.layers is not None else None,
                      layers_pattern=architecture.main_layer_stack(model)[0].split(".")[-1] if spec.layers else None,
                      exclude_modules=head_modules or None, modules_to_save=head_modules or None)


EVA_EXAMPLES = 2048  # the training examples EVA's incremental SVD cycles over until its components settle
EVA_BATCH = 32


def eva_components(config, model, run) -> dict:
    """EVA (Paischer et al., 2024): each targeted layer's A starts as the top-r right singular vectors
    of that layer's inputs over the training data, by peft's incremental SVD on the model before
    injection. Ranks are not redistributed (rho 1), so every layer keeps r and the adapter one shape."""
    import copy

    from peft import EvaConfig
    from peft.tuners.lora.eva import get_eva_state_dict

    eva = copy.copy(config)
    eva.init_lora_weights, eva.eva_config = "eva", EvaConfig(rho=1.0, use_label_mask=False)
    examples = run.data.train[:EVA_EXAMPLES]
    batches = [{k: v for k, v in run.collator(examples[i:i + EVA_BATCH]).items() if k != "labels"}
               for i in range(0, len(examples), EVA_BATCH)]
    try:
        return get_eva_state_dict(model, batches, eva, gather_distributed_inputs=False, show_progress_bar=False)
    except ValueError as e:
        raise HybridftError(f"lora.init eva: {str(e).splitlines()[0]}") from None


def lora_targets(spec: LoraSpec, model) -> list[str]:
    """The recipe's target modules, or the model's own attention projections."""
    if spec.target_modules is not None:
        return spec.target_modules
    known = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(getattr(model.config, "model_type", None))
    if known:
        return list(known)
    _, stack = architecture.main_layer_stack(model)
    attention = architecture.attention_modules(stack[0])
    if not attention:
        raise HybridftError(f"lora: found no attention in the blocks of {type(model).__name__}; name the modules to "
                            "adapt in lora.target_modules")
    return sorted({name.rsplit(".", 1)[-1] for name, _, _ in architecture.projections(stack[0].get_submodule(
        attention[0]))})


def targets_conv1d(spec: LoraSpec, model) -> bool:
    """GPT-2 stores its projections as Conv1D (weight transposed), which LoRA must be told about."""
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) and name.rsplit(".", 1)[-1] in lora_targets(spec, model)
               for name, m in model.named_modules())


def lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]


def lora_parameters(layer) -> list:
    """The trainable low-rank factors of one LoRA layer (A and B of each adapter)."""
    return [p for module in (*layer.lora_A.values(), *layer.lora_B.values()) for p in module.parameters()]


def merge_lora(model):
    """Fold every LoRA update into its base layer and put the plain layer back in its place."""
    return merge_tuner_layers(model, lora_layers(model))


def merge_tuner_layers(model, layers: list):
    """Merge each peft tuner layer of ``layers`` (name, module) into its base layer and put the plain
    layer back in its place; peft's config goes once no tuner layer is left."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, layer in layers:
        widen_base_layer(layer)
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer.get_base_layer())
    if hasattr(model, "peft_config") and not any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        del model.peft_config
    return model


def widen_base_layer(layer) -> None:
    """A base layer held in bf16 (a bf16 checkpoint) beside fp32 tuner weights takes their dtype
    before the merge: merged in bf16, the update would be rounded to the base weight's 8 bits of
    mantissa, as large as a small update itself. The model ends in fp32 anyway (a model of mixed
    dtypes becomes float32 after the stages)."""
    tuner = next((p.dtype for n, p in layer.named_parameters() if "base_layer" not in n and p.is_floating_point()), None)
    base = layer.get_base_layer()
    if tuner is not None and any(p.is_floating_point() and p.element_size() < tuner.itemsize for p in base.parameters()):
        base.to(tuner)


def adapter_state(model, adapter_name: str = "default", with_head: bool = True) -> dict:
    """The tuner's weights (and the head, when it trained) keyed as a PEFT adapter folder stores them."""
    from peft import get_peft_model_state_dict

    state = {f"base_model.model.{k}": v.detach().contiguous()
             for k, v in get_peft_model_state_dict(model, adapter_name=adapter_name).items()}
    for name in architecture.head_param_names(model) if with_head else ():
        state[f"base_model.model.{name}"] = model.get_parameter(name).detach().contiguous()
    return state


def peft_task_type(model) -> str:
    """The PEFT task type of the model's head: ``AutoPeftModelFor...`` refuses an adapter of another,
    and ``AutoPeftModel`` builds the model class it names."""
    name = type(model).__name__
    if getattr(model.config, "is_encoder_decoder", False):
        return "SEQ_2_SEQ_LM"
    if "TokenClassification" in name:
        return "TOKEN_CLS"
    if "SequenceClassification" in name:
        return "SEQ_CLS"
    can_generate = getattr(model, "can_generate", None)
    return "CAUSAL_LM" if callable(can_generate) and can_generate() else "SEQ_CLS"


@SELECTORS.register(LoraSpec)
class Lora(Selector):
    """LoRA on chosen modules via peft (plus the head); merged into plain weights at stage end."""

    @property
    def keeps_structure(self) -> bool:
        return not self.config.merge

    def prepare(self, model, run=None):
        from peft import inject_adapter_in_model

        config = peft_config(self.config, model)
        config.modules_to_save = None  # the head trains in place; we list it in trainable()
        skeleton = next(model.parameters()).is_meta  # validate's weightless model: the structure is what counts
        if skeleton:
            config.init_lora_weights = True
        eva = eva_components(config, model, run) if self.config.init == "eva" and not skeleton and run is not None else {}
        try:
            model = inject_adapter_in_model(config, model)
        except ValueError as e:
            raise HybridftError(f"lora.target_modules {lora_targets(self.config, model)}: "
                                f"{str(e).splitlines()[0]}") from None
        with torch.no_grad():
            for name, components in eva.items():
                model.get_submodule(name).lora_A["default"].weight.copy_(components)
        return model

    def adapts(self, model):
        return peft_targets(peft_config(self.config, model), model)

    def lr_overrides(self, model, lr: float) -> dict[str, float]:
        """LoRA+: B's learning rate is a multiple of A's."""
        if self.config.loraplus_lr_ratio is None:
            return {}
        return {n: lr * self.config.loraplus_lr_ratio for n, _ in model.named_parameters() if ".lora_B." in n}

    def trainable(self, model):
        names = {n for n, _ in model.named_parameters() if ".lora_" in n}
        if architecture.trains_head(self.config.head, model):
            names.update(architecture.head_param_names(model))
        return names

    def export(self, model, run_dir) -> None:
        """The PEFT adapter (LoRA + head on the original base model), for ``PeftModel.from_pretrained``.
        Not for pissa and olora, whose adapter belongs to a base weight they changed."""
        if self.config.init not in ("pissa", "olora"):
            self.save_adapter(model, run_dir / "peft_adapter")

    def finish(self, model):
        return merge_lora(model) if self.config.merge else model

    def save_adapter(self, model, folder) -> None:
        save_peft_folder(model, peft_config(self.config, model), folder, with_head=self.config.head)


def save_peft_folder(model, config, folder, adapter_name: str = "default", with_head: bool | None = None) -> None:
    """A PEFT adapter folder of the injected tuner on the original base model, for the model's task.
    A trained head goes in as a module to save: peft adds a classifier's on its own, a language
    model's LM head is listed. ``with_head``: whether the head trained (default: when it is new)."""
    from safetensors.torch import save_file

    task_type = peft_task_type(model)
    new_head = task_type in ("SEQ_CLS", "TOKEN_CLS")  # not in the base model: always in the adapter
    with_head = new_head or architecture.trains_head(with_head, model)
    folder.mkdir(parents=True, exist_ok=True)
    config.base_model_name_or_path = getattr(model.config, "_name_or_path", None)
    config.task_type = task_type
    head_modules = sorted({n.rpartition(".")[0] for n in architecture.head_param_names(model)})
    if not new_head:  # a language model's LM head is in the base: in the adapter only when it trained
        config.modules_to_save = (head_modules or None) if with_head else None
    config.save_pretrained(folder)
    save_file(adapter_state(model, adapter_name, with_head), folder / "adapter_model.safetensors")
