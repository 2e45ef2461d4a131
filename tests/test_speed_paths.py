"""The fast paths: token-budget inference batches, inference on a device that runs out of memory,
predictions in input order, length-grouped training batches by default, and model.compile."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from hybridft.data.batching import epoch_batches, length_sorted_batches
from hybridft.data.collate import collator_for
from hybridft.evaluate import FittingForward, predict
from hybridft.models import load_tokenizer
from hybridft.recipe import validate_recipe
from tests.conftest import base_recipe
from tests.helpers import tiny_classifier, tokenized, train_and_load


def test_token_budget_batches_hold_every_example_once_longest_first():
    lengths = [5, 30, 12, 3, 3, 64, 7, 12, 9, 1]
    batches = length_sorted_batches(lengths, None, 40)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        longest = lengths[b[0]]
        assert longest == max(lengths[i] for i in b)
        assert len(b) == 1 or len(b) * longest <= 40  # padded size within the budget
    assert [lengths[b[0]] for b in batches] == sorted((lengths[b[0]] for b in batches), reverse=True)
    assert len(batches[-1]) > len(batches[0])  # short sentences share a batch, the longest is alone
    assert length_sorted_batches(lengths, 4, 40) == [[5, 1, 2, 7], [8, 6, 0, 3], [4, 9]]


def test_predict_without_a_batch_size_gives_the_same_logits(tiny_model, sentiment_csv):
    data = tokenized(tiny_model, base_recipe(tiny_model, sentiment_csv))
    model = tiny_classifier(tiny_model).eval()
    collator = collator_for("classification", load_tokenizer(str(tiny_model)))
    fixed, loss_fixed = predict(model, data.train, collator, 1, torch.device("cpu"), progress=False)
    auto, loss_auto = predict(model, data.train, collator, None, torch.device("cpu"), progress=False)
    np.testing.assert_allclose(np.stack(auto), np.stack(fixed), atol=1e-5)
    assert loss_auto == pytest.approx(loss_fixed, rel=1e-5)


class RunsOutOfMemory(torch.nn.Module):
    """A model that, like a full GPU, fails on batches of more than ``fits`` padded tokens, after
    allocating activations for them (8 MiB a token), which the failure's traceback holds on to."""

    def __init__(self, inner, fits: int):
        super().__init__()
        self.inner, self.fits, self.sizes = inner, fits, []
        self.failed_activations: list = []  # weak references: alive only while something holds them
        self.alive_at_retry: list[int] = []

    def forward(self, **batch):
        import weakref

        tokens = batch["input_ids"].numel()
        self.sizes.append(tokens)
        self.alive_at_retry.append(sum(ref() is not None for ref in self.failed_activations))
        if tokens > self.fits:
            activations = torch.ones(tokens, 2**21)  # a local of this frame: the traceback keeps it
            self.failed_activations.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("out of memory")
        return self.inner(**batch)


def test_a_batch_that_does_not_fit_is_halved_and_later_batches_are_cut(tiny_model, sentiment_csv):
    data = tokenized(tiny_model, base_recipe(tiny_model, sentiment_csv))
    rows = data.train[:32]
    collator = collator_for("classification", load_tokenizer(str(tiny_model)))
    small = RunsOutOfMemory(tiny_classifier(tiny_model).eval(), fits=len(rows) * 4)
    forward = FittingForward(small, collator, torch.device("cpu"), True)
    with torch.inference_mode():
        whole = FittingForward(small.inner, collator, torch.device("cpu"), True)(rows)
        out = forward(rows)
        np.testing.assert_allclose(np.stack(out[0]), np.stack(whole[0]), atol=1e-5)
        assert (out[2], out[1]) == (whole[2], pytest.approx(whole[1], rel=1e-5))
        assert forward.max_tokens < np.inf
        assert small.failed_activations and not any(small.alive_at_retry)  # freed before any retry ran
        failures = sum(size > small.fits for size in small.sizes)
        forward(rows)  # cut to the size that fitted before: no second failure
        assert sum(size > small.fits for size in small.sizes) == failures
    with torch.inference_mode(), pytest.raises(torch.OutOfMemoryError):  # several processes: no split
        FittingForward(small, collator, torch.device("cpu"), False)(rows)


def test_predict_answers_in_input_order(tiny_model, sentiment_csv, tmp_path):
    from hybridft.api import load

    report, _ = train_and_load(base_recipe(tiny_model, sentiment_csv), tmp_path / "run")
    saved = load(tmp_path / "run" / "model")
    lines = ["good", "a very long and rather dull film about nothing at all , really", "", "bad film", "great"]
    together = saved.predict(lines)
    alone = [saved.predict(line)[0] for line in lines]
    assert [r.get("text") for r in together] == lines
    assert together == alone


def test_training_batches_are_length_grouped_by_default(tiny_model, sentiment_csv):
    spec = validate_recipe(base_recipe(tiny_model, sentiment_csv)).stages[0]
    assert spec.group_by_length
    lengths = [1 + (7 * i) % 40 for i in range(640)]
    grouped = epoch_batches(lengths, 32, seed=3, group_by_length=True)
    shuffled = epoch_batches(lengths, 32, seed=3)

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    assert sorted(i for b in grouped for i in b) == list(range(640))
    assert padded(grouped) < 0.7 * padded(shuffled)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_training_matches_eager(no_dropout_model, sentiment_csv, tmp_path):
    from torch._dynamo.utils import counters

    recipe = base_recipe(no_dropout_model, sentiment_csv, max_steps=3, eval_every=3)
    eager_report, eager = train_and_load(recipe, tmp_path / "eager")
    counters.clear()
    compiled_report, compiled = train_and_load({**recipe, "model": {**recipe["model"], "compile": True}},
                                               tmp_path / "compiled")
    for name, tensor in eager.items():
        torch.testing.assert_close(compiled[name], tensor, atol=1e-4, rtol=1e-3)
    assert compiled_report["metrics"]["loss"] == pytest.approx(eager_report["metrics"]["loss"], rel=1e-4)
    assert counters["stats"]["unique_graphs"] >= 2  # training and evaluation forwards ran compiled


# A child process sets itself up as the command line does for its computing commands (run, predict,
# eval...), then mallocs, writes and frees 64 MiB twice and counts the page faults of the second
# time: glibc maps a block that large afresh each time (and unmaps it when freed) unless hybridft tuned it.
REUSE_PROBE = """
import ctypes, resource, sys
from hybridft.allocator import keep_freed_memory
from hybridft.cli import own_process
own_process()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
def use_and_free():
    block = libc.malloc(64 * 2**20)
    ctypes.memset(block, 1, 64 * 2**20)
    libc.free(block)
use_and_free()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
use_and_free()
print(keep_freed_memory(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc is tuned on glibc Linux only")
@pytest.mark.parametrize("setting", ["", "system"])
def test_freed_cpu_memory_is_reused_unless_the_system_malloc_is_asked_for(setting):
    env = {**os.environ, "HYBRIDFT_MALLOC": setting, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", REUSE_PROBE], env=env, capture_output=True, text=True, check=True)
    tuned, faults = out.stdout.split()[-2:]
    pages = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    if setting == "system":
        assert tuned == "False" and int(faults) > pages // 2  # every page mapped again
    else:
        assert tuned == "True" and int(faults) < pages // 20  # the freed pages are used again


@pytest.mark.parametrize("sharded", [False, True])
def test_whole_models_on_several_processes_split_what_does_not_fit_sharded_ones_cannot(tiny_model, sentiment_csv,
                                                                                      sharded):
    """DDP's processes each hold the whole model and evaluate their own batches: each may halve one.
    FSDP's gather weights in every forward, so every process must run as many: no split there."""
    from types import SimpleNamespace

    data = tokenized(tiny_model, base_recipe(tiny_model, sentiment_csv))
    collator = collator_for("classification", load_tokenizer(str(tiny_model)))
    small = RunsOutOfMemory(tiny_classifier(tiny_model).eval(), fits=64)
    alone = SimpleNamespace(rank=0, world=2, sharded=sharded, gather=lambda part: [part, {}])
    if sharded:
        with pytest.raises(torch.OutOfMemoryError):
            predict(small, data.train[:32], collator, 32, torch.device("cpu"), progress=False, processes=alone)
    else:
        out, _ = predict(small, data.train[:32], collator, 32, torch.device("cpu"), progress=False, processes=alone)
        assert all(o is not None for o in out) and max(small.sizes) > small.fits  # it failed, then split
