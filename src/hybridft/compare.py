"""`hybridft compare`: the same data, budget and seeds for several strategies, one leaderboard.

A strategy is a preset name (the base recipe with every training stage's ``select`` replaced and
its learning rate scaled, since adapters and LoRA need larger steps than full fine-tuning) or
another recipe file. Each (strategy, seed) runs as its own `hybridft run` process, so wall time and
peak memory are that run's alone, into ``OUT/<strategy>-seed<seed>/``; a comparison that stopped
half way continues where it stopped when started again with the same arguments.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .errors import HybridftError
from .folders import COMPARE_MARKER, RUN_MARKER, mark, write_atomic
from .recipe import load_recipe, resolved_recipe_text
from .report.html import comparison_html
from .tasks import lower_is_better

# name -> (select, learning-rate scale relative to the base recipe)
PRESETS = {
    "full": ([{"name": "full"}], 1.0),
    "layers": ([{"name": "layers", "top_k": 2, "head": True}], 2.0),
    "lora": ([{"name": "lora", "r": 8, "alpha": 16, "target_modules": ["query", "key", "value"]}], 10.0),
    "adapter": ([{"name": "adapter", "reduction_factor": 16}], 10.0),
    "importance": ([{"name": "importance", "density": 0.1}], 2.0),
    "head": ([{"name": "layers", "top_k": 0, "head": True}], 10.0),
}
# presets that leave the embeddings and bottom layers frozen compute them once per example
CACHED = ("layers", "head")


def strategy_recipe(base: Path, overrides: list[str], strategy: str) -> tuple[str, dict]:
    """(label, recipe data with absolute paths) of one strategy."""
    if strategy in PRESETS:
        recipe, base_dir = load_recipe(base, overrides)
        select, scale = PRESETS[strategy]
        data = yaml.safe_load(resolved_recipe_text(recipe, base_dir, recipe.model.name or ""))
        if not recipe.model.name:
            data["model"]["name"] = None  # the embedded model
        for stage in data["stages"]:
            if "mix" not in stage:
                stage["select"] = select
                stage["optimizer"]["lr"] *= scale
                if strategy in CACHED and data["task"] in ("classification", "pair_classification",
                                                           "token_classification"):
                    stage["prefix_cache"] = stage.get("prefix_cache") or {}
        return strategy, data
    path = Path(strategy)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        raise HybridftError(f"unknown strategy {strategy!r}: give one of {', '.join(PRESETS)} or a recipe file")
    recipe, base_dir = load_recipe(path, overrides)
    data = yaml.safe_load(resolved_recipe_text(recipe, base_dir, recipe.model.name or ""))
    if not recipe.model.name:
        data["model"]["name"] = None
    return path.stem, data


def check_out_dir(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / COMPARE_MARKER).is_file():
        raise HybridftError(f"{out} is not empty and holds no hybridft comparison; choose another --out")


def run_comparison(base: Path, strategies: list[str], seeds: list[int], out: Path, overrides: list[str]) -> dict:
    check_out_dir(out)
    plans = [strategy_recipe(base, overrides, s) for s in strategies]  # every recipe checked before any run
    labels = [label for label, _ in plans]
    if len(set(labels)) != len(labels):
        raise HybridftError(f"strategies {labels} name the same strategy twice")
    out.mkdir(parents=True, exist_ok=True)
    mark(out, COMPARE_MARKER)
    total, done, started = len(plans) * len(seeds), 0, time.perf_counter()
    for label, data in plans:
        recipe_file = out / "recipes" / f"{label}.yaml"
        recipe_file.parent.mkdir(exist_ok=True)
        recipe_file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        for seed in seeds:
            done += 1
            run_dir = out / f"{label}-seed{seed}"
            if (run_dir / "report.json").is_file():
                print(f"[{done}/{total}] {label} seed {seed}: done earlier", file=sys.stderr, flush=True)
                continue
            print(f"[{done}/{total}] {label} seed {seed}: running ({total - done} after it; "
                  f"{time.perf_counter() - started:.0f} s so far)", file=sys.stderr, flush=True)
            resume = ["--resume"] if (run_dir / RUN_MARKER).is_file() else []
            proc = subprocess.run([sys.executable, "-m", "hybridft", "run", str(recipe_file), "--out", str(run_dir),
                                   "--no-progress", f"seed={seed}", *resume], capture_output=True, text=True)
            if proc.returncode != 0:
                why = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
                raise HybridftError(f"{label} seed {seed} failed: {why}")
    board = leaderboard(out, labels, seeds)
    write_leaderboard(out, board)
    return board


def leaderboard(out: Path, labels: list[str], seeds: list[int]) -> dict:
    rows = []
    metric = None
    for label in labels:
        reports = [json.loads((out / f"{label}-seed{s}" / "report.json").read_text()) for s in seeds]
        metric = reports[0]["selection_metric"]
        values = [r["metrics"][metric] for r in reports]
        train_time = [sum(st["train_time_s"] for st in r["stages"]) for r in reports]
        samples = [sum(st["samples_per_s"] * st["train_time_s"] for st in r["stages"]) for r in reports]
        rows.append({"strategy": label, "metric_mean": statistics.mean(values),
                     "metric_std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values,
                     "trainable_params": reports[0]["params"]["trainable"], "total_params": reports[0]["params"]["total"],
                     "wall_time_s": statistics.mean(r["wall_time_s"] for r in reports),
                     "samples_per_s": statistics.mean(s / max(t, 1e-9) for s, t in zip(samples, train_time, strict=True)),
                     "peak_memory_mb": statistics.mean(r["peak_memory_mb"] for r in reports)})
    sign = -1 if lower_is_better(metric) else 1
    for row in rows:  # Pareto front: no other strategy is as good or better with fewer trainable parameters
        row["pareto"] = not any(
            o is not row and sign * o["metric_mean"] >= sign * row["metric_mean"]
            and o["trainable_params"] <= row["trainable_params"]
            and (sign * o["metric_mean"] > sign * row["metric_mean"] or o["trainable_params"] < row["trainable_params"])
            for o in rows)
    rows.sort(key=lambda r: -sign * r["metric_mean"])
    return {"metric": metric, "seeds": seeds, "rows": rows}


def render_markdown(board: dict) -> str:
    metric = board["metric"]
    lines = [f"# Leaderboard ({metric}, mean ± std over seeds {board['seeds']})", "",
             f"| strategy | {metric} | trainable params | % of total | wall time (s) | train samples/s | "
             "peak memory (MB) | Pareto |", "|---|---|---|---|---|---|---|---|"]
    for r in board["rows"]:
        lines.append(f"| {r['strategy']} | {r['metric_mean']:.4f} ± {r['metric_std']:.4f} | {r['trainable_params']:,} | "
                     f"{100 * r['trainable_params'] / r['total_params']:.2f}% | {r['wall_time_s']:.0f} | "
                     f"{r['samples_per_s']:.1f} | {r['peak_memory_mb']:.0f} | {'★' if r['pareto'] else ''} |")
    lines += ["", "★: on the Pareto front of metric against trainable parameters.", ""]
    return "\n".join(lines)


def write_leaderboard(out: Path, board: dict) -> None:
    write_atomic(out / "leaderboard.json", json.dumps(board, indent=2))
    write_atomic(out / "leaderboard.md", render_markdown(board))
    write_atomic(out / "report.html", comparison_html(board))
