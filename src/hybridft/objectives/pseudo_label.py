"""`pseudo_label`: self-training on the unlabeled pool (Lee, 2013; Yarowsky-style).

At the start of the stage (and every ``relabel_every`` epochs) the pool is labeled by the current
model or by frozen teachers (an ensemble's probabilities are averaged); predictions whose
confidence reaches ``threshold`` are kept
(optionally only the ``top_k_per_class`` most confident of each class, which keeps a confident
majority class from drowning the others). Each step trains on a batch of kept examples with their
pseudo-labels. The kept set is part of the checkpoint, and the report says how many pseudo-labels
were used and, where the pool has gold labels, how many of them were right.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from ..errors import HybridftError
from ..evaluate import predict
from ..registry import OBJECTIVES
from ..spec import StageContext
from ..tasks import CLASSIFICATION, task_loss
from .base import Objective, model_inputs
from .input_noise import student_noise
from .teachers import TeacherSpec, build_teacher, check_ensemble, ensemble_logits


class PseudoLabelSpec(TeacherSpec):
    name: Literal["pseudo_label"] = "pseudo_label"
    weight: float = Field(1.0, ge=0)
    teacher: str | list[str] = Field("current", description="current (the model being trained), previous (the model "
                                                           "as the stage found it), fine_tuned (M_fine of a mix "
                                                           "stage), stage:<name> or a model folder; a list of frozen "
                                                           "teachers: their mean probabilities label the pool")
    threshold: float = Field(0.9, ge=0, le=1, description="minimum softmax confidence of a kept prediction")
    top_k_per_class: int | None = Field(None, gt=0, description="keep at most this many per class (most confident)")
    relabel_every: int | None = Field(None, gt=0, description="epochs between re-labelings (current teacher)")
    batch_size: int | None = Field(None, gt=0, description="pseudo-labeled examples per step; default: the stage's")
    noise: float = Field(0.0, ge=0, lt=1, description="fraction of the student's tokens replaced by the mask token; "
                                                      "labeling sees the clean text (Noisy Student)")
    needs_labels: ClassVar[bool] = False
    source: ClassVar[str] = "unlabeled"
    tasks: ClassVar[tuple[str, ...]] = CLASSIFICATION  # it labels whole sentences

    @model_validator(mode="after")
    def _ensemble(self):
        check_ensemble(self.teacher, frozen_only=True)
        return self

    def check_in(self, ctx: StageContext) -> None:
        super().check_in(ctx)
        if "pretrained" in self.teachers():
            raise ValueError(f"stages.{ctx.index}: pseudo_label needs a teacher with a trained head; the pretrained "
                             "model's is new")


def select_confident(probs: np.ndarray, threshold: float, top_k_per_class: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(indices, labels) of predictions with confidence >= threshold, at most k per class, most
    confident first within a class; indices come back sorted."""
    labels, confidence = probs.argmax(-1), probs.max(-1)
    keep = np.flatnonzero(confidence >= threshold)
    if top_k_per_class is not None:
        chosen = []
        for c in np.unique(labels[keep]):
            members = keep[labels[keep] == c]
            chosen.append(members[np.argsort(-confidence[members], kind="stable")[:top_k_per_class]])
        keep = np.sort(np.concatenate(chosen)) if chosen else keep[:0]
    return keep, labels[keep]


@OBJECTIVES.register(PseudoLabelSpec)
class PseudoLabel(Objective):
    """Self-training: confident predictions on unlabeled text become training labels."""

    uses_outputs = False
    teaches_head = True

    def on_stage_start(self, run) -> None:
        self.run, self.rounds = run, getattr(self, "rounds", [])
        self.teachers = [build_teacher(run, t, True) for t in self.config.teachers() if t != "current"]
        self.noise = student_noise(run, self.config.noise)
        if getattr(self, "kept", None) is None:  # not restored from a checkpoint
            self.label_pool(epoch=0)

    def on_epoch_start(self, run, epoch: int) -> None:
        every = self.config.relabel_every
        if every and epoch > 0 and epoch % every == 0 and self.config.teacher == "current":
            self.label_pool(epoch)

    def label_pool(self, epoch: int) -> None:
        run = self.run
        members = [torch.from_numpy(np.stack(predict(model, run.data.unlabeled, run.collator, None, run.device,
                                                      "pseudo-labeling", run.progress, run.processes)[0]))
                   for model in self.teachers or [run.processes.unwrap(run.model)]]
        probs = torch.softmax(ensemble_logits(members), dim=-1).numpy()  # one member: its own softmax
        ids, labels = select_confident(probs, self.config.threshold, self.config.top_k_per_class)
        if len(ids) == 0 and epoch == 0:
            raise HybridftError(f"pseudo_label: no prediction on the unlabeled pool reaches confidence "
                                f"{self.config.threshold}; lower the threshold")
        if len(ids) == 0:  # e.g. a smoothness term made the model less sure: keep the last round's labels
            self.rounds.append([epoch, len(probs), 0, 0, 0, *[0] * len(run.data.label_names)])
            run.log.write(run.global_step, {"stage": "pseudo_label", "pseudo/kept": 0, "pseudo/kept_previous": 1})
            return
        self.kept = torch.as_tensor(ids, dtype=torch.long)
        self.kept_labels = torch.as_tensor(labels, dtype=torch.long)
        gold = [run.data.unlabeled_gold[i] for i in ids] if run.data.unlabeled_gold else [None] * len(ids)
        checked = [(g, p) for g, p in zip(gold, labels.tolist(), strict=True) if g is not None]
        counts = np.bincount(labels, minlength=len(run.data.label_names)).tolist()
        # [epoch, pool, kept, correct, checked, per-class counts...]: plain numbers, so a checkpoint holds them
        self.rounds.append([epoch, len(probs), len(ids), sum(g == p for g, p in checked), len(checked), *counts])
        summary = self.summary()["rounds"][-1]
        run.log.write(run.global_step, {"stage": "pseudo_label", "pseudo/kept": len(ids),
                                        **({"pseudo/accuracy": summary["accuracy_vs_gold"]} if checked else {})})

    def loss(self, model, batch, outputs, ctx):
        size = self.config.batch_size or ctx.batch_size
        picks = ctx.stream_ids(len(self.kept), size, ctx.seed + 13 + 101 * len(self.rounds))
        examples = [self.run.data.unlabeled[int(self.kept[i])] for i in picks]
        inputs = self.noise(model_inputs(ctx.collate(examples)))
        labels = self.kept_labels[picks].to(ctx.run.device)
        return task_loss(model(**inputs).logits, labels)

    def on_stage_end(self, run) -> None:
        self.teachers = []

    def state_dict(self):
        return {"kept": self.kept, "kept_labels": self.kept_labels, "rounds": torch.tensor(self.rounds)}

    def load_state_dict(self, state):
        self.kept, self.kept_labels = state["kept"], state["kept_labels"]
        self.rounds = state["rounds"].tolist()

    def summary(self) -> dict:
        names = self.run.data.label_names
        return {"rounds": [{"epoch": r[0], "pool": r[1], "kept": r[2],
                            "per_class": dict(zip(names, r[5:], strict=True)),
                            "accuracy_vs_gold": r[3] / r[4] if r[4] else None, "checked_against_gold": r[4]}
                           for r in self.rounds]}
