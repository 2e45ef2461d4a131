"""Multi-task against single-task at the same budget (issue: multi-task objectives).

Runs recipes/multitask-sst2-mrpc-conll.yaml (one shared encoder, three heads), then each of its
tasks alone: the same data subset, stage (optimizer, schedule, epochs, batch size) and seed, so
every task sees the same examples the same number of times. Prints a table of each task's dev
metric from the runs' report.json files.

    python benchmarks/multitask.py --runs-dir runs/multitask
    python benchmarks/multitask.py --runs-dir runs/multitask --table-only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "multitask-sst2-mrpc-conll.yaml"


def single_task_recipes(multi: dict) -> dict[str, dict]:
    """One recipe per task, with the multi-task recipe's model, seed and stages."""
    out = {}
    for task in multi["tasks"]:
        data = dict(task["data"])
        for split in ("train", "validation", "test"):
            if data.get(split):
                data[split] = str((RECIPE.parent / data[split]).resolve())
        out[task["name"]] = {"name": f"single-{task['name']}", "seed": multi.get("seed", 42), "task": task["task"],
                             "model": multi.get("model", {}), "data": data, "stages": multi["stages"]}
    return out


def run(recipe: Path, out: Path) -> None:
    if (out / "report.json").is_file():
        return
    print(f"== {out}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "hybridft", "run", str(recipe), "--out", str(out), "--overwrite",
                    "--no-progress"], check=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs-dir", default="runs/multitask")
    p.add_argument("--table-only", action="store_true")
    args = p.parse_args()
    base = Path(args.runs_dir)
    multi = yaml.safe_load(RECIPE.read_text())
    singles = single_task_recipes(multi)
    if not args.table_only:
        run(RECIPE, base / "multi")
        for name, recipe in singles.items():
            path = base / f"single-{name}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(recipe, sort_keys=False))
            run(path, base / f"single-{name}")
    reports = {d: json.loads((base / d / "report.json").read_text()) for d in ["multi", *(f"single-{n}" for n in singles)]
               if (base / d / "report.json").is_file()}
    rows = ["| task | metric | single-task | multi-task (shared encoder) | single-task wall time (s) |",
            "|---|---|---|---|---|"]
    for task in multi["tasks"]:
        metric = task.get("metric") or ("entity_f1" if task["task"] == "token_classification" else "accuracy")
        single = reports.get(f"single-{task['name']}")
        multi_report = reports.get("multi")
        s = f"{single['metrics'][metric]:.4f}" if single else "(not run)"
        key = task["name"] + "/" + metric
        m = f"{multi_report['metrics'][key]:.4f}" if multi_report else "(not run)"
        rows.append(f"| {task['name']} | {metric} | {s} | {m} | {single['wall_time_s']:.0f} |" if single else
                    f"| {task['name']} | {metric} | {s} | {m} | |")
    if "multi" in reports:
        total = sum(reports[f"single-{n}"]["wall_time_s"] for n in singles if f"single-{n}" in reports)
        rows.append(f"\nwall time: multi-task {reports['multi']['wall_time_s']:.0f} s (one model), "
                    f"single-task runs {total:.0f} s together (three models)")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
