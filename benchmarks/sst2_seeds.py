"""Seeded SST-2 studies of the hybrid objectives and of model mixing, mean and spread over seeds.

  semi   Semi-supervised (issue 4; the recipes are benchmarks/recipes/sst2-500-*.yaml): 500 labeled
         SST-2 training sentences; the rest of SST-2 train (10,000 sentences, none of the labeled
         ones, none of dev) is the unlabeled pool. Full fine-tuning on the labels alone against
         pseudo-labels, MLM + task, adversarial smoothness on unlabeled text, pseudo-labels +
         adversarial smoothness, and the Noisy Student variants. Dev accuracy of the last weights
         (nothing is chosen on dev).
  heldout  The semi runs' saved models scored on SST-2 training sentences that no run of the seed saw:
         at least 10 words, in none of the recipes' labeled samples or pools, not in dev. Dev
         accuracy picked which recipes were built next; these sentences picked nothing.
  mix    Mixing and distillation (issue 5): recipes/sst2-mix-distill.yaml (2,000 labeled sentences;
         choices on a held-out 10% of them; SST-2 dev as the test set) in two conditions:
           standard: the subset is drawn from all of SST-2 train;
           shift:    the subset (and the unlabeled pool) only from training phrases of at most
                     8 words (mean 4.0), evaluated on the full-length dev sentences (mean 19.5).

Each run is a fresh `hybridft run` process; the tables are built from the runs' report.json.

    python benchmarks/sst2_seeds.py semi --runs-dir runs/semi             # run + table
    python benchmarks/sst2_seeds.py semi --recipes sst2-500-noisy-student  # one row's runs, whole table
    python benchmarks/sst2_seeds.py heldout --runs-dir runs/semi          # score the finished semi runs
    python benchmarks/sst2_seeds.py mix --runs-dir runs/mix --table-only  # table of finished runs
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"
RECIPE_DIRS = (ROOT / "benchmarks" / "recipes", ROOT / "recipes")  # the sst2-500 family; sst2-mix-distill
SEEDS = (1, 2, 3)
SEMI = [  # (label, recipe, overrides)
    ("labels only (500)", "sst2-500-labels", []),
    ("+ pseudo-labels", "sst2-500-pseudo-label", []),
    ("+ MLM on unlabeled text", "sst2-500-mlm", []),
    ("+ adversarial smoothness on unlabeled text", "sst2-500-adversarial", []),
    ("+ pseudo-labels + adversarial smoothness", "sst2-500-pseudo-smart", []),
    ("+ pseudo-labels + MLM (the two that helped alone)", "sst2-500-pseudo-mlm", []),
    ("+ longer self-training (16,000 pseudo-labeled sentences seen)", "sst2-500-self-train-long", []),
    ("Noisy Student: a fresh student on gold + the teacher's labels for 20,000 full sentences",
     "sst2-500-noisy-student", []),
    ("Noisy Student, soft labels: the teacher's distribution on 20,000 full sentences, then the gold labels",
     "sst2-500-noisy-student-soft", []),
    ("Noisy Student, soft labels + input noise (15% of the student's tokens masked)",
     "sst2-500-noisy-student-soft-noise", []),
    ("Noisy Student, two rounds (soft labels + input noise; the first student teaches a second)",
     "sst2-500-noisy-student-2-rounds", []),
    ("Noisy Student taught by an ensemble of three teachers (soft labels + input noise)",
     "sst2-500-noisy-student-ensemble", []),
    ("Noisy Student, two rounds, the first taught by an ensemble of three teachers",
     "sst2-500-noisy-student-ensemble-2-rounds", []),
    ("Noisy Student taught by a mixed ensemble (three full fine-tunes + a LoRA teacher), two passes over the pool",
     "sst2-500-noisy-student-mixed-ensemble", []),
    ("Noisy Student taught by an ensemble of three teachers trained with task + 0.1·MLM on the pool",
     "sst2-500-noisy-student-mlm-ensemble", []),
    ("Noisy Student taught by an ensemble of three teachers, a patient student (three passes over the pool)",
     "sst2-500-noisy-student-ensemble-patient", []),
    ("Noisy Student taught by an ensemble of three teachers, the pool grouped by length (one pass)",
     "sst2-500-noisy-student-ensemble", ["stages.3.group_by_length=true"]),
    ("Noisy Student taught by an ensemble of five teachers (soft labels + input noise)",
     "sst2-500-noisy-student-ensemble-5", []),
    ("Noisy Student taught by an ensemble of three mean-pooled teachers (the student reads [CLS])",
     "sst2-500-noisy-student-mean-ensemble", []),
    ("Noisy Student, two rounds, the first taught by an ensemble of three mean-pooled teachers",
     "sst2-500-noisy-student-mean-ensemble-2-rounds", []),
    ("Noisy Student, two rounds, the first student also mean-pooled, no gold epochs after the second",
     "sst2-500-noisy-student-mean-2-rounds", []),
]
MIX_ROWS = [  # (label, how to read it from report.json)
    ("M_pre + head trained on its frozen encoder", lambda r: r["mix"]["ensemble"]["test"]["pretrained_with_head"]),
    ("M_fine", lambda r: r["mix"]["test"]["fine_tuned"]),
    ("best M_mix, global alpha", lambda r: r["mix"]["test"]["global"]),
    ("best M_mix, per-layer alphas", lambda r: r["mix"]["test"]["per_layer"]),
    ("output ensemble (alpha chosen on held-out)", lambda r: r["mix"]["ensemble"]["test"]["chosen"]),
    ("learned mix", lambda r: r["mix"]["test"]["learned"]),
    ("chosen mix (best of the three on held-out)", lambda r: r["mix"]["test"]["chosen"]),
    ("distilled mix (final model)", lambda r: r["test_metrics"]),
]


def short_phrases(out_dir: Path, max_words: int = 8) -> Path:
    """SST-2 training rows of at most ``max_words`` words (written once, outside the repository)."""
    path = out_dir / f"sst2-train-max{max_words}words.tsv"
    if not path.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(SST2 / "train.tsv", encoding="utf-8") as f, open(path, "w", encoding="utf-8", newline="") as g:
            reader, writer = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), csv.writer(
                g, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\", lineterminator="\n")
            writer.writerow(next(reader))
            writer.writerows(row for row in reader if len(row[0].split()) <= max_words)
    return path


def recipe_file(name: str) -> Path:
    for folder in RECIPE_DIRS:
        if (folder / f"{name}.yaml").is_file():
            return folder / f"{name}.yaml"
    raise SystemExit(f"no recipe {name}.yaml in {' or '.join(str(d.relative_to(ROOT)) for d in RECIPE_DIRS)}")


def run(recipe: str, out: Path, overrides: list[str]) -> None:
    if (out / "report.json").is_file():
        return  # finished earlier: re-running a study only adds what is missing
    print(f"== {out}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "hybridft", "run", str(recipe_file(recipe)), "--out",
                    str(out), "--overwrite", "--no-progress", *overrides], check=True)


def mean_spread(values: list[float]) -> str:
    if not values:
        return "(not run)"
    if len(values) == 1:
        return f"{100 * values[0]:.2f} (n=1)"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f} (n={len(values)})"


def report(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def semi_folder(recipe: str, overrides: list[str]) -> str:
    return recipe + "".join(f"+{o.replace('=', '-')}" for o in overrides)  # a row of recipe + overrides


def semi(base: Path, table_only: bool, only: set[str] | None = None) -> list[str]:
    """Runs what is missing, then the table of dev accuracy."""
    for _, recipe, overrides in SEMI:
        for seed in SEEDS:
            if not table_only and (only is None or semi_folder(recipe, overrides) in only):
                run(recipe, base / f"{semi_folder(recipe, overrides)}-seed{seed}", [f"seed={seed}", *overrides])
    return semi_table(base, "dev accuracy", dev_accuracy)


def dev_accuracy(out: Path, seed: int) -> float | None:
    return r["metrics"]["accuracy"] if (r := report(out / "report.json")) else None


def semi_table(base: Path, what: str, score) -> list[str]:
    """One row per recipe, ``score(run_folder, seed)`` per seed (None: not run); the last column is
    the mean of per-seed differences to labels only (the same seed draws the same 500 labels, so
    the difference is paired)."""
    rows = [f"| recipe | {what}, mean ± std over seeds (%) | per seed | Δ vs labels only, paired (points) |",
            "|---|---|---|---|"]
    baseline: dict[int, float] = {}
    for label, recipe, overrides in SEMI:
        values = {}
        for seed in SEEDS:
            if (value := score(base / f"{semi_folder(recipe, overrides)}-seed{seed}", seed)) is not None:
                values[seed] = value
        is_baseline = (recipe, overrides) == SEMI[0][1:]
        if is_baseline:
            baseline = values
        paired = [100 * (v - baseline[s]) for s, v in values.items() if s in baseline]
        delta = f"{statistics.mean(paired):+.2f}" if paired and not is_baseline else ""
        rows.append(f"| {label} | {mean_spread(list(values.values()))} | "
                    f"{', '.join(f'{100 * v:.2f}' for v in values.values())} | {delta} |")
    return rows


@functools.cache
def heldout_file(base: Path, seed: int) -> Path:
    """SST-2 training sentences of at least 10 words (the pools' kind) that no semi recipe reads with
    this seed, as labeled samples or as pool, and that are not in dev; read with hybridft's own
    loaders so that the exclusions are exactly what the runs drew. Worked out anew each time (a
    recipe added to SEMI changes the set) and named by its content, outside the repository."""
    from hybridft.data.prepare import load_rows, load_unlabeled_rows, read_rows
    from hybridft.recipe import load_recipe

    used: set[str] = set()
    seen_data: set[str] = set()
    for _, recipe_name, overrides in SEMI:
        recipe, recipe_dir = load_recipe(recipe_file(recipe_name), [f"seed={seed}", *overrides])
        if (key := recipe.data.model_dump_json()) in seen_data:
            continue  # the same data section draws the same rows
        seen_data.add(key)
        splits, _, _ = load_rows(recipe, recipe_dir)
        used |= {r["sentence"] for split in splits.values() for r in split}
        if recipe.data.unlabeled is not None:
            used |= {r["sentence"] for r in load_unlabeled_rows(recipe, recipe_dir, splits)[0]}
    rows, _ = read_rows(recipe.data, recipe.task, recipe_dir, "train", deduplicate=True)
    kept = [r for r in rows if len(r["sentence"].split()) >= 10 and r["sentence"] not in used]
    text = "sentence\tlabel\n" + "".join(f"{r['sentence']}\t{r['label']}\n" for r in kept)
    path = base / f"heldout-seed{seed}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.tsv"
    if not path.is_file():
        base.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return path


def heldout_accuracy(out: Path, seed: int, base: Path) -> float | None:
    """Accuracy of a finished run's saved model on the seed's held-out sentences (kept in the run
    folder under the held-out file's name, so a second call on the same set reads it)."""
    if not (out / "model").is_dir():
        return None
    sentences = heldout_file(base, seed)
    done = out / f"{sentences.stem}.json"
    if not done.is_file():
        scored = subprocess.run([sys.executable, "-m", "hybridft", "eval", str(out / "model"), str(sentences),
                                 "--no-progress"], check=True, capture_output=True, text=True)
        done.write_text(scored.stdout)
    return json.loads(done.read_text())["accuracy"]


def mix(base: Path, table_only: bool) -> list[str]:
    conditions = {"standard": [], "shift": None}
    reports: dict[str, list[dict]] = {}
    for condition in conditions:
        overrides = []
        if condition == "shift":
            short = short_phrases(base)
            overrides = [f"data.train={short}", f"data.unlabeled.path={short}"]
        reports[condition] = []
        for seed in SEEDS:
            out = base / f"{condition}-seed{seed}"
            if not table_only:
                run("sst2-mix-distill", out, [f"seed={seed}", *overrides])
            if (r := report(out / "report.json")) is not None:
                reports[condition].append(r)
    rows = ["| model | standard: dev accuracy (%) | shift (train ≤ 8 words): dev accuracy (%) |", "|---|---|---|"]
    for label, read in MIX_ROWS:
        cells = [mean_spread([read(r)["accuracy"] for r in reports[c]]) for c in conditions]
        rows.append(f"| {label} | {' | '.join(cells)} |")
    for c in conditions:
        alphas = [r["mix"]["chosen_alpha"] for r in reports[c]]
        finals = [r["mix"]["final"] for r in reports[c]]
        rows.append(f"\n{c}: global alpha chosen per seed {alphas}; final mix per seed {finals}")
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", choices=["semi", "heldout", "mix"])
    p.add_argument("--runs-dir", default=None, help="default: runs/sst2-<study>")
    p.add_argument("--table-only", action="store_true", help="only read the report.json of finished runs")
    p.add_argument("--recipes", default=None, help="semi: run only these recipes (comma-separated; a row with "
                                                   "overrides goes by its run folder's name, e.g. "
                                                   "sst2-500-noisy-student-ensemble+stages.3.group_by_length-true); "
                                                   "the table still shows every finished run")
    args = p.parse_args()
    if not SST2.is_dir():
        print(f"error: {SST2} not found (../shared/data beside the checkout)", file=sys.stderr)
        return 2
    base = Path(args.runs_dir or f"runs/sst2-{'semi' if args.study == 'heldout' else args.study}")
    if args.study == "semi":
        only = set(args.recipes.split(",")) if args.recipes else None
        print("\n".join(semi(base, args.table_only, only)))
    elif args.study == "heldout":
        print("\n".join(semi_table(base, "held-out accuracy", lambda out, seed: heldout_accuracy(out, seed, base))))
    else:
        print("\n".join(mix(base, args.table_only)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
