"""The Python API changes nothing in its caller's process: malloc settings, logging verbosity, the
global random generators. Only the command line sets up its own process."""

import json
import subprocess
import sys

import pytest
import torch

from .conftest import base_recipe

# In a fresh process: train and predict through the Python API (or tune malloc as the command line
# does), then malloc, write and free 256 MiB: is the block given back to the system?
RETURNED_PROBE = """
import ctypes, json, sys
import hybridft
recipe, out, tune = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3] == "tune"
result = hybridft.run(recipe, out, progress=False)
hybridft.load(result.model_dir).predict(["a good film"])
if tune:
    from hybridft.allocator import keep_freed_memory
    keep_freed_memory()
def resident_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
before = resident_mib()
block = libc.malloc(256 * 2**20)
ctypes.memset(block, 1, 256 * 2**20)
libc.free(block)
print(round(resident_mib() - before))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
@pytest.mark.parametrize("tune", [False, True])
def test_a_block_the_caller_frees_goes_back_to_the_system_after_run_and_predict(tune, tiny_model, sentiment_csv,
                                                                                tmp_path):
    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=2)
    env = {"CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", RETURNED_PROBE, json.dumps(recipe), str(tmp_path / "run"),
                          "tune" if tune else "api"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    kept_mib = int(out.stdout.split()[-1])
    if tune:  # what the command line does for its own process: the freed block stays resident
        assert kept_mib > 200
    else:
        assert kept_mib < 32


def test_load_and_predict_leave_transformers_logging_as_the_caller_set_it(tiny_model, sentiment_csv, tmp_path):
    from transformers.utils import logging

    import hybridft

    result = hybridft.run(base_recipe(tiny_model, sentiment_csv, max_steps=1), tmp_path / "run", progress=False)
    logging.set_verbosity_info()
    logging.enable_progress_bar()
    try:
        hybridft.load(result.model_dir).predict(["a good film"])
        assert logging.get_verbosity() == logging.INFO and logging.is_progress_bar_enabled()
    finally:
        logging.set_verbosity_warning()


def test_run_leaves_the_callers_random_generators_where_they_were(tiny_model, sentiment_csv, tmp_path):
    import random

    import numpy as np

    import hybridft

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    expected = draws()
    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    hybridft.run(base_recipe(tiny_model, sentiment_csv, max_steps=1), tmp_path / "run", progress=False, seed=5)
    assert draws() == expected


RNG_PROBE = """
import json, random, sys
random.seed(11)
expected = [random.random() for _ in range(3)]
random.seed(11)
import hybridft
hybridft.run(json.loads(sys.argv[1]), sys.argv[2], progress=False)
print(json.dumps([random.random() for _ in range(3)] == expected))
"""


def test_a_first_run_in_a_fresh_process_leaves_pythons_generator_where_it_was(tiny_model, sentiment_csv, tmp_path):
    """Importing what a run needs may draw from Python's generator (rich does): the whole call is kept."""
    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=1)
    env = {"CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", RNG_PROBE, json.dumps(recipe), str(tmp_path / "run")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "true"


def test_predict_refuses_a_model_with_nan_weights(tiny_model, tmp_path, capsys):
    from hybridft.cli import main

    from .helpers import tiny_classifier

    model = tiny_classifier(tiny_model)
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "m")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path / "m")
    assert main(["predict", str(tmp_path / "m"), "--text", "a good film", "--no-progress"]) == 2
    assert "has NaN values (tensor classifier.weight)" in capsys.readouterr().err
