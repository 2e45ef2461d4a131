"""`mlm`: masked-language-model loss as an auxiliary task, or alone for domain-adaptive
continued pretraining (a stage with ``data: unlabeled``).

Masking follows BERT: 15% of the non-special tokens are chosen; of those 80% become [MASK], 10% a
random token and 10% stay (``DataCollatorForLanguageModeling.torch_mask_tokens``). Classification
checkpoints (like the embedded MiniLM) have no MLM head, so the objective owns one: a transform
(dense, GELU, LayerNorm) and a decoder tied to the model's word embeddings. The transform starts
from the checkpoint's MLM head when it has one, else from the identity, so that the first
predictions already come from the embedding geometry rather than from noise. The head trains with
the stage and is kept in checkpoints, but is not part of the saved model.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..model_io import read_state_dict
from ..registry import OBJECTIVES
from ..tasks import MULTI_TASK, SINGLE_HEAD_TASKS
from .base import Objective, ObjectiveSpec, model_inputs


class MLMSpec(ObjectiveSpec):
    name: Literal["mlm"] = "mlm"
    weight: float = Field(1.0, ge=0)
    probability: float = Field(0.15, gt=0, lt=1, description="share of tokens chosen for prediction")
    source: Literal["batch", "unlabeled", "both"] = "batch"
    needs_labels: ClassVar[bool] = False
    tasks: ClassVar[tuple[str, ...]] = (*SINGLE_HEAD_TASKS, MULTI_TASK)
    reads_embeddings: ClassVar[bool] = True  # its decoder is tied to them


class MaskedLMHead(torch.nn.Module):
    def __init__(self, hidden: int, vocab: int, eps: float):
        super().__init__()
        self.dense = torch.nn.Linear(hidden, hidden)
        self.norm = torch.nn.LayerNorm(hidden, eps=eps)
        self.bias = torch.nn.Parameter(torch.zeros(vocab))
        with torch.no_grad():
            self.dense.weight.copy_(torch.eye(hidden))
            self.dense.bias.zero_()

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(F.gelu(self.dense(hidden))), word_embeddings, self.bias)


def pretrained_mlm_head(source: str) -> dict[str, torch.Tensor]:
    """The transform and bias of a BERT-style MLM head in the checkpoint folder, renamed for
    MaskedLMHead; none for a hub name (its files are not read here: the head starts from the identity)."""
    if not Path(source).is_dir():
        return {}
    state = read_state_dict(source)
    names = {"predictions.transform.dense.weight": "dense.weight", "predictions.transform.dense.bias": "dense.bias",
             "predictions.transform.LayerNorm.weight": "norm.weight", "predictions.transform.LayerNorm.bias": "norm.bias",
             "predictions.bias": "bias"}
    return {ours: t for key, t in state.items() for theirs, ours in names.items() if key.endswith(theirs)}


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the chosen positions (labels -100 elsewhere)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


@OBJECTIVES.register(MLMSpec)
class MaskedLM(Objective):
    """Masked-language-model loss (BERT 80/10/10 masking) with a head tied to the word embeddings."""

    uses_outputs = False  # it reads the masked text, not the batch as given

    def on_stage_start(self, run) -> None:
        from transformers import DataCollatorForLanguageModeling

        model = run.processes.unwrap(run.model)
        config = model.config
        self.masker = DataCollatorForLanguageModeling(run.tokenizer, mlm_probability=self.config.probability)
        self.special_ids = torch.tensor(run.tokenizer.all_special_ids, device=run.device)
        self.head = MaskedLMHead(config.hidden_size, config.vocab_size, getattr(config, "layer_norm_eps", 1e-12))
        restored = getattr(self, "restored", None)  # a resumed stage continues with its trained head
        if restored:
            self.from_checkpoint = bool(restored.pop("from_checkpoint", False))
            self.head.load_state_dict(restored)
        else:
            found = pretrained_mlm_head(run.model_source)
            self.head.load_state_dict(found, strict=False)  # what the checkpoint lacks starts as described above
            self.from_checkpoint = bool(found)
        self.head.to(run.device)
        self.embeddings = model.get_input_embeddings()

    def loss(self, model, batch, outputs, ctx):
        terms = []
        for inputs in self.inputs_for(batch, ctx):
            special = torch.isin(inputs["input_ids"], self.special_ids) | (inputs["attention_mask"] == 0)
            masked_ids, labels = self.masker.torch_mask_tokens(inputs["input_ids"].clone(), special)
            hidden = model(**{**model_inputs(inputs), "input_ids": masked_ids}, output_hidden_states=True).hidden_states[-1]
            chosen = labels != -100  # the vocabulary projection only where there is something to predict
            logits = self.head(hidden[chosen], self.embeddings.weight)
            terms.append(masked_lm_loss(logits, labels[chosen]))
        return sum(terms) / len(terms)

    def summary(self) -> dict:
        return {"head_start": "the checkpoint's MLM head" if self.from_checkpoint else
                "identity transform (the checkpoint has no MLM head)"}

    def trainable_parameters(self):
        return list(self.head.parameters())

    def state_dict(self):
        return {**{f"head.{k}": v for k, v in self.head.state_dict().items()},
                "from_checkpoint": torch.tensor([self.from_checkpoint])}

    def load_state_dict(self, state):
        self.restored = {k.removeprefix("head."): v for k, v in state.items()}
