"""The embedded MiniLM on a few hundred rows of ../shared/data (skipped when it is absent)."""

import pytest

from .conftest import SHARED_DATA, needs_shared_data
from .helpers import train_and_load

pytestmark = pytest.mark.integration


@needs_shared_data("sst2", "train.tsv")
def test_sst2_few_hundred_rows_learns(tmp_path):
    recipe = {
        "name": "sst2-small", "task": "classification", "model": {"max_length": 48},
        "data": {"train": str(SHARED_DATA / "sst2" / "train.tsv"), "validation": str(SHARED_DATA / "sst2" / "dev.tsv"),
                 "columns": {"text": "sentence"}, "max_train_samples": 320, "max_eval_samples": 200},
        "stages": [{"optimizer": {"lr": 1e-4, "weight_decay": 0.01}, "scheduler": {"warmup_ratio": 0.1},
                    "epochs": 2, "batch_size": 16}],
    }
    report, _ = train_and_load(recipe, tmp_path / "run")
    assert report["data"]["rows_used"] == {"train": 320, "validation": 200}
    assert report["metrics"]["accuracy"] >= 0.70  # untrained: ~0.5


@needs_shared_data("conll2003", "eng.train")
def test_conll_few_hundred_sentences_finds_entities(tmp_path):
    recipe = {
        "name": "ner-small", "task": "token_classification", "model": {"max_length": 64},
        "data": {"train": str(SHARED_DATA / "conll2003" / "eng.train"),
                 "validation": str(SHARED_DATA / "conll2003" / "eng.testa"), "format": "conll",
                 "max_train_samples": 300, "max_eval_samples": 150},
        "stages": [{"optimizer": {"lr": 2e-4}, "scheduler": {"warmup_ratio": 0.1}, "epochs": 3, "batch_size": 16}],
    }
    report, _ = train_and_load(recipe, tmp_path / "run")
    assert report["labels"] == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert report["metrics"]["entity_f1"] >= 0.30  # untrained: ~0
