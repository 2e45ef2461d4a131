"""The best weights a stage has evaluated, kept on disk and put back at its end (``keep_best``).

Only the tensors the stage trains are kept (the others cannot have changed): every parameter
trainable when the stage opens, including those a selector switches on and off during it (LISA's
layers: one inactive at the best evaluation still holds the values it trained to). The file is part of every
checkpoint, so a resumed stage compares against the best weights as they were at its checkpoint,
not as a later or an interrupted attempt's evaluation left them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import HybridftError
from ..folders import WRITE_ERRORS
from .checkpoint import write_failure


class BestWeights:
    def __init__(self, run, index: int, model: torch.nn.Module, resume_from: Path | None = None):
        # what trains when the stage opens, before any step: a selector may switch some of it off
        # and on again during the stage (LISA)
        self.trained = {n for n, p in model.named_parameters() if p.requires_grad}
        self.path = run.checkpoint_dir / f"best-stage{index}.safetensors"
        self.processes = run.processes
        self.is_main = run.processes.is_main  # every process has the same weights; one file
        if self.is_main:
            self.path.unlink(missing_ok=True)
            if resume_from is not None and (resume_from / self.path.name).is_file():
                shutil.copy2(resume_from / self.path.name, self.path)

    def save(self, model: torch.nn.Module) -> None:
        """Every process calls it (sharded weights are gathered); the main one writes."""
        trainable = self.processes.full_tensors({n: p for n, p in model.named_parameters() if n in self.trained})
        if not self.is_main:
            return
        tmp = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            save_file({n: p.detach().contiguous() for n, p in trainable.items()}, tmp)
            tmp.replace(self.path)
        except WRITE_ERRORS as e:
            tmp.unlink(missing_ok=True)
            raise write_failure(f"the best weights {self.path.name}", e, self.path.parent) from None

    def restore(self, model: torch.nn.Module) -> None:
        if not self.path.is_file():
            return
        # the file holds exactly the tensors the stage trains (the others cannot have changed)
        stored = load_file(self.path)
        if set(stored) != self.trained:
            odd = sorted(set(stored) ^ self.trained)[0]
            raise HybridftError(f"{self.path} does not fit the stage's trainable parameters (e.g. {odd})")
        model.load_state_dict(stored, strict=False)
