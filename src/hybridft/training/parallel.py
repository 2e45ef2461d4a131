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

import copy
import os
import resource
from contextlib import nullcontext

import torch
import torch.distributed.checkpoint as dcp
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from .. import architecture
from ..errors import HybridftError
from .tracking import Trackers


class SingleProcess:
    strategy = "single process"
    sharded = False  # every process holds whole tensors

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.trackers = None  # the recipe's report_to, on the main process (training.tracking)

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

    def start_tracking(self, names, run_dir, name: str, recipe_text: str) -> None:
        """The recipe's trackers (``report_to``), written by the main process only."""
        if self.is_main and names:
            self.trackers = Trackers(names, run_dir, name, recipe_text)

    def track(self, scalars: dict, step: int) -> None:
        if self.trackers is not None:
            self.trackers.log(scalars, step)

    def track_report(self, report: dict, files: list, step: int) -> None:
        if self.trackers is not None:
            self.trackers.log_report(report, files, step)

    def end_tracking(self, status: str) -> None:
        """FINISHED, or FAILED / KILLED for a run that stopped on an error or an interruption."""
        trackers, self.trackers = self.trackers, None
        if trackers is not None:
            trackers.finish(status)

    def end(self) -> None:
        self.end_tracking("FINISHED")
        self.accelerator.end_training()

    def wrap(self, model: torch.nn.Module, replicated: tuple = ()) -> torch.nn.Module:
        """The module the training forward pass runs through (the model itself for one process).
        ``replicated``: parameters every process must hold whole (read outside the forward)."""
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

    def gather_tensor(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every process's ``tensor`` (same shape on all), in process order: a collective, not pickling."""
        return [tensor]

    def memory_now_mb(self) -> float:
        """This process's memory at this moment: on a GPU what torch holds allocated, else the
        resident memory (Linux's /proc; elsewhere the peak so far)."""
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / 2**20
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def peak_memory_mb(self) -> list[float]:
        """Each process's peak memory (call it on all processes): on a GPU what torch allocated,
        else the process's peak resident memory."""
        if self.device.type == "cuda":
            mine = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            mine = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return self.gather(mine)

    def full_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model with whole tensors, as selectors finish it and later stages start from it."""
        return self.unwrap(model)

    def full_tensors(self, named: dict) -> dict:
        return named

    def local(self, tensor: torch.Tensor, like) -> torch.Tensor:
        return tensor

    def save_sharded(self, folder, model, optimizer) -> None:
        """Model and optimizer state as each process holds it (``torch.distributed.checkpoint``)."""
        dcp.save({"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)},
                 checkpoint_id=str(folder))

    def load_sharded(self, folder, model, optimizer) -> None:
        """On any number of processes, sharded or not: the checkpoint's shards are cut again for this run."""
        state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
        dcp.load(state, checkpoint_id=str(folder))
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, optimizer, state["optimizer"])


class DataParallel(SingleProcess):
    strategy = "ddp"

    def wrap(self, model, replicated=()):
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
        return gather_object([obj])

    def gather_tensor(self, tensor):
        return list(self.accelerator.gather(tensor.unsqueeze(0)).unbind(0))


class Sharded(DataParallel):
    """FSDP2 (``fully_shard``): every transformer block and the rest of the model are sharded over the
    processes, so each holds about 1/N of the weights, gradients and optimizer state while a stage
    trains. At the stage's end the weights are gathered into a plain model (``full_model``), which
    selectors finish (LoRA merges), later stages start from, and checkpoints between stages hold.
    Inside a stage, checkpoints are sharded (``torch.distributed.checkpoint``)."""

    strategy = "fsdp"
    sharded = True

    def __init__(self, accelerator, spec):
        super().__init__(accelerator)
        self.spec = spec
        self.mesh = init_device_mesh(self.device.type, (self.world,))
        self.skeleton = None
        self.replicated: tuple = ()

    def wrap(self, model, replicated=()):
        """Shards every block, then the rest; ``replicated`` parameters stay whole on every process (their
        gradients are averaged by ``average_gradients``, like an objective's own parameters)."""
        self.skeleton = structural_clone(model)  # the plain model's shape, to gather the weights into
        self.replicated = tuple(replicated)
        options = {"mesh": self.mesh, "reshard_after_forward": self.spec.reshard_after_forward}
        if self.spec.cpu_offload:
            options["offload_policy"] = CPUOffloadPolicy()
        if self.spec.mixed_precision is not None:
            mp = self.spec.mixed_precision
            options["mp_policy"] = MixedPrecisionPolicy(param_dtype=getattr(torch, mp.param_dtype),
                                                        reduce_dtype=getattr(torch, mp.reduce_dtype))
        for _, stack in architecture.layer_stacks(model):
            for block in stack:
                fully_shard(block, **options)
        fully_shard(model, **options, ignored_params=set(self.replicated) or None)
        return model

    def average_gradients(self, parameters) -> None:
        super().average_gradients((*parameters, *self.replicated))

    def unwrap(self, model):
        return model

    def no_sync(self, wrapped, sync):
        wrapped.set_requires_gradient_sync(sync)
        return nullcontext()

    def full_model(self, model):
        """The trained weights gathered into a plain (unsharded) copy of the model; every process."""
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        plain, self.skeleton = self.skeleton, None
        plain.load_state_dict(state, assign=True)
        if getattr(plain.config, "tie_word_embeddings", False) and hasattr(plain, "tie_weights"):
            plain.tie_weights()
        return plain

    def full_tensors(self, named: dict) -> dict:
        """Whole tensors of sharded parameters (every process takes part)."""
        return {n: p.full_tensor() if isinstance(p, DTensor) else p for n, p in named.items()}

    def local(self, tensor: torch.Tensor, like) -> torch.Tensor:
        """This process's shard of a whole tensor shaped as the parameter ``like``."""
        if not isinstance(like, DTensor):
            return tensor
        return distribute_tensor(tensor, like.device_mesh, like.placements, src_data_rank=None).to_local()

def structural_clone(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the module tree whose parameters are on the meta device (no memory) and whose
    buffers are real (small: position ids, rotary tables), to load whole weights into later."""
    memo = {id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in model.parameters()}
    return copy.deepcopy(model, memo)


def launch(run_dir, spec=None) -> SingleProcess:
    """The strategy for the processes this run was launched with (``accelerate launch`` / ``torchrun``
    set WORLD_SIZE) and the recipe's ``distributed`` section."""
    # Accelerate only sets up CPU processes (gloo) when told to use the CPU
    several_on_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(project_dir=str(run_dir), cpu=several_on_cpu)  # trackers: training.tracking
    launched = accelerator.distributed_type.name
    if launched in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        # the loop restores masked entries in place and saves full state dicts: correct under DDP
        raise HybridftError(f"accelerate launched with {launched}: hybridft shards with its own FSDP2 "
                            "(distributed.strategy: fsdp); launch with --multi_gpu or torchrun (see configs/accelerate/)")
    if accelerator.mixed_precision == "fp16":  # its gradient scaler would step on scaled gradients
        raise HybridftError("accelerate launched with --mixed_precision fp16, which hybridft does not support; set "
                            "model.precision: bf16 in the recipe (or distributed.mixed_precision for fsdp)")
    if accelerator.num_processes == 1:
        return SingleProcess(accelerator)
    if spec is not None and spec.strategy == "fsdp":
        return Sharded(accelerator, spec)
    return DataParallel(accelerator)
