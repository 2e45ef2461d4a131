"""Everything a run carries from one stage to the next, explicitly (no globals)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import TaskData
from ..recipe import Recipe


@dataclass
class Run:
    recipe: Recipe
    run_dir: Path
    model: torch.nn.Module
    tokenizer: object
    data: TaskData
    collator: object
    accelerator: object
    log: object  # report.metrics_log.MetricsLog
    progress: bool = True
    checkpointing: bool = True  # off for trial runs (e.g. choosing an importance density)
    global_step: int = 0
    stage_reports: list[dict] = field(default_factory=list)
    # named things stages hand to each other: teachers, importance scores, the pretrained snapshot
    artifacts: dict = field(default_factory=dict)

    @property
    def device(self):
        return self.accelerator.device

    @property
    def bf16(self) -> bool:
        """bf16 autocast for training forwards. auto means bf16 only where it pays: a CUDA GPU with
        bf16 support (CPUs without bf16 matrix units run it far slower than fp32)."""
        precision = self.recipe.model.precision
        if precision == "auto":
            return self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        return precision == "bf16"

    def autocast(self):
        """Weights, gradients and optimizer state stay fp32; only the forward runs in bf16."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"
