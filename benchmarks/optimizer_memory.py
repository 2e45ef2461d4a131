"""The memory of each optimizer entry on full fine-tuning of the embedded decoder (SmolLM2-135M): the
optimizer state held after two steps (counted tensor by tensor, GaLore's and APOLLO's projectors
included) and the gradients held at a step, then, with ``--runs``, the peak memory and samples/s of a
``hybridft run`` of each (report.json's ``peak_memory_mb``, the process's peak resident memory on
the CPU). The figures of docs/guides/optimizers.md:

    python benchmarks/optimizer_memory.py [NAME ...] [--runs OUT_FOLDER]

Needs the embedded decoder (``hybridft download smollm2``), WikiText-2 in ../shared/data for
``--runs``, and the optimizers' packages (``pip install 'hybridft[optim]'``,
``pip install --no-deps galore-torch apollo-torch``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ENTRIES = {
    "adamw": {"name": "adamw"},
    "galore_adamw": {"name": "galore_adamw", "rank": 128},
    "apollo_adamw": {"name": "apollo_adamw", "rank": 128},
    "apollo_mini": {"name": "apollo_adamw", "rank": 1, "scale_type": "tensor", "scale": 128},
    "adam_mini": {"name": "adam_mini"},
    "badam": {"name": "badam"},
}
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext2"


def tensor_bytes(value) -> int:
    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return tensor_bytes(getattr(value, "ortho_matrix", None)) if hasattr(value, "ortho_matrix") else 0


def state_and_gradients(folder: str, entry: dict) -> tuple[float, float, float]:
    """(optimizer state after two steps, gradients at a step, seconds): MiB, MiB, s."""
    from transformers import AutoModelForCausalLM

    from hybridft.recipe import validate_recipe
    from hybridft.training.optim import build_optimizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    recipe = {"name": "m", "task": "causal_lm", "data": {"train": "x.txt"},
              "stages": [{"optimizer": {**entry, "lr": 1e-5}}]}
    optimizer = build_optimizer(validate_recipe(recipe).stages[0].optimizer, model)
    stage = SimpleNamespace(state=SimpleNamespace(step=0), seed=1,
                            run=SimpleNamespace(processes=SimpleNamespace(world=1)))
    ids = torch.randint(0, model.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    for step in range(2):
        stage.state.step = step
        if hasattr(optimizer, "before_step"):  # badam: the stage's hook
            optimizer.before_step(model, stage)
        model(input_ids=ids, labels=ids).loss.backward()
        gradients = sum(tensor_bytes(p.grad) for p in model.parameters() if p.grad is not None)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    state = sum(tensor_bytes(v) for s in optimizer.state.values() for v in s.values())
    return state / 2**20, gradients / 2**20, time.perf_counter() - started


def run_recipe(name: str, entry: dict, out: Path) -> dict:
    recipe = {"name": f"smollm2-{name}", "task": "causal_lm", "model": {"name": "smollm2", "max_length": 64},
              "data": {"train": str(DATA / "valid.txt"), "validation": str(DATA / "test.txt"), "packing": True,
                       "max_train_samples": 400, "max_eval_samples": 4},
              "stages": [{"name": "full", "select": [{"name": "full"}], "optimizer": {**entry, "lr": 1e-5},
                          "max_steps": 3, "batch_size": 2, "keep_best": False}],
              "output": {"save_model": False}, "generation": {"max_new_tokens": 1}}
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(recipe))
    subprocess.run([sys.executable, "-m", "hybridft", "run", str(path), "--out", str(out / name), "--no-progress",
                    "--overwrite"], check=True)
    report = json.loads((out / name / "report.json").read_text())
    return {"peak_memory_mb": report["peak_memory_mb"], "samples_per_s": report["stages"][0]["samples_per_s"]}


def main() -> None:
    from hybridft.embedded import embedded_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", choices=[[], *ENTRIES], help="the optimizers (default: all)")
    parser.add_argument("--runs", type=Path, help="also run each with hybridft run into this folder")
    args = parser.parse_args()
    folder = str(embedded_dir("smollm2"))
    print("| optimizer | optimizer state | gradients at a step | peak memory | samples/s |\n|---|---|---|---|---|")
    for name in args.names or ENTRIES:
        entry = ENTRIES[name]
        state, gradients, _ = state_and_gradients(folder, entry)
        run = run_recipe(name, entry, args.runs) if args.runs else {}
        peak = f"{run['peak_memory_mb']:.0f} MB" if run else ""
        speed = f"{run['samples_per_s']:.3f}" if run else ""
        print(f"| `{name}` | {state:.0f} MiB | {gradients:.0f} MiB | {peak} | {speed} |", flush=True)


if __name__ == "__main__":
    main()
