"""Evaluation of a generative model on a split: teacher-forced loss, perplexity and token accuracy;
for seq2seq also BLEU and chrF of generated text against the reference text."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data.batching import length_sorted_batches, my_batches
from ..progress import track
from ..tasks import IGNORE_INDEX, token_positions
from .chat import conversation_prompt_ids
from .generate import generate_texts
from .metrics import is_uncased, translation_metrics

SAMPLES = 5  # generated examples kept for the report
GENERATIVE_EVAL_ROWS = 16  # without an eval batch size: a language model's logits are rows x tokens x vocabulary


@torch.no_grad()
def teacher_forced_metrics(model, examples: list[dict], collator, batch_size: int | None, device, causal: bool,
                           desc: str = "eval", progress: bool = False, processes=None) -> dict:
    """Mean token loss (nats), its exponential (perplexity) and next-token accuracy over the
    positions that carry a label. With several ``processes`` each computes every N-th batch and the
    per-batch sums are added up in one process's order: the same numbers, bit for bit."""
    was_training = model.training
    model.eval()
    batches = length_sorted_batches([len(ex["input_ids"]) for ex in examples], batch_size or GENERATIVE_EVAL_ROWS, 0)
    done: dict[int, tuple[float, int, int]] = {}  # batch -> (loss sum, correct, tokens)
    for b in track(my_batches(len(batches), processes), desc, progress):
        batch = {k: v.to(device) for k, v in collator([examples[i] for i in batches[b]]).items()}
        labels = batch.pop("labels")
        logits, labels = token_positions(model(**batch).logits.float(), labels, causal)
        keep = labels != IGNORE_INDEX
        logits, labels = logits[keep], labels[keep]
        done[b] = (float(F.cross_entropy(logits, labels, reduction="sum")), int((logits.argmax(-1) == labels).sum()),
                   int(keep.sum()))
    if processes is not None and processes.world > 1:
        done = {b: sums for part in processes.gather(done) for b, sums in part.items()}
    model.train(was_training)
    loss_sum, correct, tokens = 0.0, 0, 0
    for b in range(len(batches)):
        loss_sum += done[b][0]
        correct += done[b][1]
        tokens += done[b][2]
    loss = loss_sum / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf,
            "token_accuracy": correct / max(tokens, 1)}


def evaluate_generative(run, model, split: str, batch_size: int | None, desc: str, progress: bool) -> dict | None:
    data, batch_size = run.data, batch_size or GENERATIVE_EVAL_ROWS
    examples = getattr(data, split)
    if examples is None:
        return None
    metrics = teacher_forced_metrics(model, examples, run.collator, batch_size, run.device, data.task == "causal_lm",
                                     desc, progress, run.processes)
    spec = run.recipe.generation
    if spec.evaluate and data.task == "seq2seq":
        sources = [ex["input_ids"] for ex in examples]
        metrics.update(translation_scores(run, model, sources, data.texts[split], batch_size, f"{desc} generate",
                                          progress))
    elif spec.evaluate and data.texts.get(split):
        metrics.update(chat_scores(run, model, data.texts[split], batch_size, f"{desc} generate", progress))
    return metrics


def translation_scores(run, model, sources: list[list[int]], texts: list[tuple[str, str]], batch_size: int,
                       desc: str, progress: bool) -> dict:
    """BLEU and chrF of the generated translations, and a few samples."""
    spec = run.recipe.generation
    hypotheses = generate_texts(model, run.tokenizer, sources, spec, batch_size, run.device, run.recipe.seed, desc,
                                progress)
    uncased = spec.uncased if spec.uncased is not None else is_uncased(run.tokenizer)
    metrics = {**translation_metrics(hypotheses, [target for _, target in texts], uncased), "uncased": uncased}
    metrics["samples"] = [{"source": s, "reference": r, "generated": h}
                          for (s, r), h in zip(texts[:SAMPLES], hypotheses[:SAMPLES], strict=True)]
    return metrics


def chat_scores(run, model, texts: list[tuple[list[dict], str]], batch_size: int, desc: str, progress: bool) -> dict:
    """The model's answer to each conversation's last question against the conversation's own answer:
    exact match (whitespace collapsed), and BLEU/chrF where the recipe asks (generation.chat_metrics)."""
    spec = run.recipe.generation
    prompts = conversation_prompt_ids(run.tokenizer, [turns for turns, _ in texts], run.recipe.model.max_length)
    answers = generate_texts(model, run.tokenizer, prompts, spec, batch_size, run.device, run.recipe.seed, desc,
                             progress)
    references = [answer for _, answer in texts]
    metrics = {}
    if "exact_match" in spec.chat_metrics:
        same = sum(" ".join(a.split()) == " ".join(r.split()) for a, r in zip(answers, references, strict=True))
        metrics["exact_match"] = same / len(references)
    if {"bleu", "chrf"} & set(spec.chat_metrics):
        scores = translation_metrics(answers, references, uncased=False)
        metrics.update({k: v for k, v in scores.items() if k in spec.chat_metrics})
    metrics["samples"] = [{"source": turns[-1]["content"] if turns else "", "reference": r, "generated": a}
                          for (turns, r), a in zip(texts[:SAMPLES], answers[:SAMPLES], strict=True)]
    return metrics
