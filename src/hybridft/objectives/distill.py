"""`distill`: knowledge distillation from a frozen teacher.

On logits: KL(p_teacher || p_student) of temperature-softened distributions, times T^2 so that
gradients keep their scale as T changes (Hinton et al., 2015). On hidden states (a teacher without a
task head, such as the pretrained model): MSE or 1 - cosine between the student's and the teacher's
token representations of chosen layers, averaged over real (non-padding) tokens.

Teachers: ``pretrained``, ``previous`` (the model as this stage started), ``fine_tuned`` (M_fine,
kept by a mix stage: "distill the mix"), ``stage:<name>`` (the model as that earlier stage left it)
or a model folder. A list of teachers is an ensemble: the student learns the mean of their output
distributions (logits only). Teacher logits are cached per example, since a frozen teacher in eval
mode gives the same answer every epoch; those of the stage's own data are all computed at its first
step, in length-sorted batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from ..errors import HybridftError
from ..evaluate import predict
from ..registry import OBJECTIVES
from ..spec import StageContext, teacher_is_folder
from ..tasks import GENERATIVE_TASKS, IGNORE_INDEX, SINGLE_HEAD_TASKS, token_positions
from .base import Objective, model_inputs
from .input_noise import student_noise
from .teachers import (
    TeacherSpec,
    build_teacher,
    check_ensemble,
    ensemble_logits,
    restore_teacher,
    teacher_outputs,
    teacher_state,
)


class DistillSpec(TeacherSpec):
    name: Literal["distill"] = "distill"
    weight: float = Field(1.0, ge=0)
    teacher: str | list[str] = Field("fine_tuned", description="pretrained | previous | fine_tuned | stage:<name> | "
                                                             "a model folder; a list: their ensemble (logits only)")
    kind: Literal["logits", "hidden"] | None = Field(None, description="default: hidden for pretrained, else logits "
                                                                         "(a pretrained LM's logits are fine for causal_lm "
                                                                         "and seq2seq)")
    temperature: float = Field(2.0, gt=0, description="logits only")
    loss: Literal["mse", "cosine"] = Field("mse", description="hidden only")
    layers: list[int] = Field(default_factory=lambda: [-1], min_length=1,
                              description="hidden only: hidden-state indices (0 = embeddings, -1 = last layer)")
    source: Literal["batch", "unlabeled", "both"] = "batch"
    cache: bool = Field(True, description="keep teacher logits per example (logits only)")
    noise: float = Field(0.0, ge=0, lt=1, description="fraction of the student's tokens replaced by the mask token; "
                                                      "the teacher sees the clean text (Noisy Student)")
    needs_labels: ClassVar[bool] = False
    tasks: ClassVar[tuple[str, ...]] = (*SINGLE_HEAD_TASKS, *GENERATIVE_TASKS)

    @model_validator(mode="after")
    def _kind(self):
        if self.kind is None:
            self.kind = "hidden" if self.teacher == "pretrained" else "logits"
        check_ensemble(self.teacher)
        if isinstance(self.teacher, list) and self.kind == "hidden":
            raise ValueError("teacher: an ensemble of teachers distils logits only (kind: logits)")
        return self

    @property
    def key(self) -> str:
        """Log and uniqueness name: one distill term per teacher (or ensemble) may share a stage."""
        names = [Path(t).name if teacher_is_folder(t) else t for t in self.teachers()]
        return "distill_" + "+".join(names)

    def unsupported(self, task: str) -> str | None:
        if self.noise and task in GENERATIVE_TASKS:  # a masked prompt or source would change what the target answers
            return f"noise is for classification and tagging, not {task}"
        return super().unsupported(task)

    def check_in(self, ctx: StageContext) -> None:
        super().check_in(ctx)
        if "pretrained" in self.teachers() and self.kind == "logits" and ctx.task not in GENERATIVE_TASKS:
            raise ValueError(f"stages.{ctx.index}: the pretrained model has no trained task head: distill from it "
                             "with kind: hidden")
        if self.kind == "hidden" and ctx.task == "seq2seq":
            raise ValueError(f"stages.{ctx.index}: distill kind hidden is not supported for seq2seq; use kind: logits")


def logit_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over examples or masked tokens."""
    log_p_student = F.log_softmax(student / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    if mask is not None:
        kl = kl[mask.bool()]
    return kl.mean() * temperature ** 2


def hidden_distillation(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean over real tokens of the per-token MSE (averaged over features) or 1 - cosine."""
    if loss == "mse":
        per_token = (student - teacher).square().mean(-1)
    else:
        per_token = 1 - F.cosine_similarity(student, teacher, dim=-1)
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


@OBJECTIVES.register(DistillSpec)
class Distill(Objective):
    """Distillation from a frozen teacher: logits KL with temperature, or hidden-state MSE/cosine."""

    @property
    def uses_outputs(self) -> bool:  # a noisy student reads its own forward pass of the masked text
        return self.config.source != "unlabeled" and not self.config.noise

    @property
    def needs_hidden_states(self) -> bool:
        return self.config.kind == "hidden"

    @property
    def teaches_head(self) -> bool:  # the student's head learns the teacher's answers
        return self.config.kind == "logits"

    def on_stage_start(self, run) -> None:
        self.names = self.config.teachers()
        self.teachers = [build_teacher(run, t, need_head=self.config.kind == "logits") for t in self.names]
        if "previous" in self.names:  # resumed mid-stage
            restore_teacher(self.teachers[self.names.index("previous")], getattr(self, "restored", None))
        self.token_level = run.recipe.task in ("token_classification", "causal_lm", "seq2seq")
        # over a vocabulary, per-token teacher logits are too large to keep (30k floats per token)
        self.generative = run.recipe.task in ("causal_lm", "seq2seq")
        self.causal = run.recipe.task == "causal_lm"
        self.cache: dict[tuple[str, int], torch.Tensor] = {}
        self.precomputed = False
        self.noise = student_noise(run, self.config.noise)

    def on_stage_end(self, run) -> None:
        self.teachers, self.cache = [], {}

    def state_dict(self):
        if "previous" not in getattr(self, "names", []) or not self.teachers:
            return {}
        return teacher_state("previous", self.teachers[self.names.index("previous")])

    def load_state_dict(self, state):
        self.restored = state

    def loss(self, model, batch, outputs, ctx):
        terms = []
        if self.config.source in ("batch", "both"):
            student = self.student(model, batch) if self.config.noise else outputs
            if self.config.cache and not self.precomputed:
                self.precompute(ctx.run, ctx.run.data.train if ctx.labeled else ctx.run.data.unlabeled)
            terms.append(self.term(model, batch, student, ("batch", ctx.batch_ids)))
        if self.config.source in ("unlabeled", "both"):
            unlabeled = ctx.unlabeled
            terms.append(self.term(model, unlabeled, self.student(model, unlabeled), ("unlabeled", ctx.unlabeled_ids)))
        return sum(terms) / len(terms)

    def student(self, model, batch: dict):
        return model(**self.noise(model_inputs(batch)), output_hidden_states=self.needs_hidden_states)

    def term(self, model, batch: dict, student, where: tuple[str, list[int]]) -> torch.Tensor:
        mask = batch["attention_mask"]
        if self.config.kind == "hidden":
            teacher = teacher_outputs(self.teachers[0], model_inputs(batch), hidden_states=True).hidden_states
            if teacher[-1].shape[-1] != student.hidden_states[-1].shape[-1]:
                raise HybridftError(f"teacher {self.config.teacher} has hidden size {teacher[-1].shape[-1]}, "
                                    f"the model {student.hidden_states[-1].shape[-1]}")
            return sum(hidden_distillation(student.hidden_states[i], teacher[i], mask, self.config.loss)
                       for i in self.config.layers) / len(self.config.layers)
        if self.generative:  # the positions that predict a labeled token (the response, the target)
            student_logits, labels = token_positions(student.logits, batch["labels"], self.causal)
            teacher = self.teacher_forward(batch)
            teacher_logits, _ = token_positions(teacher, batch["labels"], self.causal)
            return logit_distillation(student_logits, teacher_logits, self.config.temperature, labels != IGNORE_INDEX)
        teacher_logits = self.teacher_logits(batch, where)
        return logit_distillation(student.logits, teacher_logits, self.config.temperature,
                                  mask if self.token_level else None)

    def teacher_logits(self, batch: dict, where: tuple[str, list[int]]) -> torch.Tensor:
        source, ids = where
        if not self.config.cache:
            return self.teacher_forward(batch)
        missing = [i for i in ids if (source, i) not in self.cache]
        if missing:
            logits = self.teacher_forward(batch)
            lengths = batch["attention_mask"].sum(-1).tolist()
            for row, i in enumerate(ids):
                self.cache[source, i] = logits[row, : lengths[row]] if self.token_level else logits[row]
            return logits
        rows = [self.cache[source, i] for i in ids]
        if not self.token_level:
            return torch.stack(rows)
        padded = rows[0].new_zeros(len(rows), batch["attention_mask"].shape[1], rows[0].shape[-1])
        for r, x in enumerate(rows):
            padded[r, : len(x)] = x
        return padded

    def precompute(self, run, examples: list[dict]) -> None:
        """The teacher's logits for every example the stage iterates, in length-sorted batches: an
        epoch's shuffled batches pad to their longest example, which made the teacher's first pass
        over a pool of mixed lengths about twice as slow. (The pool an objective samples beside
        labeled batches is left to the lazy cache: a stage may touch only part of it.)"""
        self.precomputed = True
        if self.generative or run.data.task == "multi_task" or not examples:
            return
        members = [predict(t, examples, run.collator, None, run.device, "teacher", run.progress,
                           run.processes)[0]
                   for t in self.teachers]
        for i in range(len(examples)):
            logits = [torch.from_numpy(m[i]).to(run.device) for m in members]
            self.cache["batch", i] = logits[0] if len(logits) == 1 else ensemble_logits(logits)

    def teacher_forward(self, batch: dict) -> torch.Tensor:
        """The teacher's logits, or its ensemble's (``ensemble_logits``)."""
        inputs = model_inputs(batch)
        logits = [teacher_outputs(t, inputs, hidden_states=False).logits for t in self.teachers]
        return logits[0] if len(logits) == 1 else ensemble_logits(logits)
