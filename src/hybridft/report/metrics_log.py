"""metrics.jsonl (every logged step, one JSON object per line) plus TensorBoard via Accelerate."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsLog:
    def __init__(self, path: Path, accelerator=None):
        self.path = path
        self.accelerator = accelerator
        self.lines = sum(1 for _ in open(path, encoding="utf-8")) if path.exists() else 0
        self._file = open(path, "a", encoding="utf-8")

    def write(self, step: int, values: dict) -> None:
        record = {"step": step, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                   for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.lines += 1
        if self.accelerator is not None:
            scalars = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.accelerator.log(scalars, step=step)

    def truncate(self, lines: int) -> None:
        """Drop what was logged after a checkpoint, so a resumed run does not log steps twice."""
        self._file.close()
        kept = open(self.path, encoding="utf-8").readlines()[:lines] if self.path.exists() else []
        self.path.write_text("".join(kept), encoding="utf-8")
        self.lines = len(kept)
        self._file = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        self._file.close()
