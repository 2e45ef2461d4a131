"""Bad input and faults that must end as one line ``error: ...`` (exit 2), never a traceback, and
never with something written where it was refused (issue 37)."""

from __future__ import annotations

import os
import signal
import sys
import time

from hybridft.cli import main

from .conftest import base_recipe, write_recipe


class Recorder:
    """A stderr that keeps every write call apart."""

    def __init__(self):
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_an_error_line_is_written_in_one_piece(tmp_path, monkeypatch):
    """Under torchrun every process writes to one stderr: a line written in two pieces (the text,
    then the newline) interleaves with another process's line."""
    stderr = Recorder()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    written = [w for w in stderr.writes if w]
    assert len(written) == 1 and written[0].startswith("error: ") and written[0].endswith("\n")
    assert written[0].count("\n") == 1


def test_sigterm_during_a_run_says_how_to_resume(tiny_model, sentiment_csv, tmp_path, capsys, monkeypatch):
    import hybridft.api

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs before this ends
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr(hybridft.api, "run_recipe", terminated)
    path = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, sentiment_csv, max_steps=1))
    before = signal.getsignal(signal.SIGTERM)
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 143
    assert capsys.readouterr().err.strip() == (f"error: terminated; continue from the last checkpoint with: "
                                               f"hybridft run {path} --out {tmp_path / 'run'} --resume")
    assert signal.getsignal(signal.SIGTERM) is before  # the command's handler was only for the command


def test_only_the_main_process_reports_an_interruption(tiny_model, sentiment_csv, tmp_path, capsys, monkeypatch):
    """Ctrl-C and torchrun's SIGTERM reach every process; one resume command is enough."""
    import hybridft.api

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hybridft.api, "run_recipe", interrupted)
    monkeypatch.setenv("RANK", "1")
    path = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, sentiment_csv, max_steps=1))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err == ""
