"""Merge methods and peft tuners on SST-2, mean and spread over 3 seeds (issue 25).

  merges  benchmarks/recipes/sst2-merge-methods.yaml: full fine-tuning on a seeded 2,000-sentence
          subset (2 epochs), then one mix stage that searches the grid of every merge method (linear,
          slerp, task arithmetic, TIES, DARE linear, DARE-TIES) on a held-out 10% of the subset. Each
          method's best point on held-out, M_fine, and the overall choice are scored on SST-2 dev, in
          the two conditions of the mixing study (benchmarks/sst2_seeds.py mix):
            standard: the subset is drawn from all of SST-2 train;
            shift:    only from training phrases of at most 8 words, tested on full dev sentences.
  tuners  benchmarks/recipes/sst2-peft-tuner.yaml: one epoch on a seeded 2,000-sentence subset with
          each of 5 peft tuners, alone and beside the top layer, and full fine-tuning and LoRA for
          reference; dev accuracy of the last weights and the trainable parameter count.

Each run is a fresh `hybridft run` process; the tables are built from the runs' report.json.

    python benchmarks/sst2_merges.py merges --runs-dir runs/merges
    python benchmarks/sst2_merges.py tuners --runs-dir runs/tuners
    python benchmarks/sst2_merges.py merges --runs-dir runs/merges --table-only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sst2_seeds import SEEDS, SST2, mean_spread, report, run, short_phrases

METHODS = ("linear", "slerp", "task_arithmetic", "ties", "dare_linear", "dare_ties")
TARGETS = "target_modules: [query, value]"
TUNERS = {  # label -> the selector entry (YAML flow), lr override or None
    "full fine-tuning (lr 1e-4)": ("{name: full}", "1.0e-4"),
    "lora r=8": (f"{{name: lora, r: 8, alpha: 16, {TARGETS}}}", None),
    "loha r=8": (f"{{name: peft, type: loha, r: 8, alpha: 16, {TARGETS}}}", None),
    "lokr r=8": (f"{{name: peft, type: lokr, r: 8, alpha: 16, {TARGETS}}}", None),
    "ia3 (key, value, FFN output)": ("{name: peft, type: ia3}", None),
    "oft, blocks of 32": (f"{{name: peft, type: oft, r: 0, oft_block_size: 32, {TARGETS}}}", None),
    "fourierft, 1,000 frequencies": (f"{{name: peft, type: fourierft, n_frequency: 1000, {TARGETS}}}", None),
}
TOP_LAYER = "{name: layers, top_k: 1, head: true}"


def merges(base: Path, table_only: bool) -> list[str]:
    conditions: dict[str, list[str]] = {"standard": [], "shift": []}
    reports: dict[str, list[dict]] = {}
    for condition in conditions:
        if condition == "shift":
            conditions[condition] = [f"data.train={short_phrases(base)}"]
        reports[condition] = []
        for seed in SEEDS:
            out = base / f"{condition}-seed{seed}"
            if not table_only:
                run("sst2-merge-methods", out, [f"seed={seed}", *conditions[condition]])
            if (r := report(out / "report.json")) is not None:
                reports[condition].append(r)
    rows = ["| model (best point on held-out) | standard: dev accuracy (%) | shift: dev accuracy (%) |",
            "|---|---|---|",
            "| M_fine | " + " | ".join(mean_spread([r["mix"]["test"]["fine_tuned"]["accuracy"] for r in reports[c]])
                                     for c in conditions) + " |"]
    for method in METHODS:
        cells = [mean_spread([r["mix"]["methods"][method]["test"]["accuracy"] for r in reports[c]]) for c in conditions]
        rows.append(f"| {method} | {' | '.join(cells)} |")
    rows.append("| chosen on held-out (best of all) | " + " | ".join(
        mean_spread([r["mix"]["test"]["chosen"]["accuracy"] for r in reports[c]]) for c in conditions) + " |")
    for c in conditions:
        points = [(r["mix"]["chosen_method"], r["mix"]["chosen_point"]) for r in reports[c]]
        best = {m: [r["mix"]["methods"][m]["point"] for r in reports[c]] for m in METHODS}
        rows.append(f"\n{c}: chosen per seed {points}; each method's best point per seed {best}")
    return rows


def tuners(base: Path, table_only: bool) -> list[str]:
    rows = ["| selector | with the top layer | dev accuracy (%) | trainable parameters |", "|---|---|---|---|"]
    for label, (entry, lr) in TUNERS.items():
        for with_layer in (False, True):
            if with_layer and not entry.startswith("{name: peft"):
                continue
            select = f"[{entry}, {TOP_LAYER}]" if with_layer else f"[{entry}]"
            name = label.split(" ")[0] + ("+top" if with_layer else "")
            values, trainable = [], None
            for seed in SEEDS:
                out = base / f"{name}-seed{seed}"
                overrides = [f"seed={seed}", f"stages.0.select={select}"] + \
                    ([f"stages.0.optimizer.lr={lr}"] if lr else [])
                if not table_only:
                    run("sst2-peft-tuner", out, overrides)
                if (r := report(out / "report.json")) is not None:
                    values.append(r["metrics"]["accuracy"])
                    trainable = r["params"]["trainable"]
            rows.append(f"| {label} | {'yes' if with_layer else 'no'} | {mean_spread(values)} | "
                        f"{f'{trainable:,}' if trainable else ''} |")
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", choices=["merges", "tuners"])
    p.add_argument("--runs-dir", default=None, help="default: runs/sst2-<study>")
    p.add_argument("--table-only", action="store_true", help="only read the report.json of finished runs")
    args = p.parse_args()
    if not SST2.is_dir():
        print(f"error: {SST2} not found (../shared/data beside the checkout)", file=sys.stderr)
        return 2
    base = Path(args.runs_dir or f"runs/sst2-{args.study}")
    print("\n".join((merges if args.study == "merges" else tuners)(base, args.table_only)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
