"""What keeping freed memory (``hybridft.allocator``) does to a CPU training loop on this machine.

A plain PyTorch loop, no hybridft training code: the embedded MiniLM, full fine-tuning with fused
AdamW and grad-norm clipping, batches of 32 real SST-2 sentences (``--samples`` seeded sentences,
sorted by length and cut into batches, as length-grouped batches are), ``--epochs`` epochs. Two
fresh processes per repeat: glibc's malloc as it is, and after ``keep_freed_memory()``. Per epoch:
samples/s, minor page faults, resident memory at its end and the peak so far. Medians over
``--repeats`` of each epoch's figures.

    python benchmarks/bench_malloc.py --repeats 3
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "sst2" / "train.tsv"
MODES = ("system", "kept")


def sorted_batches(samples: int, batch_size: int = 32) -> list[list[list[int]]]:
    from transformers import AutoTokenizer

    from hybridft.models import embedded_model_dir

    with open(DATA, encoding="utf-8") as f:
        sentences = [row["sentence"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    picked = random.Random(0).sample(sentences, samples)
    ids = sorted((tokenizer(s, truncation=True, max_length=64)["input_ids"] for s in picked), key=len, reverse=True)
    return [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]


def padded(batch: list[list[int]]):
    import torch

    ids = torch.zeros(len(batch), max(map(len, batch)), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(batch):
        ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
    return ids, mask


def resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(mode: str, samples: int, epochs: int) -> list[dict]:
    import torch
    from transformers import AutoModelForSequenceClassification

    from hybridft.allocator import keep_freed_memory
    from hybridft.models import embedded_model_dir, quiet_transformers

    if mode == "kept" and not keep_freed_memory():
        sys.exit("error: malloc could not be tuned here (not glibc Linux, or HYBRIDFT_MALLOC=system)")
    quiet_transformers()
    torch.manual_seed(0)
    batches = sorted_batches(samples)
    model = AutoModelForSequenceClassification.from_pretrained(str(embedded_model_dir()), num_labels=2).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
    epochs_seen = []
    for _ in range(epochs):
        tic, faults = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for batch in batches:
            ids, mask = padded(batch)
            model(input_ids=ids, attention_mask=mask, labels=torch.zeros(len(batch), dtype=torch.long)).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        epochs_seen.append({"samples_per_s": samples / (time.perf_counter() - tic),
                            "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults,
                            "resident_mb": resident_mb(),
                            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    return epochs_seen


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.samples, args.epochs)))
        return 0
    if not DATA.is_file():
        sys.exit(f"error: {DATA} not found (../shared/data beside the repository)")
    runs: dict[str, list[list[dict]]] = {m: [] for m in MODES}
    for r in range(args.repeats):
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, "--worker", mode, "--samples", str(args.samples),
                                  "--epochs", str(args.epochs)], check=True, capture_output=True, text=True).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
            print(f"  run {r + 1} {mode:<6}: samples/s by epoch "
                  + ", ".join(f"{e['samples_per_s']:.1f}" for e in runs[mode][-1]), flush=True)
    print(f"\nmode   | epoch | samples/s | page faults | resident MiB | peak MiB   (medians of {args.repeats})")
    for mode in MODES:
        for epoch in range(args.epochs):
            med = {k: statistics.median(run[epoch][k] for run in runs[mode]) for k in runs[mode][0][0]}
            print(f"{mode:<6} | {epoch + 1:>5} | {med['samples_per_s']:9.1f} | {med['faults']:11,.0f} | "
                  f"{med['resident_mb']:12,.0f} | {med['peak_mb']:8,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
