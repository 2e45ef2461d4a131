"""Turn SST-2 (from ../shared/data beside the checkout) into chat conversations for recipes/chat-sft.yaml:
a system turn, the review as the user's question, the label as the assistant's one-word answer.
Writes data/sst2-chat/{train,dev}.jsonl under the repository (ignored by git: the data is not ours).

Usage: python examples/make_chat_data.py [--train-rows 4000]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"
SYSTEM = "You label movie reviews. Answer with one word: positive or negative."


def conversation(sentence: str, label: str) -> dict:
    return {"messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": f"Review: {sentence.strip()}"},
                         {"role": "assistant", "content": "positive" if label == "1" else "negative"}]}


def convert(source: Path, target: Path, rows: int | None, seed: int = 0) -> int:
    with open(source, encoding="utf-8") as f:
        pairs = [(r["sentence"], r["label"]) for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    if rows is not None and rows < len(pairs):
        pairs = random.Random(seed).sample(pairs, rows)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(json.dumps(conversation(s, y)) + "\n" for s, y in pairs), encoding="utf-8")
    return len(pairs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-rows", type=int, default=4000)
    p.add_argument("--out", type=Path, default=ROOT / "data" / "sst2-chat")
    args = p.parse_args()
    if not (SST2 / "train.tsv").is_file():
        print(f"error: SST-2 not found in {SST2}", file=sys.stderr)
        return 2
    print(convert(SST2 / "train.tsv", args.out / "train.jsonl", args.train_rows), "training conversations")
    print(convert(SST2 / "dev.tsv", args.out / "dev.jsonl", None), "validation conversations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
