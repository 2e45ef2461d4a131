"""What ``torch.compile`` (inductor) does to one training step of the embedded MiniLM on this machine.

A plain PyTorch loop, no hybridft: AdamW (fused) steps of batch 32 on token sequences of lengths
8-40 (as length-grouped SST-2 batches are), eager against ``torch.compile(model)``, each in a fresh
process. Compiling and the first steps of each length are timed apart from the steady state:
``--steps`` steps over 8 lengths, after 3 warm-up steps and one pass over the lengths (where the
compiled side recompiles for new shapes until it marks them dynamic). Medians of ``--repeats``.

    python benchmarks/bench_compile.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

LENGTHS = (8, 12, 16, 20, 24, 28, 32, 40)


def worker(mode: str, steps: int) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification

    from hybridft.models import embedded_model_dir, quiet_transformers

    quiet_transformers()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(embedded_model_dir()), num_labels=2).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
    forward = torch.compile(model) if mode == "compiled" else model

    def step(length: int) -> None:
        ids = torch.randint(1000, 2000, (32, length))
        out = forward(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.randint(0, 2, (32,)))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    tic = time.perf_counter()
    for length in (16, 24, 13, *LENGTHS):
        step(length)
    first = time.perf_counter() - tic
    tic = time.perf_counter()
    for i in range(steps):
        step(LENGTHS[i % len(LENGTHS)])
    return {"first_s": first, "step_s": (time.perf_counter() - tic) / steps}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--worker", choices=("eager", "compiled"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps)))
        return 0
    runs: dict[str, list[dict]] = {"eager": [], "compiled": []}
    for r in range(args.repeats):
        for mode in runs:
            out = subprocess.run([sys.executable, __file__, "--worker", mode, "--steps", str(args.steps)],
                                 check=True, capture_output=True, text=True).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
            print(f"  run {r + 1} {mode:<8}: first 11 steps {runs[mode][-1]['first_s']:6.1f} s, then "
                  f"{1000 * runs[mode][-1]['step_s']:6.1f} ms/step", flush=True)
    step = {m: statistics.median(o["step_s"] for o in outs) for m, outs in runs.items()}
    first = {m: statistics.median(o["first_s"] for o in outs) for m, outs in runs.items()}
    for m in runs:
        print(f"{m:<8}: first 11 steps {first[m]:6.1f} s (median), then {1000 * step[m]:6.1f} ms/step (median)")
    print(f"compiled steady state: {step['eager'] / step['compiled']:.2f}x eager; compiling cost "
          f"{first['compiled'] - first['eager']:.0f} s more over the first 11 steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
