"""`adversarial`: training on perturbed input embeddings.

- ``fgm`` (Miyato et al., 2017): one step of size epsilon along the normalised gradient of the task
  loss with respect to the word embeddings; the loss on the perturbed input is the objective.
- ``pgd`` (Madry et al., 2018): ``steps`` ascent steps of ``step_size``, projected back into the
  epsilon ball each time.
- ``smart`` (Jiang et al., 2020; VAT, Miyato et al., 2018): smoothness - the symmetric KL between
  the predictions on clean and perturbed inputs, the perturbation found by ascent from small random
  noise. Needs no labels, so it also runs on unlabeled text.
Norms are L2 over each example's (real tokens x features) perturbation. Perturbations are added to
the word embeddings, before position embeddings and LayerNorm, as in those papers' text models.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from ..registry import OBJECTIVES
from ..tasks import MULTI_TASK, SINGLE_HEAD_TASKS, task_loss
from .base import Objective, ObjectiveSpec, model_inputs


class AdversarialSpec(ObjectiveSpec):
    name: Literal["adversarial"] = "adversarial"
    weight: float = Field(1.0, ge=0)
    method: Literal["fgm", "pgd", "smart"] = "fgm"
    epsilon: float = Field(1.0, gt=0, description="L2 radius of the perturbation per example")
    steps: int = Field(3, ge=1, description="pgd and smart: ascent steps")
    step_size: float | None = Field(None, gt=0, description="pgd and smart; default epsilon / steps * 1.5")
    noise: float = Field(1e-3, gt=0, description="smart: scale of the random starting perturbation")
    source: Literal["batch", "unlabeled", "both"] = "batch"

    @property
    def needs_labels(self) -> bool:
        return self.method != "smart"

    tasks: ClassVar[tuple[str, ...]] = (*SINGLE_HEAD_TASKS, MULTI_TASK)
    reads_embeddings: ClassVar[bool] = True  # it perturbs their output

    def unsupported(self, task: str) -> str | None:
        if self.method == "smart" and task == MULTI_TASK:
            return "with method smart is not supported in multi-task recipes"
        return super().unsupported(task)

    @model_validator(mode="after")
    def _labels_for_fgm_pgd(self):
        if self.method != "smart" and self.source != "batch":
            raise ValueError(f"{self.method} perturbs against the labels: use source: batch, or method: smart "
                             "for unlabeled text")
        return self


def per_example_normalized(g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """g / ||g|| per example over real tokens (padding gets no perturbation)."""
    g = g * mask.unsqueeze(-1)
    norm = g.flatten(1).norm(dim=1).clamp(min=1e-12)
    return g / norm.view(-1, *([1] * (g.dim() - 1)))


def project(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Back into the L2 ball of radius epsilon, per example."""
    norm = delta.flatten(1).norm(dim=1).clamp(min=1e-12)
    scale = (epsilon / norm).clamp(max=1.0)
    return delta * scale.view(-1, *([1] * (delta.dim() - 1)))


def symmetric_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(p||q) + KL(q||p) per example (or per token), averaged."""
    lp, lq = F.log_softmax(p_logits, -1), F.log_softmax(q_logits, -1)
    kl = ((lp.exp() - lq.exp()) * (lp - lq)).sum(-1)
    return kl[mask.bool()].mean() if mask is not None else kl.mean()


@OBJECTIVES.register(AdversarialSpec)
class Adversarial(Objective):
    """Adversarial perturbation of input embeddings: FGM, PGD, or SMART/VAT smoothness."""

    @property
    def uses_outputs(self) -> bool:
        return self.config.source != "unlabeled"

    def on_stage_start(self, run) -> None:
        self.token_level = run.recipe.task == "token_classification"

    def loss(self, model, batch, outputs, ctx):
        embed = (ctx.module or model).get_input_embeddings()
        terms = []
        for inputs in self.inputs_for(batch, ctx):
            clean = outputs if inputs is batch else model(**model_inputs(inputs))
            terms.append(self.term(model, embed, inputs, clean.logits))
        return sum(terms) / len(terms)

    def forward_perturbed(self, model, inputs: dict, embeds: torch.Tensor) -> torch.Tensor:
        rest = {k: v for k, v in model_inputs(inputs).items() if k != "input_ids"}
        return model(inputs_embeds=embeds, **rest).logits

    def term(self, model, embed, inputs: dict, clean_logits: torch.Tensor) -> torch.Tensor:
        c = self.config
        mask = inputs["attention_mask"]
        embeds = embed(inputs["input_ids"])
        step = c.step_size or 1.5 * c.epsilon / c.steps
        kl_mask = mask if self.token_level else None

        def inner_loss(delta):
            logits = self.forward_perturbed(model, inputs, embeds.detach() + delta)
            if c.method == "smart":
                return symmetric_kl(clean_logits.detach(), logits, kl_mask)
            return task_loss(logits, inputs["labels"])

        if c.method == "smart":
            delta = per_example_normalized(torch.randn_like(embeds), mask) * c.noise
        else:
            delta = torch.zeros_like(embeds)
        steps = 1 if c.method == "fgm" else c.steps
        for _ in range(steps):
            delta = delta.detach().requires_grad_()
            (grad,) = torch.autograd.grad(inner_loss(delta), delta)
            if c.method == "fgm":
                delta = c.epsilon * per_example_normalized(grad, mask)
            else:
                delta = project(delta + step * per_example_normalized(grad, mask), c.epsilon)
        logits = self.forward_perturbed(model, inputs, embeds + delta.detach())
        if c.method == "smart":
            return symmetric_kl(clean_logits, logits, kl_mask)
        return task_loss(logits, inputs["labels"])
