"""Frozen teachers for distillation and pseudo-labeling: the pretrained model, the model as the
stage found it, M_fine before the mix step, the model as a named earlier stage left it
(``stage:<name>``), or a saved model folder. Teachers run in eval mode, without gradients, and
never change."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch

from ..errors import HybridftError
from ..model_io import load_saved
from ..spec import STAGE_REF, StageContext
from .base import ObjectiveSpec


class TeacherSpec(ObjectiveSpec):
    """The ``teacher`` key that distillation and pseudo-labeling share, and its checks."""

    teacher: str | list[str]

    def teachers(self) -> list[str]:
        return [self.teacher] if isinstance(self.teacher, str) else list(self.teacher)

    def check_in(self, ctx: StageContext) -> None:
        for teacher in self.teachers():
            if teacher.startswith(STAGE_REF):
                name = teacher[len(STAGE_REF):]
                if ctx.earlier.count(name) != 1:
                    why = "names two earlier stages" if ctx.earlier.count(name) > 1 else "names no earlier stage"
                    raise ValueError(f"stages.{ctx.index}: teacher {teacher} {why}; the stages before it are "
                                     f"{', '.join(ctx.earlier) or 'none'}")
            if teacher == "fine_tuned" and not ctx.mix_before:
                raise ValueError(f"stages.{ctx.index}: objective {self.name} with teacher fine_tuned needs a mix "
                                 "stage before it")
            if teacher == "previous" and ctx.index == 0:
                raise ValueError(f"stages.0: objective {self.name} with teacher previous needs a stage before it")


def check_ensemble(teacher: str | list[str], frozen_only: bool = False) -> None:
    """A list of teachers (an ensemble) names two or more different ones; ``frozen_only``: not the
    model being trained (``current``)."""
    if not isinstance(teacher, list):
        return
    if len(set(teacher)) < max(2, len(teacher)):
        raise ValueError("teacher: an ensemble lists two or more different teachers")
    if frozen_only and "current" in teacher:
        raise ValueError("teacher: an ensemble lists frozen teachers only, not current")


def ensemble_logits(logits: list[torch.Tensor]) -> torch.Tensor:
    """Logits whose softmax is the mean of the members' distributions (log of the mean), so that a
    student learns the ensemble's averaged prediction; a temperature then applies to them as to one
    teacher's logits."""
    log_probs = torch.stack([torch.log_softmax(x.float(), dim=-1) for x in logits])
    return torch.logsumexp(log_probs, dim=0) - math.log(len(logits))


def build_teacher(run, teacher: str, need_head: bool) -> torch.nn.Module:
    if teacher == "pretrained":
        with torch.random.fork_rng(devices=[]):  # its unused new head must not move the run's RNG
            model = run.load_pretrained()
    elif teacher == "previous":
        start = run.artifacts.stage_start_model
        # a restarted stage's snapshot is frozen already and never changes: its teachers share it
        model = start if start is not None else copy.deepcopy(run.processes.unwrap(run.model))
    elif teacher == "fine_tuned":
        if run.artifacts.fine_tuned_state is None:
            raise HybridftError("teacher fine_tuned needs a mix stage before this stage")
        model = copy.deepcopy(run.processes.unwrap(run.model))
        # modules this stage added (LoRA, adapters) are still at their identity initialisation
        unexpected = model.load_state_dict(run.artifacts.fine_tuned_state, strict=False).unexpected_keys
        if unexpected:
            raise HybridftError(f"the fine-tuned weights do not fit this stage's model (e.g. {unexpected[0]})")
    elif teacher.startswith(STAGE_REF):
        model = stage_teacher(run, teacher[len(STAGE_REF):])
    else:
        model = folder_teacher(run, teacher, need_head)
    model.eval()
    model.requires_grad_(False)
    return model.to(run.device)


def keep_stage_weights(run, index: int) -> None:
    """After stage ``index``: keep its weights if a later teacher names it (a copy of the model's
    size, also written into checkpoints), and let go of those no later stage needs any more."""
    needed = run.recipe.teacher_stages(after=index)
    kept = run.artifacts.stage_weights
    for name in set(kept) - needed:
        del kept[name]
    name = run.recipe.stage_name(index)
    if name in needed:
        kept[name] = {k: v.detach().clone() for k, v in run.processes.unwrap(run.model).state_dict().items()}


def stage_teacher(run, name: str) -> torch.nn.Module:
    """The model as stage ``name`` left it: the model's skeleton after that stage, then its kept weights."""
    weights = run.artifacts.stage_weights.get(name)
    if weights is None:  # validate checks the name; this is a run whose stages changed under it
        raise HybridftError(f"teacher {STAGE_REF}{name}: no finished stage of that name kept its weights")
    model = run.skeleton_after(run.recipe.stage_index(name) + 1)
    model.load_state_dict(weights)
    return model


def teacher_state(name: str, teacher) -> dict[str, torch.Tensor]:
    """The weights of a ``previous`` teacher, for the checkpoint: a run resumed mid-stage no
    longer has the model as the stage found it (its weights are the checkpoint's)."""
    if name != "previous" or teacher is None:
        return {}
    # cloned: safetensors refuses tensors that share memory (tied embeddings)
    return {f"teacher/{k}": v.detach().clone() for k, v in teacher.state_dict().items()}


def restore_teacher(teacher, state: dict | None) -> None:
    weights = {k[len("teacher/"):]: v for k, v in (state or {}).items() if k.startswith("teacher/")}
    if weights:
        teacher.load_state_dict(weights)


def folder_teacher(run, folder: str, need_head: bool) -> torch.nn.Module:
    path = Path(folder).expanduser()
    if not path.is_absolute():
        path = run.base_dir / path
    model, _, meta, labels = load_saved(path)
    if need_head and labels != run.data.label_names:
        raise HybridftError(f"teacher {folder} predicts labels {labels[:8]}, the task has {run.data.label_names[:8]}")
    if need_head and meta.get("task", run.recipe.task) != run.recipe.task and \
            "token_classification" in (meta.get("task"), run.recipe.task):
        raise HybridftError(f"teacher {folder} is a {meta.get('task')} model, the task is {run.recipe.task}")
    return model


@torch.no_grad()
def teacher_outputs(teacher, inputs: dict, hidden_states: bool):
    return teacher(**inputs, output_hidden_states=hidden_states)
