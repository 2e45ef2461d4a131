"""What a caller of the Python API hooks into a run (callbacks, trackers), and what it gets back from
the run in memory (the trained model). The command line runs with none of it."""

from __future__ import annotations


class RunHooks:
    def __init__(self):
        # (model, tokenizer, meta, labels) once the run is over; per task for multi-task (report.outputs.trained_model)
        self.final_model = None
