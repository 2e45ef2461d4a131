"""What a finished run leaves: the model folder and the reports (the run folder's checkpoints go)."""

from __future__ import annotations

import shutil
import time

from ..model_io import save_model_folder
from ..training.checkpoint import guarded_write
from .summary import write_report


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
    run.processes.barrier()
    run.processes.end()
    if not recipe.output.keep_checkpoints_after_run and main:
        shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
    return report
