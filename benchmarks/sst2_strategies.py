"""Compare parameter-selection strategies on SST-2 with the same data and budget (issue: hybrid selection).

Runs every shipped SST-2 strategy recipe (seeded 4,000-sentence subset of SST-2 train, one epoch or
the same number of optimizer steps, dev set for evaluation) one after another in fresh processes,
then prints a markdown table of dev accuracy, trainable parameters, wall time and peak memory from
each run's report.json.

    python benchmarks/sst2_strategies.py --runs-dir runs/sst2-strategies            # run + table
    python benchmarks/sst2_strategies.py --runs-dir runs/sst2-strategies --table-only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from parity import recipe_path

ROOT = Path(__file__).resolve().parents[1]
# (label, recipe, overrides)
STRATEGIES = [
    ("full", "sst2-full", []),
    ("layers (top-2)", "sst2-layers-top2", []),
    ("LoRA r=8 (q,k,v)", "sst2-lora", []),
    ("adapter (rf 16)", "sst2-adapter", []),
    ("importance density 0.09", "sst2-importance", ["stages.0.select.0.density=0.09"]),
    ("importance density 0.1", "sst2-importance", ["stages.0.select.0.density=0.1"]),
    ("importance density 0.3", "sst2-importance", ["stages.0.select.0.density=0.3"]),
    ("importance, density chosen on held-out", "sst2-importance-cv", []),
    ("union: LoRA (q,v) + top layer + LayerNorms", "sst2-union", []),
    ("three-step: full -> top-2 -> adapter", "sst2-three-step", []),
    ("combined loss (groups: full + top-2 + adapter)", "sst2-combined-loss", []),
]


def run_dir(base: Path, recipe: str, overrides: list[str]) -> Path:
    suffix = "-".join(o.split("=")[-1] for o in overrides)
    return base / (recipe + (f"-{suffix}" if suffix else ""))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs-dir", default="runs/sst2-strategies")
    p.add_argument("--table-only", action="store_true", help="only read existing report.json files")
    args = p.parse_args()
    base = Path(args.runs_dir)
    if not args.table_only:
        for label, recipe, overrides in STRATEGIES:
            out = run_dir(base, recipe, overrides)
            print(f"== {label}: {out}", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-m", "hybridft", "run", str(recipe_path(recipe)),
                            "--out", str(out), "--overwrite", "--no-progress", *overrides], check=True)
    rows = ["| strategy | dev accuracy | trainable params | % of total | wall time (s) | train samples/s | peak memory (MB) |",
            "|---|---|---|---|---|---|---|"]
    for label, recipe, overrides in STRATEGIES:
        report_file = run_dir(base, recipe, overrides) / "report.json"
        if not report_file.is_file():
            rows.append(f"| {label} | (not run) | | | | | |")
            continue
        r = json.loads(report_file.read_text())
        trainable, total = r["params"]["trainable"], r["params"]["total"]
        time_s = sum(s["train_time_s"] for s in r["stages"])
        samples = sum(s["samples_per_s"] * s["train_time_s"] for s in r["stages"])
        rows.append(f"| {label} | {r['metrics']['accuracy']:.4f} | {trainable:,} | {100 * trainable / total:.2f}% | "
                    f"{r['wall_time_s']:.0f} | {samples / max(time_s, 1e-9):.1f} | {r['peak_memory_mb']:.0f} |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
