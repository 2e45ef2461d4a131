"""How much of a training batch is padding: shuffled batches against hybridft's length-grouped ones.

SST-2 training sentences (seeded samples of several sizes), the embedded MiniLM's tokenizer, max
length 64, batch 32, one epoch's batches as hybridft's ``epoch_batches`` makes them; padding is
(padded tokens - real tokens) / padded tokens, i.e. the share of the computed positions that are pads.

    python benchmarks/padding.py
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "sst2" / "train.tsv"


def main() -> int:
    if not DATA.is_file():
        sys.exit(f"error: {DATA} not found (../shared/data beside the checkout)")
    import pandas as pd
    from transformers import AutoTokenizer

    from hybridft.data.batching import epoch_batches
    from hybridft.models import embedded_model_dir

    frame = pd.read_csv(DATA, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False)
    sentences = [s.strip() for s in frame["sentence"] if s.strip()]
    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    print("| sentences | shuffled batches: padding | length-grouped: padding |\n|---|---|---|")
    for n in (1024, 4000, 60000):
        sample = random.Random(0).sample(sentences, n)
        lengths = [len(ids) for ids in tokenizer(sample, truncation=True, max_length=64)["input_ids"]]
        cells = []
        for grouped in (False, True):
            padded = sum(len(b) * max(lengths[i] for i in b) for b in epoch_batches(lengths, 32, 7, grouped))
            cells.append(f"{100 * (padded - sum(lengths)) / padded:.1f}%")
        print(f"| {n:,} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
