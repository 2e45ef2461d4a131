"""metrics.jsonl (every logged step, one JSON object per line) plus TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .checkpoint import guarded_write


class MetricsLog:
    def __init__(self, path: Path, tracker=None, enabled: bool = True):
        """``enabled`` is false on all but the main process: the file is written once; every
        process still counts lines, which checkpoints record. ``tracker.track(scalars, step)``
        also receives every record (TensorBoard)."""
        self.path, self.tracker, self.enabled = path, tracker, enabled
        self.lines = sum(1 for _ in open(path, encoding="utf-8")) if path.exists() else 0
        self._file = open(path, "a", encoding="utf-8") if enabled else None

    def write(self, step: int, values: dict) -> None:
        self.lines += 1
        if not self.enabled:
            return
        record = {"step": step, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                   for k, v in values.items()}}
        # a line cut short by a failed write is dropped on --resume, which keeps the checkpoint's lines
        with guarded_write(self.path.name, self.path.parent / "checkpoints"):
            self._append(json.dumps(record) + "\n")
        if self.tracker is not None:
            scalars = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.tracker.track(scalars, step)

    def _append(self, line: str) -> None:
        self._file.write(line)
        self._file.flush()

    def truncate(self, lines: int) -> None:
        """Drop what was logged after a checkpoint, so a resumed run does not log steps twice."""
        if not self.enabled:
            self.lines = lines
            return
        self._file.close()
        kept = open(self.path, encoding="utf-8").readlines()[:lines] if self.path.exists() else []
        self.path.write_text("".join(kept), encoding="utf-8")
        self.lines = len(kept)
        self._file = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
