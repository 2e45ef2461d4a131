"""Several machines, on one: two torchrun agents (--nnodes 2, c10d rendezvous on the loopback
address), one process each, train as one process does with the same global batch (docs/guides/ddp.md)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from .conftest import base_recipe, write_recipe
from .test_distributed import free_port, launch


@pytest.mark.parametrize(("strategy", "tolerance"), [("ddp", 1e-6), ("fsdp", 1e-5)])
def test_two_torchrun_nodes_on_the_loopback_address_reproduce_one_process(no_dropout_model, sentiment_csv, tmp_path,
                                                                          strategy, tolerance):
    recipe = base_recipe(no_dropout_model, sentiment_csv, max_steps=6, eval_every=3, batch_size=8)
    recipe["distributed"] = {"strategy": strategy}
    path = write_recipe(tmp_path / "r.yaml", recipe)
    one = launch(path, tmp_path / "one", 1)
    port = free_port()
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "loopback",
            "--local-addr", "127.0.0.1", "--max-restarts", "0",
            "-m", "hybridft", "run", str(path), "--out", str(tmp_path / "two"), "--no-progress"]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    agents = [subprocess.Popen(node, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]  # two machines: the rendezvous gives each its node rank
    try:
        outputs = [agent.communicate(timeout=300) for agent in agents]
    finally:
        for agent in agents:
            agent.kill()
    assert all(agent.returncode == 0 for agent in agents), [err[-2000:] for _, err in outputs]
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert two["environment"]["processes"] == 2 and two["distributed"]["strategy"] == strategy
    a, b = (load_file(tmp_path / d / "model" / "model.safetensors") for d in ("one", "two"))
    assert all(torch.allclose(a[k], b[k], atol=tolerance) for k in a)
    assert one["metrics"]["accuracy"] == two["metrics"]["accuracy"]
