"""Metrics per task (scikit-learn, seqeval) and the evaluation pass over a split."""

from __future__ import annotations

import math

import numpy as np
import torch

from .data.batching import length_sorted_batches, my_batches
from .generative.evaluate import evaluate_generative
from .progress import track
from .tasks import IGNORE_INDEX, task_loss


def classification_metrics(preds: list[int], gold: list[int], label_names: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    ids = list(range(len(label_names)))
    p, r, f, s = precision_recall_fscore_support(gold, preds, labels=ids, zero_division=0)
    pm, rm, fm, _ = precision_recall_fscore_support(gold, preds, labels=ids, average="macro", zero_division=0)
    return {
        "accuracy": float(accuracy_score(gold, preds)),
        "f1_macro": float(fm),
        "precision_macro": float(pm),
        "recall_macro": float(rm),
        "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, name in enumerate(label_names)},
        "confusion_matrix": confusion_matrix(gold, preds, labels=ids).tolist(),
    }


def tagging_metrics(pred_tags: list[list[str]], gold_tags: list[list[str]]) -> dict:
    """Entity-level P/R/F1 (seqeval, BIO2 tags) and token accuracy."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    report = classification_report(gold_tags, pred_tags, output_dict=True, zero_division=0)
    per_type = {k: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]),
                    "support": int(v["support"])}
                for k, v in report.items() if not k.endswith(" avg")}
    tokens = sum(len(g) for g in gold_tags)
    correct = sum(p == g for ps, gs in zip(pred_tags, gold_tags, strict=True) for p, g in zip(ps, gs, strict=True))
    return {
        "entity_f1": float(f1_score(gold_tags, pred_tags, zero_division=0)),
        "entity_precision": float(precision_score(gold_tags, pred_tags, zero_division=0)),
        "entity_recall": float(recall_score(gold_tags, pred_tags, zero_division=0)),
        "token_accuracy": correct / max(tokens, 1),
        "per_class": per_type,
    }


# padded tokens per inference batch when no batch size is given. On this project's CPU 512-4,096 are
# equally fast and larger batches slower (their activations leave the caches: benchmarks/
# bench_inference.py); a GPU starts larger, and a batch that does not fit is halved, the size that
# fitted then capping the batches after it
INFERENCE_TOKENS = {"cpu": 2048, "cuda": 65536}


def forward_batch(model, rows: list[dict], collator, device) -> tuple[list, float, int]:
    """Per-example logits (numpy, unpadded for tokens), the loss summed over labels, and their count."""
    batch = {k: v.to(device) for k, v in collator(rows).items()}
    labels = batch.pop("labels", None)
    logits = model(**batch).logits.float()
    n = int((labels != IGNORE_INDEX).sum()) if labels is not None else 0
    loss = float(task_loss(logits, labels)) * n if labels is not None else 0.0
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    out = [logits[row, : lengths[row]].cpu().numpy() if logits.dim() == 3 else logits[row].cpu().numpy()
           for row in range(len(rows))]
    return out, loss, n


class FittingForward:
    """``forward_batch`` on as much of a batch as the device has memory for: a batch that does not fit
    is halved, and the batches after it are cut to the size that fitted. Not for a sharded model
    (``may_split`` off): it gathers its weights in every forward, so every process must run as many."""

    def __init__(self, model, collator, device, may_split: bool):
        self.model, self.collator, self.device, self.may_split = model, collator, device, may_split
        self.max_tokens = math.inf

    def __call__(self, rows: list[dict]) -> tuple[list, float, int]:
        tokens = len(rows) * max(len(ex["input_ids"]) for ex in rows)
        if tokens > self.max_tokens and len(rows) > 1:
            return self.halves(rows)
        try:
            return forward_batch(self.model, rows, self.collator, self.device)
        except torch.OutOfMemoryError:
            if not self.may_split or len(rows) == 1:
                raise
        # out of the handler: its traceback, which holds the failed batch's activations, is gone, so
        # the cache can give their memory back before the halves run
        self.max_tokens = tokens // 2
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return self.halves(rows)

    def halves(self, rows: list[dict]) -> tuple[list, float, int]:
        first, second = self(rows[: len(rows) // 2]), self(rows[len(rows) // 2:])
        return first[0] + second[0], first[1] + second[1], first[2] + second[2]


@torch.inference_mode()
def predict(model, examples: list[dict], collator, batch_size: int | None, device, desc: str = "eval",
            progress: bool = True, processes=None) -> tuple[list, float]:
    """Per-example logits (numpy, unpadded for tokens) in input order, and the mean loss where
    examples carry labels (NaN otherwise). Batches are length-sorted, of ``batch_size`` examples or,
    without one, of as many as fit ``INFERENCE_TOKENS``. With ``processes`` (rank, world, gather)
    each process computes a share of the batches and all get every result, added up in the order
    one process would: the same numbers, bit for bit."""
    was_training = model.training
    model.eval()
    device = torch.device(device)
    budget = INFERENCE_TOKENS.get(device.type, INFERENCE_TOKENS["cpu"])
    batches = length_sorted_batches([len(ex["input_ids"]) for ex in examples], batch_size, budget)
    # a sharded model gathers its weights in every forward, so its processes must run as many: they
    # cannot halve a batch one-sidedly; whole models (one process, DDP) each split their own batches
    forward = FittingForward(model, collator, device, may_split=not getattr(processes, "sharded", False))
    done = {b: forward([examples[i] for i in batches[b]])  # batch -> (per-example logits, loss x labels, labels)
            for b in track(my_batches(len(batches), processes), desc, progress)}
    if processes is not None and processes.world > 1:
        done = {b: result for part in processes.gather(done) for b, result in part.items()}
    model.train(was_training)
    outputs: list = [None] * len(examples)
    loss_sum, loss_n = 0.0, 0
    for b, idx in enumerate(batches):
        rows, loss, n = done[b]
        loss_sum, loss_n = loss_sum + loss, loss_n + n
        for row, i in enumerate(idx):
            outputs[i] = rows[row]
    return outputs, (loss_sum / loss_n if loss_n else float("nan"))


def evaluate(model, examples: list[dict], task: str, label_names: list[str], collator, batch_size: int, device,
             desc: str = "eval", progress: bool = True, processes=None) -> dict:
    logits, loss = predict(model, examples, collator, batch_size, device, desc, progress, processes)
    return metrics_from_scores(examples, logits, task, label_names, loss)


def metrics_from_scores(examples: list[dict], scores: list, task: str, label_names: list[str],
                        loss: float = float("nan")) -> dict:
    """Metrics of per-example scores (logits or probabilities: only the argmax matters)."""
    logits = scores
    if task == "token_classification":
        pred_tags, gold_tags = [], []
        for ex, lg in zip(examples, logits, strict=True):
            labels = np.asarray(ex["labels"][: len(lg)])
            keep = labels != IGNORE_INDEX
            pred_tags.append([label_names[j] for j in lg.argmax(-1)[keep]])
            gold_tags.append([label_names[j] for j in labels[keep]])
        metrics = tagging_metrics(pred_tags, gold_tags)
    else:
        preds = [int(lg.argmax()) for lg in logits]
        metrics = classification_metrics(preds, [ex["labels"] for ex in examples], label_names)
    metrics["loss"] = loss
    return metrics


def scalar_metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def evaluate_data(run, model, split: str, batch_size: int, desc: str, progress: bool = True) -> dict | None:
    """Metrics of the run's model on one split (None when the data has no such split). Multi-task:
    each task's metrics under ``<task>/``, and ``score``, the mean of the tasks' primary metrics."""
    data = run.data
    if data.task in ("causal_lm", "seq2seq"):
        return evaluate_generative(run, model, split, batch_size, desc, progress)
    if data.task != "multi_task":
        examples = getattr(data, split)
        if examples is None:
            return None
        return evaluate(model, examples, data.task, data.label_names, run.collator, batch_size, run.device, desc,
                        progress, run.processes)
    per_task = {}
    for i, (name, task) in enumerate(zip(data.names, data.tasks, strict=True)):
        examples = data.split(i, split)
        if examples is not None:
            per_task[name] = evaluate(model, examples, task.task, task.label_names, run.collator, batch_size,
                                      run.device, f"{desc} {name}", progress, run.processes)
    if not per_task:
        return None
    primary = dict(zip(data.names, data.metrics, strict=True))
    return {"score": float(np.mean([m[primary[n]] for n, m in per_task.items()])),
            "loss": float(np.mean([m["loss"] for m in per_task.values()])),
            **{f"{n}/{k}": v for n, m in per_task.items() for k, v in scalar_metrics(m).items()},
            "tasks": per_task}
