"""What each task is: its name, the metrics it reports, which one is better when lower, and its loss.

The bottom of the package: data, models, methods and training all read these facts from here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CLASSIFICATION = ("classification", "pair_classification")
TAGGING = "token_classification"
GENERATIVE_TASKS = ("causal_lm", "seq2seq")
MULTI_TASK = "multi_task"
SINGLE_HEAD_TASKS = (*CLASSIFICATION, TAGGING)  # a task of a multi-task recipe is one of these
ALL_TASKS = (*SINGLE_HEAD_TASKS, MULTI_TASK, *GENERATIVE_TASKS)

CLASSIFICATION_METRICS = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "loss")
TAGGING_METRICS = ("entity_f1", "entity_precision", "entity_recall", "token_accuracy", "loss")
CAUSAL_LM_METRICS = ("perplexity", "loss", "token_accuracy")
SEQ2SEQ_METRICS = ("bleu", "chrf", "perplexity", "loss", "token_accuracy")
TASK_METRICS = {TAGGING: TAGGING_METRICS, "causal_lm": CAUSAL_LM_METRICS, "seq2seq": SEQ2SEQ_METRICS}
DEFAULT_METRIC = {TAGGING: "entity_f1", "causal_lm": "perplexity", "seq2seq": "bleu"}
LOWER_IS_BETTER = ("loss", "perplexity")
# metrics that are a proportion of examples, which a binomial standard error describes
PROPORTIONS = ("accuracy", "exact_match", "f1_macro", "precision_macro", "recall_macro", "entity_f1", "entity_precision",
               "entity_recall", "token_accuracy", "score")

IGNORE_INDEX = -100  # labels of padding, of non-first word pieces and of prompt tokens


def loss_targets(example: dict, causal: bool) -> int:
    """How many targets an example adds to its loss's mean: its labeled tokens for token-level labels
    (a causal LM's first token predicts nothing), one for a sequence label or unlabeled text."""
    labels = example.get("labels")
    if not isinstance(labels, list):
        return 1
    return sum(1 for t in (labels[1:] if causal else labels) if t != IGNORE_INDEX)


def metrics_of(task: str) -> tuple[str, ...]:
    return TASK_METRICS.get(task, CLASSIFICATION_METRICS)


def default_metric(task: str) -> str:
    return DEFAULT_METRIC.get(task, "accuracy")


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER


def task_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over labeled positions; works for [B, C] and token-level [B, T, C] logits."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                           label_smoothing=label_smoothing)


def token_positions(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the labels they predict: a causal LM's position t predicts token t + 1."""
    if causal:
        return logits[:, :-1], labels[:, 1:]
    return logits, labels
