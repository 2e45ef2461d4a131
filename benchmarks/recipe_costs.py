"""What shipped recipes cost as they come: each one run with ``hybridft run RECIPE`` and nothing
else (no override), one after another in fresh processes, and a table of its wall time, training
samples/s, peak memory and headline metric, read from its report.json.

The default is the decoder recipes on the embedded SmolLM2 (issue 32: "each shipped recipe has a
line in docs saying what it costs on 2 CPU cores"); name others with ``--recipes``. A run whose
report.json exists is not run again. Beside each run the script measures the CPU time the rest of
the machine used (as ``llm_chat.py`` does); a run beside other jobs is marked ``(busy)``.

    python benchmarks/recipe_costs.py --runs-dir runs/recipe-costs
    python benchmarks/recipe_costs.py --recipes quickstart,sst2-full --runs-dir runs/recipe-costs
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from llm_chat import BUSY_LOAD, children_cpu_s, machine_cpu_s

ROOT = Path(__file__).resolve().parents[1]
DECODER_RECIPES = "chat-sft,decoder-classification,smollm2-wikitext2,multi30k-chat-translation"


def run_recipe(name: str, out: Path) -> dict | None:
    """Run recipes/NAME.yaml as it comes into ``out`` (unless it ran there already); its report
    with the wall time of the whole process and the other jobs' load beside it."""
    note = out / "cost.json"
    if not (out / "report.json").is_file():
        command = [sys.executable, "-m", "hybridft", "run", str(ROOT / "recipes" / f"{name}.yaml"), "--out", str(out),
                   "--overwrite", "--no-progress"]
        print("$ " + " ".join(command), file=sys.stderr, flush=True)
        machine, own, tic = machine_cpu_s(), children_cpu_s(), time.perf_counter()
        if subprocess.run(command).returncode:
            print(f"error: {name} failed", file=sys.stderr, flush=True)
            return None
        wall = time.perf_counter() - tic
        others = (machine_cpu_s() - machine) - (children_cpu_s() - own)
        note.write_text(json.dumps({"process_wall_s": wall, "other_load": max(others, 0.0) / wall}))
    report = json.loads((out / "report.json").read_text())
    return {**report, **(json.loads(note.read_text()) if note.is_file() else {})}


def row(name: str, r: dict | None) -> str:
    if r is None:
        return f"| `{name}.yaml` | failed | | | | |"
    metric = r["selection_metric"]
    busy = " (busy)" if r.get("other_load", math.inf) > BUSY_LOAD else ""
    speeds = ", ".join(f"{s['samples_per_s']:.1f}" for s in r["stages"] if s.get("samples_per_s"))
    minutes = r.get("process_wall_s", r["wall_time_s"]) / 60
    return (f"| `{name}.yaml` | {minutes:.1f} min{busy} | {speeds}{busy} | {r['peak_memory_mb'] / 1024:.1f} GB | "
            f"{metric} {r['metrics'][metric]:.4f} | {r['stages'][0].get('dtypes', {}).get('forward', '')} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", default=DECODER_RECIPES, help="comma-separated names in recipes/")
    p.add_argument("--runs-dir", type=Path, default=Path("runs/recipe-costs"))
    args = p.parse_args(argv)
    names = [n for n in args.recipes.split(",") if n]
    missing = [n for n in names if not (ROOT / "recipes" / f"{n}.yaml").is_file()]
    if missing:
        p.error(f"no recipe recipes/{missing[0]}.yaml")
    rows = ["| recipe | wall time (whole process) | train samples/s | peak memory | dev metric | forward |",
            "|---|---|---|---|---|---|"]
    rows += [row(name, run_recipe(name, args.runs_dir / name)) for name in names]
    print("\n".join(rows))
    print(f"\n(busy): other jobs used more than {BUSY_LOAD} of a core on average during the run.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
