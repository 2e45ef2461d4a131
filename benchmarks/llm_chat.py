"""SmolLM2-135M-Instruct as a chat model (issue 32): SST-2 and Multi30k de->en chat fine-tuning by
strategy, and hybridft's training loop against a plain transformers + peft loop.

Parts (``--parts``, run in this order; every run a fresh process, skipped when its report.json exists):
  sst2   recipes/chat-sft.yaml (each SST-2 row a conversation), ``--train`` seeded training rows, 1 epoch,
         batch 8, max_length 128, ``--eval`` dev rows (872: all of dev), per strategy and seed. Exact match
         before training (the stage's start_metrics: the zero-shot model, the same for every strategy) and
         after (the trained weights, keep_best off).
  mt     recipes/multi30k-chat-translation.yaml (LoRA on every projection, as shipped) and full fine-tuning,
         ``--mt-train`` pairs, ``--mt-eval`` dev and test pairs (seeded subsets); BLEU/chrF before (zero-shot)
         and after on dev, test BLEU/chrF from test_metrics. The zero-shot model's test scores come from
         a run whose validation split is the test split (the same seeded pairs): its start_metrics.
  speed  LoRA r 16 (alpha 32, q_proj/v_proj) on the SST-2 conversations, ``--steps`` optimizer steps, three
         sides one after another: hybridft as it comes (length-grouped batches), hybridft with plain
         shuffled batches (group_by_length false: the batches a plain loop makes), and the plain loop.

What each side of ``speed`` clocks (the training steps only, the same work):
  hybridft  the stage's samples_per_s from report.json: samples / train_time_s, the time of the optimizer
            steps (collation, forward, backward, grad-norm clip, AdamW and scheduler step, loss logging);
            loading, tokenisation and evaluation are outside it.
  plain     time.perf_counter() around its loop of ``--steps`` steps: DataLoader collation (shuffled,
            padded to the batch's longest), forward (in bf16 autocast with --dtype bfloat16), backward, clip_grad_norm_ 1.0, fused
            AdamW step (lr 5e-4, no weight decay), linear schedule with 5% warmup, zero_grad. Its examples are
            hybridft's own encoding (load_generative_data: the chat template, loss on the answer and its
            <|im_end|>), the weights as hybridft holds them: the base in --dtype, LoRA weights and AdamW fp32.
  Peak RSS  ru_maxrss of each process (loading and, for hybridft, its short evaluations included).
dtype (``--dtype``, every run and the plain loop): float32 by default. With ``bfloat16`` (model.dtype: the
frozen base held in bf16, the forward in bf16 autocast, trained weights and AdamW state fp32), ``--fp32-control``
also scores the zero-shot model by a one-step fp32 run: start_metrics then come from inside the stage (bf16).
The zero-shot model is scored once, by the first run (the others set ``stages.0.evaluate_start=false``).

Samples/s depend on the machine's other load. The script measures it for each run: the CPU time the
whole machine spent (/proc/stat) minus the run's own (its process tree's), over the run's wall time, in
cores. A run beside which other jobs took more than 0.1 of a core on average is marked ``(busy)``: its
samples/s are not for publication.

    python benchmarks/llm_chat.py --runs-dir runs/llm-chat --json runs/llm-chat/results.json
    python benchmarks/llm_chat.py --parts speed --repeats 3 --dtype bfloat16 --runs-dir runs/llm  # medians of 3
    python benchmarks/llm_chat.py --train 16 --eval 16 --mt-train 16 --mt-eval 8 --steps 2 --runs-dir /tmp/t  # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAT, MT = ROOT / "recipes" / "chat-sft.yaml", ROOT / "recipes" / "multi30k-chat-translation.yaml"
LORA_QV = "[{name: lora, r: 16, alpha: 32, target_modules: [q_proj, v_proj]}]"
SST2 = {  # label -> overrides of chat-sft.yaml
    "lora": [f"stages.0.select={LORA_QV}", "stages.0.optimizer.lr=5e-4"],
    "full": ["stages.0.select=[{name: full}]", "stages.0.optimizer.lr=5e-5"],
    "lora+top1": ["stages.0.select=[{name: lora, r: 16, alpha: 32}, {name: layers, top_k: 1}]",
                  "stages.0.optimizer.lr=5e-4"],
    "importance": ["stages.0.select=[{name: importance, density: 0.1, batches: 16}]", "stages.0.optimizer.lr=5e-5"],
    # issue 36: LISA (2 of the 30 layers at a time, drawn every 25 steps; the tied embeddings/LM head always),
    # Spectrum (the top 25% of each module type by SNR), and LoRA beside LISA's whole layers (the embeddings
    # and LM head frozen, as beside LoRA + top layer)
    "lisa": ["stages.0.select=[{name: lisa, layers: 2, every: 25}]", "stages.0.optimizer.lr=5e-5"],
    "spectrum": ["stages.0.select=[{name: spectrum, top_fraction: 0.25}]", "stages.0.optimizer.lr=5e-5"],
    "lora+lisa": [f"stages.0.select=[{LORA_QV[1:-1]}, {{name: lisa, layers: 2, every: 25, embeddings: false, head: false}}]",
                  "stages.0.optimizer.lr=5e-4"],
}
ONE_SEED = {"importance"}  # issue 32: 3 seeds for LoRA, full and LoRA + top layer, 1 for the others
MT_RUNS = {"lora": ["stages.0.optimizer.lr=5e-4"],
           "full": ["stages.0.select=[{name: full}]", "stages.0.optimizer.lr=5e-5",
                    "stages.0.evaluate_start=false"],  # the zero-shot model is scored on dev once, in the lora run
           # the zero-shot model on the test pairs: the test split as validation, scored before the one step
           "zero-shot-test": [f"data.validation={ROOT.parent / 'shared/data/multi30k/test_2016_flickr.{lang}.gz'}",
                              "data.test=null", "stages.0.max_steps=1"]}
COMMON = ["stages.0.keep_best=false", "output.save_model=false"]
BATCH, BUSY_LOAD = 8, 0.1  # BUSY_LOAD: cores other jobs used on average during a run


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs-dir", type=Path, default=Path("runs/llm-chat"))
    p.add_argument("--parts", default="sst2,mt,speed", help="comma-separated: sst2, mt, speed")
    p.add_argument("--strategies", default="lora,full,lora+top1,importance", help=f"sst2 part: {', '.join(SST2)}")
    p.add_argument("--train", type=int, default=1000, help="SST-2 training conversations")
    p.add_argument("--eval", type=int, default=872, help="SST-2 dev conversations (872: all)")
    p.add_argument("--seeds", type=int, default=1, help="seeds 1..N per SST-2 strategy")
    p.add_argument("--mt-train", type=int, default=1000, help="Multi30k training pairs")
    p.add_argument("--mt-eval", type=int, default=200, help="Multi30k dev pairs, and test pairs")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="model.dtype of every run")
    p.add_argument("--repeats", type=int, default=1, help="speed part: rounds of the three sides (medians)")
    p.add_argument("--fp32-control", action="store_true",
                   help="with --dtype bfloat16: also score the zero-shot model in fp32 (a one-step fp32 run)")
    p.add_argument("--steps", type=int, default=None, help="speed part: optimizer steps (default one epoch of --train)")
    p.add_argument("--table-only", action="store_true", help="only read the runs already there")
    p.add_argument("--json", type=Path, default=None, help="also write every number to this file")
    p.add_argument("--plain-worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.parts = [x for x in args.parts.split(",") if x]
    args.strategies = [x for x in args.strategies.split(",") if x]
    bad = [x for x in args.parts if x not in ("sst2", "mt", "speed")] + [x for x in args.strategies if x not in SST2]
    if bad:
        p.error(f"unknown part or strategy: {bad[0]}")
    if min(args.train, args.eval, args.seeds, args.mt_train, args.mt_eval, args.repeats, args.steps or 1) < 1:
        p.error("sizes, seeds and steps must be at least 1")
    args.steps = args.steps or math.ceil(args.train / BATCH)
    return args


def common(args) -> list[str]:
    return [*COMMON, f"model.dtype={args.dtype}"]


def sst2_overrides(args, seed: int) -> list[str]:
    return [*common(args), f"seed={seed}", f"data.max_train_samples={args.train}", f"data.max_eval_samples={args.eval}"]


def speed_overrides(args, grouped: bool) -> list[str]:
    return [*sst2_overrides(args, 1), *SST2["lora"], "data.max_eval_samples=8", f"stages.0.max_steps={args.steps}",
            f"stages.0.group_by_length={str(grouped).lower()}", "stages.0.evaluate_start=false"]


def hybridft_command(recipe: Path, out: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "hybridft", "run", str(recipe), "--out", str(out), "--overwrite", "--no-progress",
            *overrides]


def machine_cpu_s() -> float:
    """CPU seconds every process on the machine has used since boot (/proc/stat's busy jiffies)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(command: list[str], result: Path, args) -> dict | None:
    """Run ``command`` (which writes ``result``) unless ``result`` is there; its JSON with the load
    average before the start, or None when it is missing."""
    note = result.parent / "bench.json"
    if not result.is_file() and not args.table_only:
        machine, own = machine_cpu_s(), children_cpu_s()
        print("$ " + " ".join(f"'{c}'" if " " in c else c for c in command), file=sys.stderr, flush=True)
        tic = time.perf_counter()
        if subprocess.run(command).returncode:  # a failed run is a "(not run)" row; the others still run
            print(f"error: the run for {result} failed", file=sys.stderr, flush=True)
            return None
        wall = time.perf_counter() - tic
        others = (machine_cpu_s() - machine) - (children_cpu_s() - own)  # cores the rest of the machine used
        note.write_text(json.dumps({"other_load": max(others, 0.0) / wall, "process_wall_s": wall}))
    if not result.is_file():
        return None
    return {**json.loads(result.read_text()), **(json.loads(note.read_text()) if note.is_file() else {})}


def speed_cell(r: dict, key: str = "samples_per_s") -> str:
    value = r["stages"][0][key] if "stages" in r else r[key]
    return f"{value:.2f}" + (" (busy)" if r.get("other_load", math.inf) > BUSY_LOAD else "")


def sst2_part(args) -> tuple[list[str], dict]:
    found, zero_shot = {}, None
    # every strategy's seed 1 first, then seed 2...: a run cut short still has one row per strategy
    runs = [(label, seed) for seed in range(1, args.seeds + 1) for label in args.strategies
            if seed == 1 or label not in ONE_SEED]
    for label, seed in runs:
        out = args.runs_dir / "sst2" / f"{label}-seed{seed}"
        # the model before training is the same for every run: only the first one scores it (zero-shot)
        start_eval = [] if (label, seed) == runs[0] else ["stages.0.evaluate_start=false"]
        r = run_once(hybridft_command(CHAT, out, [*sst2_overrides(args, seed), *SST2[label], *start_eval]),
                     out / "report.json", args)
        if r is None:
            continue
        start = (r["stages"][0]["start_metrics"] or {}).get("exact_match")
        zero_shot = start if zero_shot is None else zero_shot
        found[f"{label}-seed{seed}"] = {
            "strategy": label, "seed": seed, "exact_match_after": r["metrics"]["exact_match"],
            "samples_per_s": r["stages"][0]["samples_per_s"], "trainable": r["params"]["trainable"],
            "peak_memory_mb": r["peak_memory_mb"], "step_memory_mb": max(r["stages"][0]["step_memory_mb_per_process"]),
            "final_unmerged": r["stages"][0]["evaluations"][-1]["exact_match"], "wall_time_s": r["wall_time_s"],
            "other_load": r.get("other_load"), "busy": r.get("other_load", math.inf) > BUSY_LOAD}
    rows = sst2_rows(args, found)
    if zero_shot is not None:
        rows.append(f"\nzero-shot exact match (SmolLM2-135M-Instruct, {args.eval} dev conversations, {args.dtype}): {zero_shot:.4f}")
    control = args.fp32_control and args.dtype != "float32"
    found["zero-shot"] = {args.dtype: zero_shot, "float32": zero_shot_fp32(args) if control else None}
    if found["zero-shot"]["float32"] is not None:
        rows.append(f"zero-shot exact match evaluated in fp32 (control): {found['zero-shot']['float32']:.4f}")
    return rows, found


def sst2_rows(args, found: dict) -> list[str]:
    """One row per run, by strategy, then one per strategy: the mean and SD over its seeds."""
    rows = ["| strategy | seed | trainable params | exact match | at the stage's end | train samples/s | "
            "memory at the steps (MB) | peak memory (MB) | wall time (s) |", "|---|---|---|---|---|---|---|---|---|"]
    summary = ["| strategy | seeds | exact match (mean ± SD) | median train samples/s | memory at the steps (MB) | "
               "peak memory (MB) |", "|---|---|---|---|---|---|"]
    for label in args.strategies:
        mine = [f for f in found.values() if f["strategy"] == label]
        for f in mine:
            busy = " (busy)" if f["busy"] else ""
            rows.append(f"| {label} | {f['seed']} | {f['trainable']:,} | {f['exact_match_after']:.4f} | "
                        f"{f['final_unmerged']:.4f} | {f['samples_per_s']:.2f}{busy} | {f['step_memory_mb']:.0f} | "
                        f"{f['peak_memory_mb']:.0f} | {f['wall_time_s']:.0f} |")
        if mine:
            scores = [f["exact_match_after"] for f in mine]
            spread = f" ± {statistics.stdev(scores):.4f}" if len(scores) > 1 else ""
            speed = statistics.median(f["samples_per_s"] for f in mine)
            busy = " (busy)" if any(f["busy"] for f in mine) else ""
            summary.append(f"| {label} | {len(mine)} | {statistics.mean(scores):.4f}{spread} | {speed:.2f}{busy} | "
                           f"{max(f['step_memory_mb'] for f in mine):.0f} | {max(f['peak_memory_mb'] for f in mine):.0f} |")
    return [*rows, "", *summary]


def zero_shot_fp32(args) -> float | None:
    """With --dtype bfloat16: the zero-shot model evaluated in fp32 too, by a one-step fp32 run."""
    out = args.runs_dir / "sst2" / "zero-shot-fp32"
    overrides = [*sst2_overrides(args, 1), *SST2["lora"], "model.dtype=float32", "stages.0.max_steps=1"]
    r = run_once(hybridft_command(CHAT, out, overrides), out / "report.json", args)
    return None if r is None else r["stages"][0]["start_metrics"]["exact_match"]


def mt_part(args) -> tuple[list[str], dict]:
    rows = ["| model | dev BLEU | dev chrF | test BLEU | test chrF | train samples/s | peak memory (MB) | wall time (s) |",
            "|---|---|---|---|---|---|---|---|"]
    found = {}
    for label, overrides in MT_RUNS.items():
        out = args.runs_dir / "mt" / label
        sizes = [f"data.max_train_samples={args.mt_train}", f"data.max_eval_samples={args.mt_eval}"]
        r = run_once(hybridft_command(MT, out, [*common(args), *sizes, *overrides]), out / "report.json", args)
        if r is None:
            rows.append(f"| {label} | (not run or failed) | | | | | | |")
            continue
        start, dev, test = r["stages"][0]["start_metrics"], r["metrics"], r["test_metrics"] or {}
        if label == "zero-shot-test":
            rows.append(f"| zero-shot, test pairs | | | {start['bleu']:.2f} | {start['chrf']:.2f} | | | |")
            found["zero-shot"] = {**found.get("zero-shot", {}), "test_bleu": start["bleu"], "test_chrf": start["chrf"]}
            continue
        if label == "lora":  # the zero-shot row: the model before any training, on dev (no test score for it)
            rows.append(f"| zero-shot | {start['bleu']:.2f} | {start['chrf']:.2f} | | | | | |")
            found["zero-shot"] = {"dev_bleu": start["bleu"], "dev_chrf": start["chrf"]}
        found[label] = {"dev_bleu": dev["bleu"], "dev_chrf": dev["chrf"], "test_bleu": test.get("bleu"),
                        "test_chrf": test.get("chrf"), "samples_per_s": r["stages"][0]["samples_per_s"],
                        "peak_memory_mb": r["peak_memory_mb"], "wall_time_s": r["wall_time_s"]}
        rows.append(f"| {label} | {dev['bleu']:.2f} | {dev['chrf']:.2f} | {test.get('bleu', math.nan):.2f} | "
                    f"{test.get('chrf', math.nan):.2f} | {speed_cell(r)} | {r['peak_memory_mb']:.0f} | {r['wall_time_s']:.0f} |")
    return rows, found


def speed_sides(args, repeat: int) -> list[tuple[str, list[str], Path]]:
    """The three sides' commands and result files for one round (round 0 in the plain folder names)."""
    base, suffix = args.runs_dir / "speed", f"-r{repeat}" if repeat else ""
    plain = base / f"plain{suffix}" / "result.json"
    return [("hybridft (length-grouped batches)", hybridft_command(CHAT, base / f"hybridft{suffix}", speed_overrides(args, True)),
             base / f"hybridft{suffix}" / "report.json"),
            ("hybridft (shuffled batches)", hybridft_command(CHAT, base / f"hybridft-shuffled{suffix}",
                                                             speed_overrides(args, False)),
             base / f"hybridft-shuffled{suffix}" / "report.json"),
            ("plain transformers + peft loop", [sys.executable, __file__, "--train", str(args.train), "--dtype", args.dtype,
                                                "--steps", str(args.steps), "--plain-worker", str(plain)], plain)]


def speed_part(args) -> tuple[list[str], dict]:
    """``--repeats`` rounds of the three sides in turn, each run a fresh process; medians per side."""
    rows = [f"LoRA r 16 (q_proj, v_proj), {args.steps} steps of batch {BATCH}, SST-2 conversations, max_length 128, "
            f"model.dtype {args.dtype}, median of {args.repeats} run(s) per side", "",
            "| side | samples/s | per run | peak RSS (MB) | train time (s) |", "|---|---|---|---|---|"]
    runs: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):
        for label, command, out in speed_sides(args, repeat):
            r = run_once(command, out, args)
            if r is not None:
                flat = {k: r["stages"][0][k] for k in ("samples_per_s", "train_time_s")} if "stages" in r else r
                runs.setdefault(label, []).append({"samples_per_s": flat["samples_per_s"], "train_time_s": flat["train_time_s"],
                                                   "peak_memory_mb": r["peak_memory_mb"], "other_load": r.get("other_load")})
    found = {}
    for label, *_ in speed_sides(args, 0):
        mine = runs.get(label, [])
        if not mine:
            rows.append(f"| {label} | (not run or failed) | | | |")
            continue
        busy = " (busy)" if any((m["other_load"] is None or m["other_load"] > BUSY_LOAD) for m in mine) else ""
        found[label] = {key: statistics.median(m[key] for m in mine) for key in ("samples_per_s", "train_time_s", "peak_memory_mb")}
        found[label]["runs"] = mine
        per_run = ", ".join(f"{m['samples_per_s']:.2f}" for m in mine)
        rows.append(f"| {label} | {found[label]['samples_per_s']:.2f}{busy} | {per_run} | {found[label]['peak_memory_mb']:.0f} | "
                    f"{found[label]['train_time_s']:.0f} |")
    return rows, found


def plain_batches(examples, pad_id: int, steps: int):
    """Shuffled batches of hybridft's encoded examples, padded to each batch's longest, for ``steps`` steps."""
    import torch

    def collate(chunk):
        width = max(len(e["input_ids"]) for e in chunk)
        pad = lambda key, value: torch.tensor([e[key] + [value] * (width - len(e[key])) for e in chunk])  # noqa: E731
        return {"input_ids": pad("input_ids", pad_id), "attention_mask": pad("attention_mask", 0), "labels": pad("labels", -100)}

    loader = torch.utils.data.DataLoader(examples, batch_size=BATCH, shuffle=True, collate_fn=collate,
                                         generator=torch.Generator().manual_seed(1))
    done = 0
    while True:
        for batch in loader:
            if done == steps:
                return
            done += 1
            yield batch


def plain_worker(args) -> int:
    """The plain side: transformers + peft, a hand-written loop, hybridft only for reading the data."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    from hybridft.generative.data import load_generative_data
    from hybridft.models import embedded_dir
    from hybridft.recipe import load_recipe

    recipe, folder = load_recipe(CHAT, sst2_overrides(args, 1))
    source = embedded_dir("smollm2")
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    examples = load_generative_data(recipe, folder, tokenizer).train
    torch.manual_seed(1)
    bf16 = args.dtype == "bfloat16"  # as hybridft: frozen base in bf16 and the forward in bf16 autocast
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, args.dtype))
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    trained = [p for p in model.parameters() if p.requires_grad]
    for p in trained:  # peft already keeps adapters fp32 (autocast_adapter_dtype); made sure, as hybridft does
        p.data = p.data.float()
    optimizer = torch.optim.AdamW(trained, lr=5e-4, weight_decay=0.0, fused=True)
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, math.ceil(0.05 * args.steps), args.steps)
    model.train()
    samples, tic = 0, time.perf_counter()
    for batch in plain_batches(examples, tokenizer.pad_token_id, args.steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # one region per step: fresh casts
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        samples += len(batch["input_ids"])
    train_time = time.perf_counter() - tic
    args.plain_worker.parent.mkdir(parents=True, exist_ok=True)
    args.plain_worker.write_text(json.dumps({
        "samples_per_s": samples / train_time, "train_time_s": train_time, "steps": args.steps, "last_loss": loss.item(),
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "threads": torch.get_num_threads()}))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.plain_worker:
        return plain_worker(args)
    parts = {"sst2": ("SST-2 as chat SFT", sst2_part), "mt": ("Multi30k de->en as chat SFT", mt_part),
             "speed": ("hybridft against a plain loop", speed_part)}
    results = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "cpus": os.cpu_count()}
    for name in args.parts:
        title, part = parts[name]
        rows, results[name] = part(args)
        print(f"\n## {title}\n\n" + "\n".join(rows), flush=True)
    print(f"\nsamples/s marked (busy): other jobs used more than {BUSY_LOAD} of a core on average during the run; "
          "not for publication.")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
