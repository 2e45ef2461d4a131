"""`spectrum`: block matrices chosen by the signal-to-noise ratio of their singular values, per module
type, from the weights alone."""

import json

import pytest
import torch
from safetensors.torch import load_file

from hybridft.selectors.spectrum import Spectrum, SpectrumSpec, marchenko_pastur_edge, signal_to_noise

from .conftest import write_recipe
from .test_chat import TEMPLATE
from .test_families import tiny_models


def with_spectrum(values: list[float], rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """A rows x cols matrix whose singular values are ``values``."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, len(values), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, len(values), generator=g, dtype=torch.float64))
    return (u * torch.tensor(values, dtype=torch.float64)) @ v.T


def test_the_snr_of_a_matrix_of_known_spectrum_matches_the_hand_computation():
    # singular values 9 4 3 2 2 1 1 1 of an 8 x 8 matrix: quartiles 1 and 3.25 (linear interpolation),
    # so sigma = 2.25 / 1.349 and the edge 2 sigma = 3.336 (beta = 1); signal 9 + 4, noise 3 + 2 + 2 + 1 + 1 + 1
    weight = with_spectrum([9, 4, 3, 2, 2, 1, 1, 1], 8, 8)
    assert marchenko_pastur_edge(2.25 / 1.349, 8, 8) == pytest.approx(3.33580, abs=1e-5)
    assert signal_to_noise(weight.float()) == pytest.approx((13 / 10) / 9, rel=1e-5)
    # a wide matrix: beta = 8 / 32, edge sigma x 1.5 = 2.502: the 3 counts as signal now
    assert signal_to_noise(with_spectrum([9, 4, 3, 2, 2, 1, 1, 1], 8, 32)) == pytest.approx((16 / 7) / 9, rel=1e-5)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tiny_models.build("llama", tmp_path_factory.mktemp("spectrum-llama"))


def test_the_top_fraction_is_taken_within_each_module_type_and_deterministically(llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama)
    chosen = []
    for _ in range(2):
        selector = Spectrum(SpectrumSpec(top_fraction=0.5))
        names = selector.trainable(model)
        chosen.append(selector.chosen)
    assert chosen[0] == chosen[1]  # no data, no randomness
    types = {n.split(".", 3)[-1] for n in chosen[0]}  # model.layers.<i>.<type>.weight
    assert len(types) == 7 and len(chosen[0]) == 7 * 2  # 2 of the 4 layers of each type
    for kind in types:
        mine = [n for n in selector.snr if n.endswith(kind)]
        best = sorted(mine, key=lambda n: -selector.snr[n])[:2]
        assert sorted(best) == sorted(n for n in chosen[0] if n.endswith(kind))
    assert names == set(chosen[0])  # Llama's projections have no bias; the LM head is not new


def test_a_spectrum_run_trains_the_chosen_matrices_only_and_reports_every_snr(llama, tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                                     {"role": "assistant", "content": f"answer {i % 3}"}]}) + "\n"
                            for i in range(16)))
    recipe = {"name": "spectrum", "task": "causal_lm", "model": {"name": str(llama), "max_length": 32,
                                                                 "chat_template": TEMPLATE},
              "data": {"train": str(data), "validation": str(data), "columns": {"messages": "messages"}},
              "stages": [{"max_steps": 2, "batch_size": 8, "optimizer": {"lr": 1e-2}, "keep_best": False,
                          "select": [{"name": "spectrum", "top_fraction": 0.25},
                                     {"name": "lora", "r": 2, "target_modules": ["q_proj"]}]}],
              "generation": {"max_new_tokens": 2}}
    from hybridft.cli import main

    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe)), "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    summary = next(s for s in report["stages"][0]["selectors"] if "snr" in s)
    assert len(summary["snr"]) == 4 * 7 and len(summary["chosen"]) == 7  # every matrix scored; 1 in 4 of each type
    before, after = load_file(llama / "model.safetensors"), load_file(tmp_path / "run" / "model" / "model.safetensors")
    chosen = {n.replace(".base_layer", "") for n in summary["chosen"]}
    lora_merged = {n for n in after if "q_proj" in n}
    for name, tensor in before.items():
        if name in chosen or name in lora_merged:
            continue
        assert torch.equal(tensor, after[name]), name  # everything else is bit for bit the pretrained weight
    assert all(not torch.equal(before[n], after[n]) for n in chosen if "q_proj" not in n)


def test_spectrum_is_listed(capsys):
    from hybridft.cli import main

    assert main(["list"]) == 0
    assert "spectrum" in capsys.readouterr().out


def test_validate_prints_what_spectrum_chooses_from_the_real_weights(llama, tmp_path, capsys):
    from hybridft.cli import main

    data = tmp_path / "text.txt"
    data.write_text("a good film\na bad film\n")
    recipe = {"task": "causal_lm", "model": {"name": str(llama)}, "data": {"train": str(data)},
              "stages": [{"select": [{"name": "spectrum", "top_fraction": 0.5}]},
                         {"select": [{"name": "spectrum"}]}]}
    assert main(["validate", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    out = capsys.readouterr().out
    assert "stages.0.select.0 spectrum: 14 of 28 matrices" in out and "self_attn.q_proj: layers " in out
    assert "stages.1.select.0 spectrum: chosen from the weights when the stage starts" in out
