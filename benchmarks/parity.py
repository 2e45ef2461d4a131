"""Bit-for-bit parity of shipped recipes across a change of hybridft's code.

Runs each recipe (shortened by overrides so that the whole set takes minutes, the same overrides on
both sides) as a fresh `hybridft run` process of the checkout it is started from, and records the
validation metrics, every stage's evaluations and the SHA-256 of the saved model's weights. Run it
in a checkout of the code before the change with ``--save before.json``, then in the changed one
with ``--against before.json``: it exits 1 and names every difference.

    python benchmarks/parity.py --runs-dir /tmp/parity-old --save /tmp/before.json   # old checkout
    python benchmarks/parity.py --runs-dir /tmp/parity-new --against /tmp/before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["data.max_train_samples=300", "data.max_eval_samples=200"]
POOL = ["data.unlabeled.max_samples=300"]
TASKS = [f"tasks.{i}.data.{key}" for i in range(3) for key in ("max_train_samples=200", "max_eval_samples=100")]
# label -> (recipe under recipes/ or benchmarks/recipes/, overrides that keep it short)
CASES = {name: (name, SHORT) for name in (
    "sst2-full", "sst2-lora", "sst2-adapter", "sst2-layers-top2", "sst2-importance", "sst2-importance-cv",
    "sst2-union", "sst2-combined-loss", "sst2-l2sp", "sst2-mix", "sst2-lp-ft", "sst2-three-step",
    "sst2-gradual-unfreezing")}
CASES.update({name: (name, SHORT + POOL) for name in (
    "sst2-mix-distill", "sst2-dapt-contrastive", "sst2-500-pseudo-smart", "sst2-500-pseudo-mlm",
    "sst2-500-noisy-student-mean-2-rounds")})
CASES.update({
    # accumulation, early stopping, length grouping and evaluation inside an epoch on one run
    "sst2-full-accum-early-stop": ("sst2-full", SHORT + ["stages.0.grad_accum_steps=2", "stages.0.eval_every=3",
                                                       "stages.0.early_stopping.patience=1",
                                                       "stages.0.group_by_length=true"]),
    "mrpc-full": ("mrpc-full", SHORT + ["stages.0.epochs=1"]),
    "conll2003-ner": ("conll2003-ner", SHORT),
    "multitask-sst2-mrpc-conll": ("multitask-sst2-mrpc-conll", TASKS + ["stages.0.epochs=1"]),
    "wikitext2-causal-lm": ("wikitext2-causal-lm", ["data.max_train_samples=200", "data.max_eval_samples=50",
                                                    "stages.0.epochs=1"]),
})


def recipe_path(name: str) -> Path:
    for folder in (ROOT / "recipes", ROOT / "benchmarks" / "recipes"):
        matches = sorted(folder.rglob(f"{name}.yaml")) if folder.is_dir() else []
        if matches:
            return matches[0]
    raise SystemExit(f"no recipe {name}.yaml under recipes/ or benchmarks/recipes/")


def run_case(label: str, runs_dir: Path) -> dict:
    name, overrides = CASES[label]
    out = runs_dir / label
    cmd = [sys.executable, "-m", "hybridft", "run", str(recipe_path(name)), "--out", str(out), "--overwrite",
           "--no-progress", *overrides]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    report = json.loads((out / "report.json").read_text())
    weights = sorted((out / "model").rglob("*.safetensors"))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in weights)).hexdigest()
    return {"metrics": report["metrics"], "test_metrics": report["test_metrics"], "model_sha256": digest,
            "evaluations": [s["evaluations"] for s in report["stages"]], "mix": (report.get("mix") or {}).get("curve")}


def differences(before: dict, after: dict) -> list[str]:
    problems = []
    for name in sorted(set(before) | set(after)):
        if name not in before or name not in after:
            problems.append(f"{name}: only in {'after' if name in after else 'before'}")
            continue
        for key in sorted(set(before[name]) | set(after[name])):
            if before[name].get(key) != after[name].get(key):
                problems.append(f"{name}: {key} differs: {before[name].get(key)} -> {after[name].get(key)}")
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs-dir", type=Path, required=True)
    p.add_argument("--only", help="comma-separated case names (default: all)")
    p.add_argument("--save", type=Path, help="write the results here")
    p.add_argument("--against", type=Path, help="compare with results saved by --save")
    args = p.parse_args()
    names = args.only.split(",") if args.only else list(CASES)
    results = {}
    for name in names:
        results[name] = run_case(name, args.runs_dir)
        print(f"{name}: {results[name].get('model_sha256', results[name].get('error'))[:16]} "
              f"{results[name].get('metrics', '')}", flush=True)
    if args.save:
        args.save.write_text(json.dumps(results, indent=1))
    if args.against:
        before = json.loads(args.against.read_text())
        problems = differences({k: v for k, v in before.items() if k in results}, results)
        print("\n".join(problems) if problems else f"identical: {len(results)} recipes, bit for bit")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
