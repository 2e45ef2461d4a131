"""report.json (for scripts and comparisons) and report.md (for people and diffs)."""

from __future__ import annotations

import json
import platform

import torch
import transformers

from ..evaluate import scalar_metrics
from ..folders import write_atomic
from .html import read_records, render_html
from .markdown import render_markdown


def step_memory(stages: list[dict]) -> list[float]:
    """Per process, the most memory held at a training step of any stage."""
    per_stage = [s["step_memory_mb_per_process"] for s in stages if s.get("step_memory_mb_per_process")]
    return [max(values) for values in zip(*per_stage, strict=True)] if per_stage else []


def build_report(run, final: dict, source: str, wall_time_s: float, peak_memory_mb: float,
                 peak_memory_per_process_mb: list[float] | None = None) -> dict:
    model = run.processes.unwrap(run.model)
    total = sum(p.numel() for p in model.parameters())
    validation = final["validation"]
    return {
        "name": run.recipe.name,
        "task": run.recipe.task,
        "model": source,
        "trust_remote_code": run.recipe.model.trust_remote_code,
        "seed": run.recipe.seed,
        "selection_metric": run.recipe.selection_metric,
        "metrics": scalar_metrics(validation),
        "per_class": validation.get("per_class", {}),
        "confusion_matrix": validation.get("confusion_matrix"),
        "test_metrics": scalar_metrics(final["test"]) if "test" in final else None,
        "labels": run.data.label_names,
        "params": {"trainable": max((s["trainable_params"] for s in run.stage_reports), default=0), "total": total},
        "wall_time_s": wall_time_s,
        "peak_memory_mb": peak_memory_mb,
        "distributed": {"strategy": run.processes.strategy, "processes": run.processes.world,
                        "peak_memory_mb_per_process": peak_memory_per_process_mb or [peak_memory_mb],
                        "step_memory_mb_per_process": step_memory(run.stage_reports),
                        "memory": "GPU memory allocated by torch" if run.device.type == "cuda"
                        else "peak resident memory of the process"},
        "data": run.data.stats,
        "stages": run.stage_reports,
        "mix": run.artifacts.mix_report,
        "samples": {split: m["samples"] for split, m in final.items() if m.get("samples")},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "device": str(run.device),
                        "threads": torch.get_num_threads(), "processes": run.processes.world,
                        "precision": run.precision.name},
    }


def write_report(run, final: dict, source: str, wall_time_s: float, peak_memory_mb: float,
                 peak_memory_per_process_mb: list[float] | None = None, write: bool = True) -> dict:
    report = build_report(run, final, source, wall_time_s, peak_memory_mb, peak_memory_per_process_mb)
    if write:
        write_atomic(run.run_dir / "report.md", render_markdown(report))
        write_atomic(run.run_dir / "report.html", render_html(report, read_records(run.run_dir / "metrics.jsonl")))
        write_atomic(run.run_dir / "report.json", json.dumps(report, indent=2))
    return report
