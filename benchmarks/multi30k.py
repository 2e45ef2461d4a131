"""Multi30k de->en with a MiniLM-to-MiniLM encoder-decoder: selection strategies side by side.

Each strategy is a recipe run as a fresh `hybridft run` process on the same seeded subset, budget and
seed; the table is read from the runs' report.json. Test = Multi30k test_2016_flickr (1,000 pairs).
BLEU and chrF compare lower-cased, accent-stripped text (the MiniLM vocabulary is uncased).

    python benchmarks/multi30k.py --runs-dir runs/multi30k               # run what is missing + table
    python benchmarks/multi30k.py --runs-dir runs/multi30k --table-only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "multi30k"
STRATEGIES = [  # (label, recipe)
    ("full fine-tuning (encoder, decoder, new cross-attention)", "multi30k-encoder-decoder"),
    ("encoder frozen; decoder + new cross-attention trained", "multi30k-frozen-encoder"),
]


def recipe_path(name: str) -> Path:
    """A shipped recipe (recipes/) or this benchmark's research variant (benchmarks/recipes/)."""
    shipped = ROOT / "recipes" / f"{name}.yaml"
    return shipped if shipped.is_file() else ROOT / "benchmarks" / "recipes" / f"{name}.yaml"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs-dir", default="runs/multi30k")
    p.add_argument("--table-only", action="store_true")
    p.add_argument("overrides", nargs="*", help="key.path=value for every run (e.g. data.max_train_samples=2000)")
    args = p.parse_args()
    if not DATA.is_dir():
        print(f"error: {DATA} not found (../shared/data beside the checkout)", file=sys.stderr)
        return 2
    rows = ["| strategy | trainable params | test BLEU | test chrF | validation BLEU | train time (s) | samples/s |",
            "|---|---|---|---|---|---|---|"]
    for label, recipe in STRATEGIES:
        out = Path(args.runs_dir) / recipe
        if not args.table_only and not (out / "report.json").is_file():
            print(f"== {out}", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-m", "hybridft", "run", str(recipe_path(recipe)), "--out",
                            str(out), "--overwrite", "--no-progress", *args.overrides], check=True)
        if not (out / "report.json").is_file():
            rows.append(f"| {label} | (not run) | | | | | |")
            continue
        r = json.loads((out / "report.json").read_text())
        stage = r["stages"][0]
        rows.append(f"| {label} | {r['params']['trainable']:,} | {r['test_metrics']['bleu']:.2f} | "
                    f"{r['test_metrics']['chrf']:.2f} | {r['metrics']['bleu']:.2f} | {stage['train_time_s']:.0f} | "
                    f"{stage['samples_per_s']:.1f} |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
