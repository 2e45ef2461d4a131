"""What keeping freed memory (``hybridft.allocator``) does to hybridft's own training on this machine.

hybridft's full fine-tuning of the embedded MiniLM on ``--samples`` seeded SST-2 sentences (the
recipe of ``bench_vs_trainer.py``, length-grouped batches of 32) for ``--epochs`` epochs, in fresh
processes, in turn: as it comes (malloc tuned) and with ``HYBRIDFT_MALLOC=system``. Per epoch the
samples/s of its training steps (from the run's metrics log); per run the minor page faults and the
peak resident memory of the whole process. Medians over ``--repeats``.

    python benchmarks/bench_malloc.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import bench_vs_trainer

MODES = {"kept": "", "system": "system"}  # name -> HYBRIDFT_MALLOC


def epoch_rates(metrics: Path, steps_per_epoch: int, batch_size: int) -> list[float]:
    """Each epoch's samples/s, from the log's running samples/s at the epoch's last step."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    running = [r["samples_per_s"] for r in rows if "samples_per_s" in r]
    rates, done, spent = [], 0, 0.0
    for end in range(steps_per_epoch, len(running) + 1, steps_per_epoch):
        samples = end * batch_size  # every step is a full batch when the samples divide evenly
        seconds = samples / running[end - 1]
        rates.append((samples - done) / (seconds - spent))
        done, spent = samples, seconds
    return rates


def worker(samples: int, epochs: int) -> dict:
    from hybridft.allocator import keep_freed_memory

    keep_freed_memory()  # as the command line does for its own process (not with HYBRIDFT_MALLOC=system)
    args = bench_vs_trainer.parse_args(["--samples", str(samples), "--strategies", "full"])
    data = args.data_dir / "sst2"
    recipe = bench_vs_trainer.make_recipe(args, data / "train.tsv", data / "dev.tsv", "full")
    recipe.stages[0].epochs = epochs
    with tempfile.TemporaryDirectory() as tmp:
        bench_vs_trainer.run_hybridft(recipe, Path(tmp))
        rates = epoch_rates(Path(tmp) / "run" / "metrics.jsonl", samples // args.batch_size, args.batch_size)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"rates": rates, "faults": usage.ru_minflt, "peak_mb": usage.ru_maxrss / 1024}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--samples", type=int, default=1024, help="a multiple of the batch size, 32")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.samples % 32:
        p.error("--samples must be a multiple of 32")
    if args.worker:
        print(json.dumps(worker(args.samples, args.epochs)))
        return 0
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for r in range(args.repeats):
        for mode, setting in MODES.items():
            env = {**os.environ, "HYBRIDFT_MALLOC": setting, "CUDA_VISIBLE_DEVICES": ""}
            out = subprocess.run([sys.executable, __file__, "--worker", "--samples", str(args.samples),
                                  "--epochs", str(args.epochs)], env=env, check=True, capture_output=True,
                                 text=True).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
            print(f"  run {r + 1} {mode:<6}: samples/s by epoch "
                  + ", ".join(f"{x:.1f}" for x in runs[mode][-1]["rates"]), flush=True)
    print(f"\nmalloc | samples/s by epoch (medians of {args.repeats}) | page faults | peak MiB")
    for mode, outs in runs.items():
        rates = [statistics.median(o["rates"][e] for o in outs) for e in range(args.epochs)]
        print(f"{mode:<6} | {', '.join(f'{x:.1f}' for x in rates)} | "
              f"{statistics.median(o['faults'] for o in outs):,.0f} | {statistics.median(o['peak_mb'] for o in outs):,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
