"""Loading models: only a head may be re-initialised; the package floors match what the code needs;
inference takes the GPU when there is one."""

import json
import re
from pathlib import Path

import pytest
import torch

from hybridft.errors import HybridftError
from hybridft.models import load_model

ROOT = Path(__file__).resolve().parents[1]


def test_a_head_with_another_label_count_is_new_but_a_mismatched_body_is_an_error(tiny_model, tmp_path):
    import shutil

    three = load_model(str(tiny_model), "classification", ["a", "b", "c"])
    three.save_pretrained(tmp_path / "three")  # a saved head for three labels ...
    shutil.copy(tiny_model / "tokenizer.json", tmp_path / "three")
    two = load_model(str(tmp_path / "three"), "classification", ["a", "b"])  # ... is re-initialised for two
    assert two.classifier.weight.shape[0] == 2
    assert torch.equal(two.bert.encoder.layer[0].output.dense.weight, three.bert.encoder.layer[0].output.dense.weight)

    config = json.loads((tiny_model / "config.json").read_text())
    odd = tmp_path / "odd"
    shutil.copytree(tiny_model, odd)
    (odd / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    with pytest.raises(HybridftError, match=r"intermediate\.dense\.(weight|bias) is .* only a task head may be"):
        load_model(str(odd), "classification", ["a", "b"])


def floor(requirement: str, package: str) -> tuple[int, ...]:
    match = re.fullmatch(rf"{package}>=([\d.]+)", requirement)
    assert match, requirement
    return tuple(int(x) for x in match.group(1).split("."))


def test_dependency_floors_admit_no_release_without_what_the_code_uses():
    """peft's LoraConfig.exclude_modules (the head is kept out of LoRA) came in peft 0.14; fused AdamW
    on the CPU (training.optim) in torch 2.4."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    by_name = {re.split(r"[<>=!~ ]", d)[0]: d for d in deps}
    assert floor(by_name["peft"], "peft") >= (0, 14)
    assert floor(by_name["torch"], "torch") >= (2, 4)
    from peft import LoraConfig

    assert "exclude_modules" in LoraConfig.__dataclass_fields__


def test_inference_uses_the_gpu_when_there_is_one(monkeypatch):
    from hybridft import inference

    moved = []
    model = type("Model", (), {"to": lambda self, device: moved.append(device),
                               "parameters": lambda self: iter([torch.zeros(1)])})()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert inference.device_for(model).type == "cuda" and moved == ["cuda"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert inference.device_for(model).type == "cpu" and moved == ["cuda"]  # left where it is
