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
# recipe (under recipes/ or benchmarks/recipes/) -> overrides that keep it short
CASES = {
    "sst2-full": SHORT,
    "sst2-lora": SHORT,
    "sst2-adapter": SHORT,
    "sst2-layers-top2": SHORT,
    "sst2-importance": SHORT,
    "sst2-importance-cv": SHORT,
    "sst2-union": SHORT,
    "sst2-combined-loss": SHORT,
    "sst2-l2sp": SHORT,
    "sst2-mix": SHORT,
    "sst2-lp-ft": SHORT,
    "sst2-three-step": SHORT,
    "sst2-gradual-unfreezing": SHORT,
    "sst2-mix-distill": SHORT + POOL,
    "sst2-dapt-contrastive": SHORT + POOL,
    "sst2-500-pseudo-smart": SHORT + POOL,
    "sst2-500-pseudo-mlm": SHORT + POOL,
    "sst2-500-noisy-student-mean-2-rounds": SHORT + POOL,
}


def recipe_path(name: str) -> Path:
    for folder in (ROOT / "recipes", ROOT / "benchmarks" / "recipes"):
        matches = sorted(folder.rglob(f"{name}.yaml")) if folder.is_dir() else []
        if matches:
            return matches[0]
    raise SystemExit(f"no recipe {name}.yaml under recipes/ or benchmarks/recipes/")


def run_case(name: str, overrides: list[str], runs_dir: Path) -> dict:
    out = runs_dir / name
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
    p.add_argument("--only", help="comma-separated recipe names (default: all)")
    p.add_argument("--save", type=Path, help="write the results here")
    p.add_argument("--against", type=Path, help="compare with results saved by --save")
    args = p.parse_args()
    names = args.only.split(",") if args.only else list(CASES)
    results = {}
    for name in names:
        results[name] = run_case(name, CASES[name], args.runs_dir)
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
