"""`mlm`: masked-language-model loss as an auxiliary task, or alone for domain-adaptive
continued pretraining (a stage with ``data: unlabeled``).

Masking follows BERT: 15% of the non-special tokens are chosen; of those 80% become [MASK], 10% a
random token and 10% stay (``DataCollatorForLanguageModeling.torch_mask_tokens``). Classification
checkpoints (like the embedded MiniLM) have no MLM head, so the objective owns one: a transform
(dense, GELU, LayerNorm) and a decoder tied to the model's word embeddings. The transform starts
from the checkpoint's MLM head when it has a whole one (BERT, RoBERTa, DeBERTa or ELECTRA names;
the report says which), else from the identity, so that the first
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


# (transform dense, its LayerNorm, the decoder's bias) as each family's masked-LM checkpoint names them
MLM_HEAD_LAYOUTS = {
    "BERT": ("predictions.transform.dense", "predictions.transform.LayerNorm", "predictions.bias"),
    "RoBERTa": ("lm_head.dense", "lm_head.layer_norm", "lm_head.bias"),
    "DeBERTa": ("lm_predictions.lm_head.dense", "lm_predictions.lm_head.LayerNorm", "lm_predictions.lm_head.bias"),
    "ELECTRA": ("generator_predictions.dense", "generator_predictions.LayerNorm", "generator_lm_head.bias"),
}


def pretrained_mlm_head(source: str, hidden: int, vocab: int) -> tuple[dict[str, torch.Tensor], str]:
    """(the checkpoint's MLM head renamed for MaskedLMHead, or nothing; what the head starts from, for
    the report). All of a head or none: a partial match would mix a trained part with a fresh one."""
    if not Path(source).is_dir():
        return {}, "identity transform (a hub checkpoint's files are not read here)"
    state = read_state_dict(source)
    shapes = {"dense.weight": (hidden, hidden), "dense.bias": (hidden,), "norm.weight": (hidden,),
              "norm.bias": (hidden,), "bias": (vocab,)}
    for family, (dense, norm, bias) in MLM_HEAD_LAYOUTS.items():
        theirs = {"dense.weight": f"{dense}.weight", "dense.bias": f"{dense}.bias", "norm.weight": f"{norm}.weight",
                  "norm.bias": f"{norm}.bias", "bias": bias}
        found = {ours: t for ours, key in theirs.items() for name, t in state.items()
                 if name == key or name.endswith("." + key)}
        if not found:
            continue
        if len(found) < len(theirs) or any(tuple(found[k].shape) != shapes[k] for k in found):
            return {}, f"identity transform (the checkpoint's {family}-style MLM head is incomplete or of other shapes)"
        return found, f"the checkpoint's MLM head ({family} layout)"
    return {}, "identity transform (the checkpoint has no MLM head)"


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
            # what it started from, for the report: as the interrupted run said
            _, self.head_start = pretrained_mlm_head(run.model_source, config.hidden_size, config.vocab_size)
        else:
            found, self.head_start = pretrained_mlm_head(run.model_source, config.hidden_size, config.vocab_size)
            if found:
                self.head.load_state_dict(found)
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
        return {"head_start": getattr(self, "head_start", None) or ("the checkpoint's MLM head" if self.from_checkpoint
                                                                    else "identity transform")}

    def trainable_parameters(self):
        return list(self.head.parameters())

    def state_dict(self):
        return {**{f"head.{k}": v for k, v in self.head.state_dict().items()},
                "from_checkpoint": torch.tensor([self.from_checkpoint])}

    def load_state_dict(self, state):
        self.restored = {k.removeprefix("head."): v for k, v in state.items()}
