"""The precision policy of training: the one place that knows about autocast and half-precision weights.

Trained weights, their gradients and the optimizer state always stay fp32. ``model.precision: bf16``
runs the forward in bfloat16 autocast; ``auto`` means bf16 only where it pays (a CUDA GPU with bf16
support). ``model.dtype: bfloat16`` also holds the *frozen* weights in bfloat16 for the length of a
stage, which halves the memory of a frozen base (a LoRA run on an LLM); the forward then runs in
bf16 autocast, so trained fp32 weights and frozen bf16 ones meet in bf16 matmuls.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


class Precision:
    def __init__(self, setting: str, device: torch.device, frozen_dtype: str = "float32"):
        self.frozen = None if frozen_dtype == "float32" else getattr(torch, frozen_dtype)
        if self.frozen is not None:
            self.bf16 = True  # frozen bf16 weights and fp32 activations meet only under autocast
        elif setting == "auto":
            self.bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        else:
            self.bf16 = setting == "bf16"
        self.device = device

    @property
    def name(self) -> str:
        held = f", frozen weights in {str(self.frozen).removeprefix('torch.')}" if self.frozen else ""
        return ("bf16 autocast" if self.bf16 else "fp32") + held

    @staticmethod
    def train_in_fp32(parameters) -> None:
        """Trained weights are float32 whatever they were loaded or injected in (LoRA layers take their
        base layer's dtype): their gradients and the optimizer state follow them. Before the optimizer
        is built, and in place, so that every reference to a parameter stays valid."""
        for p in parameters:
            if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
                p.data = p.data.float()

    def describe(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """The dtypes a stage trained with, read off the tensors: the frozen weights (as the stage held
        them), the trained weights, and the optimizer state."""
        def names(tensors) -> str:
            found = sorted({str(t.dtype).removeprefix("torch.") for t in tensors if t.is_floating_point()})
            return ", ".join(found) or "none"

        frozen = [p for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
        held = str(self.frozen).removeprefix("torch.") if self.frozen is not None and frozen else names(frozen)
        trained = [p for group in optimizer.param_groups for p in group["params"]]
        state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
        return {"frozen_weights": held, "trained_weights": names(trained), "optimizer_state": names(state),
                "forward": "bf16 autocast" if self.bf16 else "fp32"}

    def autocast(self):
        # no cast cache: autocast keeps the bf16 copy of each fp32 weight until the outermost region
        # closes, and ``frozen_held`` holds one region open for the whole stage, so every forward after
        # the first would see the trained weights as they were at the first step
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False)

    @staticmethod
    def one_dtype(model: torch.nn.Module) -> torch.nn.Module:
        """After the stages: a model trained on a bf16 frozen base holds bf16 and fp32 weights, and
        what comes next (the final evaluation, the model in memory, saving) runs outside autocast,
        so it gets one dtype: float32, which holds both exactly."""
        if len({p.dtype for p in model.parameters() if p.is_floating_point()}) > 1:
            model.float()
        return model

    @contextmanager
    def frozen_held(self, model: torch.nn.Module):
        """The stage's span, with the frozen floating-point weights held in ``model.dtype`` and every
        forward (training, evaluation, pseudo-labelling) in autocast; the weights are back in their
        own dtype afterwards, holding the rounded values (exact for a checkpoint saved in bf16)."""
        if self.frozen is None:
            yield
            return
        held = [(p, p.dtype) for p in model.parameters()
                if not p.requires_grad and p.is_floating_point() and p.dtype != self.frozen]
        for p, _ in held:
            p.data = p.data.to(self.frozen)
        try:
            with self.autocast():
                yield
        finally:
            for p, dtype in held:
                p.data = p.data.to(dtype)
