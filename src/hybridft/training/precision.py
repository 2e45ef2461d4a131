"""The precision policy of training forward passes: the one place that knows about autocast.

Weights, gradients and optimizer state stay fp32; with bf16 only the forward runs in bfloat16
(autocast). ``auto`` means bf16 only where it pays: a CUDA GPU with bf16 support (CPUs without bf16
matrix units run it far slower than fp32).
"""

from __future__ import annotations

import torch


class Precision:
    def __init__(self, setting: str, device: torch.device):
        if setting == "auto":
            self.bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        else:
            self.bf16 = setting == "bf16"
        self.device = device

    @property
    def name(self) -> str:
        return "bf16 autocast" if self.bf16 else "fp32"

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
