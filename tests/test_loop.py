"""The training loop: accumulation, determinism, resume, early stopping, keep-best."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from .conftest import base_recipe
from .helpers import train_and_load


def test_two_micro_batches_of_one_equal_one_batch_of_two(no_dropout_model, sentiment_csv, tmp_path):
    common = {"optimizer": {"name": "sgd", "lr": 0.5}, "max_grad_norm": None, "max_steps": 6, "keep_best": False}
    _, a = train_and_load(base_recipe(no_dropout_model, sentiment_csv, batch_size=2, **common), tmp_path / "a")
    _, b = train_and_load(base_recipe(no_dropout_model, sentiment_csv, batch_size=1, grad_accum_steps=2, **common),
                          tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    # and training did something
    _, start = train_and_load(base_recipe(no_dropout_model, sentiment_csv, **{**common, "max_steps": 1,
                                          "optimizer": {"name": "sgd", "lr": 1e-12}}), tmp_path / "c")
    assert not torch.allclose(a["classifier.weight"], start["classifier.weight"])


def test_same_seed_same_weights_other_seed_other_weights(tiny_model, sentiment_csv, tmp_path):
    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=4)
    _, a = train_and_load(recipe, tmp_path / "a")
    _, b = train_and_load(recipe, tmp_path / "b")
    _, c = train_and_load({**recipe, "seed": 1}, tmp_path / "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def _without_timing(log: str) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "samples_per_s"} for x in log.splitlines()]


def test_resume_from_an_earlier_checkpoint_gives_bit_identical_weights(tiny_model, sentiment_csv, tmp_path):
    from hybridft.api import run_recipe
    from hybridft.recipe import validate_recipe

    recipe = base_recipe(tiny_model, sentiment_csv, epochs=2, eval_every=3)
    recipe["output"] = {"keep_checkpoints": 20, "keep_checkpoints_after_run": True}
    report, final = train_and_load(recipe, tmp_path / "full")
    log = (tmp_path / "full" / "metrics.jsonl").read_text()
    checkpoints = tmp_path / "full" / "checkpoints"
    mid = sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("step-"))
    assert "step-6" in mid and "step-12" in mid

    # pretend the run died right after step 6 was checkpointed
    shutil.copytree(tmp_path / "full", tmp_path / "crashed")
    crashed = tmp_path / "crashed"
    (crashed / "checkpoints" / "latest").write_text("step-6")
    shutil.rmtree(crashed / "model")
    (crashed / "report.json").unlink()
    resumed = run_recipe(validate_recipe(recipe), tmp_path, crashed, resume=True, progress=False)
    again = load_file(crashed / "model" / "model.safetensors")
    assert all(torch.equal(final[k], again[k]) for k in final)
    assert _without_timing((crashed / "metrics.jsonl").read_text()) == _without_timing(log)
    assert resumed["metrics"] == report["metrics"]


def test_early_stopping_and_keep_best(tiny_model, sentiment_csv, tmp_path):
    # min_delta this large means no evaluation after the first counts as progress for early stopping,
    # but any improvement is still kept as the best weights
    recipe = base_recipe(tiny_model, sentiment_csv, epochs=3, eval_every=1,
                         early_stopping={"patience": 2, "min_delta": 10.0})
    recipe["metric"] = "loss"
    report, _ = train_and_load(recipe, tmp_path / "run")
    stage = report["stages"][0]
    assert stage["stopped_early"] and stage["steps"] == 3
    losses = [e["loss"] for e in stage["evaluations"]]
    best = min(range(3), key=lambda i: losses[i])
    assert stage["best_metric"]["step"] == best + 1
    # the final model is the best one, not the last one
    assert report["metrics"]["loss"] == pytest.approx(losses[best], rel=1e-6)


def test_accumulation_with_a_short_last_micro_batch_equals_one_batch(no_dropout_model, sentiment_csv, tmp_path):
    # 78 rows: batches of 8 end with one of 6; micro-batches of 4 end with a group of 4 + 2
    common = {"optimizer": {"name": "sgd", "lr": 0.5}, "max_grad_norm": None, "keep_best": False, "epochs": 1}
    data = {"train": str(sentiment_csv), "validation": str(sentiment_csv), "max_train_samples": 78}
    a_recipe = {**base_recipe(no_dropout_model, sentiment_csv, batch_size=8, **common), "data": data}
    b_recipe = {**base_recipe(no_dropout_model, sentiment_csv, batch_size=4, grad_accum_steps=2, **common),
                "data": data}
    ra, a = train_and_load(a_recipe, tmp_path / "a")
    rb, b = train_and_load(b_recipe, tmp_path / "b")
    assert ra["stages"][0]["steps"] == rb["stages"][0]["steps"] == 10
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_metrics_log_has_every_step_and_each_loss_term(tiny_model, sentiment_csv, tmp_path):
    report, _ = train_and_load(base_recipe(tiny_model, sentiment_csv, max_steps=5), tmp_path / "run")
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "loss/task" in r]
    assert train_steps == [1, 2, 3, 4, 5]
    assert any("eval/accuracy" in r for r in records)
    assert report["stages"][0]["steps"] == 5


def test_length_grouped_batches_cover_every_example_once_with_less_padding():
    import random

    from hybridft.data.batching import epoch_batches

    lengths = [random.Random(i).randint(3, 120) for i in range(1000)]
    plain = epoch_batches(lengths, 16, seed=3)
    grouped = epoch_batches(lengths, 16, seed=3, group_by_length=True)
    assert sorted(i for b in grouped for i in b) == list(range(1000))
    assert epoch_batches(lengths, 16, seed=3, group_by_length=True) == grouped  # seeded

    def padded(batches):
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    assert padded(grouped) < 0.7 * padded(plain)


def test_bf16_autocast_trains_fp32_weights_and_is_recorded(tiny_model, sentiment_csv, tmp_path):
    def run(precision, out):
        recipe = base_recipe(tiny_model, sentiment_csv, max_steps=3, keep_best=False)
        recipe["model"]["precision"] = precision
        report, weights = train_and_load(recipe, tmp_path / out)
        first = next(json.loads(x)["loss"] for x in (tmp_path / out / "metrics.jsonl").read_text().splitlines()
                     if "loss" in json.loads(x))
        return report, weights, first

    fp32, w32, loss32 = run("fp32", "fp32")
    bf16, w16, loss16 = run("bf16", "bf16")
    assert (fp32["environment"]["precision"], bf16["environment"]["precision"]) == ("fp32", "bf16 autocast")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in w16.values())  # fp32 master weights
    assert loss16 != loss32 and loss16 == pytest.approx(loss32, abs=0.05)  # the forward ran in bf16
    # auto is fp32 without a GPU (a bf16 CPU forward is far slower here)
    auto, *_ = run("auto", "auto")
    assert auto["environment"]["precision"] == ("bf16 autocast" if torch.cuda.is_available() else "fp32")


def test_the_stages_table_scores_the_weights_each_stage_kept():
    from hybridft.report.markdown import kept_evaluation

    stage = {"best_metric": {"accuracy": 0.9, "step": 10},
             "evaluations": [{"step": 10, "accuracy": 0.9}, {"step": 20, "accuracy": 0.7}]}
    assert kept_evaluation({**stage, "keep_best": True}) == "accuracy 0.9000 (best)"
    assert kept_evaluation({**stage, "keep_best": False}) == "accuracy 0.7000 (last)"  # the weights handed on
    assert kept_evaluation({"best_metric": {"accuracy": None, "step": None}, "evaluations": []}) == "not evaluated"


def test_evaluation_split_across_processes_gives_exactly_the_one_process_results(tiny_model, sentiment_csv):
    """Each process computes every world-th batch (the last ones repeat a batch so that all run the
    same number of forward passes); gathered and added up in one process's order, the logits and the
    loss are those of one process, bit for bit."""
    import numpy as np

    from hybridft.evaluate import my_batches, predict

    from .helpers import tiny_classifier, tokenized

    data = tokenized(tiny_model, base_recipe(tiny_model, sentiment_csv))
    model = tiny_classifier(tiny_model)
    from hybridft.data.collate import collator_for
    from hybridft.models import load_tokenizer

    collator = collator_for("classification", load_tokenizer(str(tiny_model)))
    examples = data.train + data.validation  # 80 rows: 11 batches of 8 on 2 processes
    alone, loss = predict(model, examples, collator, 8, "cpu", progress=False)

    Process = two_processes_in_turn()

    with pytest.raises(Waiting):
        predict(model, examples, collator, 8, "cpu", progress=False, processes=Process(1))
    split, split_loss = predict(model, examples, collator, 8, "cpu", progress=False, processes=Process(0))
    assert split_loss == loss and all(np.array_equal(a, b) for a, b in zip(alone, split, strict=True))
    assert my_batches(11, Process(0)) == [0, 2, 4, 6, 8, 10] and my_batches(11, Process(1)) == [1, 3, 5, 7, 9, 9]


def test_perplexity_split_across_processes_gives_exactly_the_one_process_metrics():
    """A language model's teacher-forced metrics: each process sums every world-th batch; gathered
    and added up in one process's order, they are those of one process, bit for bit."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from hybridft.generative.evaluate import teacher_forced_metrics

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=60, n_positions=32))
    examples = [{"input_ids": torch.randint(1, 60, (n,)).tolist()} for n in [5, 9, 12, 7, 3, 16, 11, 8, 4, 10, 6]]

    def collate(rows):
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in rows])
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows])
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}

    alone = teacher_forced_metrics(model, examples, collate, 2, "cpu", causal=True)

    Process = two_processes_in_turn()

    with pytest.raises(Waiting):
        teacher_forced_metrics(model, examples, collate, 2, "cpu", causal=True, processes=Process(1))
    split = teacher_forced_metrics(model, examples, collate, 2, "cpu", causal=True, processes=Process(0))
    assert split == alone and len(Process.shares[1]) == 3  # the second process computed 3 of the 6 batches


class Waiting(Exception):
    """The other process has not given its share yet (two processes played one after the other)."""


def two_processes_in_turn():
    """A stand-in for two processes run one after the other: rank 1 gives its share and stops
    (Waiting); rank 0 then gathers both."""
    class Process:
        world, shares = 2, {}

        def __init__(self, rank):
            self.rank = rank

        def gather(self, obj):
            Process.shares[self.rank] = obj
            if len(Process.shares) < self.world:
                raise Waiting
            return [Process.shares[r] for r in range(self.world)]

    return Process


def test_the_training_clock_covers_metric_logging(tiny_model, sentiment_csv, tmp_path, monkeypatch):
    """samples/s is compared with the Trainer's, whose clock covers its logging: so does ours."""
    import time

    from hybridft.training.metrics_log import MetricsLog

    write = MetricsLog.write

    def slow_write(self, step, record):
        if "loss" in record:  # a training step's line
            time.sleep(0.3)
        return write(self, step, record)

    monkeypatch.setattr(MetricsLog, "write", slow_write)
    report, _ = train_and_load(base_recipe(tiny_model, sentiment_csv, max_steps=3), tmp_path / "run")
    assert report["stages"][0]["train_time_s"] >= 0.9
