"""How a run spreads over processes: the one place that knows whether there is one process or several.

The loop asks the strategy to wrap the model, to skip gradient synchronisation on accumulation
micro-batches, to back-propagate, clip, average and gather. Selectors never see it; objectives only
ask it for the model inside the wrapper (``run.processes.unwrap``).
Accelerate (or torchrun) launches the processes and owns the process group; a strategy only uses it.

- ``SingleProcess``: no wrapper, no communication.
- ``DataParallel``: DDP. Every process holds the whole model and optimizer state and takes its share
  of every global batch; gradients are averaged by DDP (the model's) or here (an objective's own).

A sharded strategy (FSDP2) plugs in here: it wraps with ``fully_shard``, and its optimizer is built
after wrapping (the loop always builds it after ``wrap``). What still assumes whole tensors, and will
need a hook here for sharding: checkpoint and best-weights saving, entry masks restored in place, and
the prefix cache.
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch

from ..errors import HybridftError


class SingleProcess:
    def __init__(self, accelerator):
        self.accelerator = accelerator

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def start_tracking(self) -> None:
        """TensorBoard, written by the main process."""
        self.accelerator.init_trackers("tensorboard")

    def track(self, scalars: dict, step: int) -> None:
        self.accelerator.log(scalars, step=step)

    def end(self) -> None:
        self.accelerator.end_training()

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training forward pass runs through (the model itself for one process)."""
        return model

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.accelerator.unwrap_model(model)

    def no_sync(self, wrapped: torch.nn.Module, sync: bool):
        """Skip the gradient all-reduce on micro-batches that are not the last of an update."""
        return nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def clip_grad_norm(self, parameters: list, max_norm: float) -> torch.Tensor:
        return self.accelerator.clip_grad_norm_(parameters, max_norm)

    def average_gradients(self, parameters) -> None:
        """Gradients of parameters outside the wrapped model (an objective's own head)."""

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over the processes (e.g. the global batch's losses)."""
        return values

    def gather(self, obj) -> list:
        """Every process's ``obj``, in process order (call it on all processes)."""
        return [obj]


class DataParallel(SingleProcess):
    def wrap(self, model):
        return self.accelerator.prepare_model(model)

    def no_sync(self, wrapped, sync):
        return nullcontext() if sync else self.accelerator.no_sync(wrapped)

    def average_gradients(self, parameters) -> None:
        for p in parameters:
            if p.grad is not None:
                p.grad = self.accelerator.reduce(p.grad, reduction="mean")

    def mean(self, values):
        names = sorted(values)
        means = self.accelerator.reduce(torch.tensor([float(values[k]) for k in names], device=self.device), "mean")
        return dict(zip(names, means.tolist(), strict=True))

    def gather(self, obj):
        from accelerate.utils import gather_object

        return gather_object([obj])


def launch(run_dir) -> SingleProcess:
    """The strategy for the processes this run was launched with (``accelerate launch`` / ``torchrun``
    set WORLD_SIZE)."""
    from accelerate import Accelerator

    # Accelerate only sets up CPU processes (gloo) when told to use the CPU
    several_on_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(log_with="tensorboard", project_dir=str(run_dir), cpu=several_on_cpu)
    launched = accelerator.distributed_type.name
    if launched in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        # the loop restores masked entries in place and saves full state dicts: correct under DDP
        raise HybridftError(f"accelerate launched with {launched}: hybridft trains with data parallelism (DDP) only "
                            "so far; launch with --multi_gpu (see configs/accelerate/)")
    return DataParallel(accelerator) if accelerator.num_processes > 1 else SingleProcess(accelerator)
