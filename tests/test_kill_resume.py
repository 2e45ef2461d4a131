"""SIGKILL a real `hybridft run` process at several moments; `--resume` must end bit-identical."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from .conftest import base_recipe, write_recipe


def start(recipe, out, *extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "hybridft", "run", str(recipe), "--out", str(out), "--no-progress",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


@pytest.mark.slow
def test_kill_minus_nine_then_resume_gives_the_uninterrupted_weights(tiny_model, sentiment_csv, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, sentiment_csv, epochs=3, batch_size=4,
                                                           eval_every=5))
    reference = start(recipe, tmp_path / "reference")
    assert reference.wait(timeout=300) == 0
    expected = load_file(tmp_path / "reference" / "model" / "model.safetensors")

    resumed_runs = 0
    for delay in (0.0, 0.15, 0.4):  # after the first checkpoint: mid-step, mid-evaluation, mid-write
        out = tmp_path / f"killed-{delay}"
        proc = start(recipe, out)
        deadline = time.time() + 120
        while not (out / "checkpoints" / "latest").exists():
            assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        if (out / "report.json").exists():
            continue  # it finished before the kill landed: nothing to resume
        resumed = start(recipe, out, "--resume")
        _, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err.decode()[-500:]
        resumed_runs += 1
        got = load_file(out / "model" / "model.safetensors")
        assert all(torch.equal(expected[k], got[k]) for k in expected), f"weights differ after a kill at +{delay}s"
    assert resumed_runs >= 2  # the kills landed inside the runs, not after them
