"""What a finished run leaves: the model folder and the reports (the run folder's checkpoints go)."""

from __future__ import annotations

import shutil
import time

from ..model_io import model_meta, save_model_folder, set_generation_defaults
from ..tasks import GENERATIVE_TASKS, MULTI_TASK
from ..training.checkpoint import guarded_write
from .summary import write_report

REPORT_FILES = ("report.json", "report.md", "report.html", "recipe.yaml")  # what trackers keep as artifacts


def finish_run(run, final: dict, started: float) -> dict:
    """Write the model and the report (the main process; every process evaluated the same model);
    returns the report. A write that fails leaves the last checkpoint for ``--resume``."""
    main, recipe = run.processes.is_main, run.recipe
    if recipe.output.save_model and main:
        with guarded_write("the model folder", run.checkpoint_dir):
            save_model_folder(run, run.run_dir / "model")
    peaks = run.processes.peak_memory_mb()
    with guarded_write("the report", run.checkpoint_dir):
        report = write_report(run, final, run.model_source, wall_time_s=time.perf_counter() - started,
                              peak_memory_mb=max(peaks), peak_memory_per_process_mb=peaks, write=main)
    run.log.close()
    if main:
        run.processes.track_report(report, [run.run_dir / name for name in REPORT_FILES], run.global_step)
    run.processes.barrier()
    run.processes.end()
    if not recipe.output.keep_checkpoints_after_run and main:
        shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
    return report


def trained_model(run):
    """The run's final model as its saved folder holds it, kept in memory instead of read back:
    (model, tokenizer, hybridft.json's content, labels); for a multi-task run, that per task.
    In float32 and eval mode, as ``load`` gives a folder (a bf16 base beside fp32 trained weights is
    saved, and loaded, as float32); unmerged LoRA stays in place, which computes what the merged
    saved weights do. Called once the run is over: nothing trains the model any more."""
    model, recipe = run.processes.unwrap(run.model), run.recipe
    model = model.float().eval()
    if recipe.task == MULTI_TASK:
        return {t.name: (model.task_model(t.name), run.tokenizer, model_meta(recipe, run.data.label_names[t.name], t),
                         list(run.data.label_names[t.name])) for t in recipe.tasks}
    if recipe.task in GENERATIVE_TASKS:
        set_generation_defaults(model, recipe.generation)  # as the saved folder's generation_config.json
    labels = [] if recipe.task in GENERATIVE_TASKS else list(run.data.label_names)
    return model, run.tokenizer, model_meta(recipe, run.data.label_names), labels
