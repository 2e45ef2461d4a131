"""The hostile sweep of issue 37: every case the issue lists, run as a user would run it (``python -m
hybridft ...`` in a fresh process, or the Python API where the case is about the API), one line per
case: ``case | expected | got | ok`` (or ``FAIL (why)``, or ``skipped (needs X)``).

Each case is checked for its exit status, a traceback on stderr, the fragment of the message it
should print, files it must not write (nothing at all where it refuses), the user's files planted
beside it (still there, unchanged), the shared inputs (still there), and every ``.safetensors`` file
written during the case (finite values only). Everything is built in a temporary folder: a tiny
random BERT with a word-level tokenizer (as the tests build it), a tiny Llama and GPT-2, small
CSV/TSV/JSONL files and three short trained runs to merge, predict and resume from.

    python benchmarks/hostile.py [-k SUBSTRING] [--jobs 2] [--keep]

Exit status 1 if any case fails. 84 cases, each a fresh process that imports torch and transformers:
about 800 s of CPU, so ~7 minutes on 2 idle cores (much longer on a loaded machine). The read-only
cases mount a read-only tmpfs in a mount namespace of their own (``unshare -m``, as root); where that
cannot be done they say ``skipped (needs ...)``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.conftest import sentiment_rows  # noqa: E402  (the repository's own test vocabulary)

PY = sys.executable
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": str(ROOT)}
TIMEOUT = 300
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} [SEP] {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|> {% endif %}")


@dataclass
class Done:
    rc: int
    out: str
    err: str


@dataclass
class Case:
    """One hostile use. ``argv`` (hybridft's arguments) or ``code`` (Python API, in a fresh process)
    may name ``$d`` (the case's own folder) and the shared inputs (``$bert``, ``$words``, ...)."""

    name: str
    argv: list[str] | None = None
    rc: int = 2
    says: tuple[str, ...] = ()
    setup: Callable[[Path, dict], dict | None] | None = None  # plants files; may add names for argv
    keep: tuple[str, ...] = ()  # the user's files and folders planted in $d: must stay as they were
    absent: tuple[str, ...] = ()  # paths (in $d, or absolute) the case must not create
    check: Callable[[Path, dict, Done], list[str]] | None = None  # further problems, if any
    code: str | None = None
    env: dict = field(default_factory=dict)
    cwd: str | None = None
    stdin: str | None = None
    expect: str = ""  # what ``check`` looks for, in words
    runner: str = "cli"  # cli, api, read_only, sigterm, torchrun, locked
    one_line: bool = True  # a refusal is exactly one "error:" line


# --- running --------------------------------------------------------------------------------------


def execute(command: list[str], cwd: Path, env: dict | None = None, stdin: str | None = None) -> Done:
    try:
        p = subprocess.run(command, cwd=cwd, env={**ENV, **(env or {})}, input=stdin or "", capture_output=True,
                           text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        return Done(-1, str(e.stdout or ""), f"timed out after {TIMEOUT} s")
    return Done(p.returncode, p.stdout, p.stderr)


def hybridft(argv: list[str], cwd: Path, env: dict | None = None, stdin: str | None = None) -> Done:
    return execute([PY, "-m", "hybridft", *argv], cwd, env, stdin)


def fill(text: str, names: dict) -> str:
    return string.Template(text).substitute({k: str(v) for k, v in names.items()})


API_PRELUDE = """
import sys
import hybridft
from hybridft.errors import HybridftError
try:
{body}
except HybridftError as e:
    lines = str(e).splitlines()
    print(f"HybridftError ({{len(lines)}} line{{'s' * (len(lines) != 1)}}): {{e}}")
    sys.exit(2)
"""


def run_api(case: Case, d: Path, names: dict) -> Done:
    body = textwrap.indent(textwrap.dedent(fill(case.code, names)).strip(), "    ")
    return execute([PY, "-c", API_PRELUDE.format(body=body)], d, case.env)


def run_read_only(case: Case, d: Path, names: dict) -> Done:
    """A real read-only mount (tmpfs, ro) at $d/ro, in a mount namespace of the command's own: chmod
    does not stop root, a read-only file system does."""
    mount = 'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"'
    argv = [fill(a, names) for a in case.argv]
    (d / "ro").mkdir(exist_ok=True)
    return execute(["unshare", "-m", "sh", "-c", mount, str(d / "ro"), PY, "-m", "hybridft", *argv], d)


def run_sigterm(case: Case, d: Path, names: dict) -> Done:
    """SIGTERM once the run holds its folder and has trained a moment (a scheduler's time limit)."""
    argv = [fill(a, names) for a in case.argv]
    p = subprocess.Popen([PY, "-m", "hybridft", *argv], cwd=d, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + TIMEOUT
    while not (d / "run" / "checkpoints").exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=TIMEOUT)
    return Done(p.returncode, out, err)


def run_torchrun(case: Case, d: Path, names: dict) -> Done:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [fill(a, names) for a in case.argv]
    return execute([PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), "-m",
                    "hybridft", *argv], d)


def run_locked(case: Case, d: Path, names: dict) -> Done:
    """Another hybridft process holds the output folder's lock (as a running interpolate does)."""
    holder = ("import sys; from pathlib import Path; from hybridft.folders import RunLock\n"
              "with RunLock(Path(sys.argv[1])):\n    print('held', flush=True); sys.stdin.read()")
    p = subprocess.Popen([PY, "-c", holder, str(d / "out")], cwd=d, env=ENV, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        if p.stdout.readline().strip() != "held":
            return Done(-1, "", "the lock holder did not start")
        names["holder"] = p.pid
        return hybridft([fill(a, names) for a in case.argv], d)
    finally:
        p.communicate("", timeout=60)


def run_case(case: Case, d: Path, names: dict) -> Done:
    if case.runner == "api":
        return run_api(case, d, names)
    if case.runner != "cli":
        return RUNNERS[case.runner](case, d, names)
    cwd = Path(fill(case.cwd, names)) if case.cwd else d
    return hybridft([fill(a, names) for a in case.argv], cwd, {k: fill(v, names) for k, v in case.env.items()},
                    case.stdin)


RUNNERS = {"read_only": run_read_only, "sigterm": run_sigterm, "torchrun": run_torchrun, "locked": run_locked}


# --- judging --------------------------------------------------------------------------------------


def files_under(paths: list[Path]) -> dict[str, bytes]:
    found = {}
    for path in paths:
        for f in ([path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []):
            if f.is_file():
                found[str(f)] = f.read_bytes()
    return found


def model_files(d: Path) -> dict[Path, int]:
    return {f: f.stat().st_mtime_ns for f in d.rglob("*.safetensors")}


def nonfinite_models(d: Path, before: dict[Path, int]) -> list[str]:
    """Every .safetensors file written during the case (new, or rewritten) holds finite values only."""
    import torch
    from safetensors.torch import load_file

    problems = []
    for f, written in model_files(d).items():
        if before.get(f) == written:  # planted by the case's setup (a NaN or damaged input)
            continue
        try:
            state = load_file(str(f))
        except Exception as e:  # a file hybridft wrote that does not read back is a problem too
            problems.append(f"unreadable model {f.relative_to(d)}: {e}")
            continue
        bad = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            problems.append(f"NaN/inf model {f.relative_to(d)} ({bad[0]})")
    return problems


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "error: " in line or line.startswith("HybridftError")]


def judge(case: Case, d: Path, names: dict, done: Done, kept: dict[str, bytes], absent_before: set[str],
          models_before: dict[Path, int]) -> list[str]:
    problems = [] if done.rc == case.rc else [f"exit {done.rc}"]
    if "Traceback" in done.err and not (case.runner == "torchrun" and "/hybridft/" not in done.err):
        problems.append("traceback")  # torchrun's own summary is one, a frame of hybridft's is not allowed
    problems += [f"no {s!r}" for s in (fill(s, names) for s in case.says) if s not in done.out + done.err]
    if case.rc == 2 and case.one_line and len(error_lines(done.err + done.out)) != 1:
        problems.append(f"{len(error_lines(done.err + done.out))} error lines")
    now = files_under([d / k for k in case.keep])
    problems += [f"deleted {Path(f).relative_to(d)}" for f in kept if f not in now]
    problems += [f"changed {Path(f).relative_to(d)}" for f in kept if f in now and now[f] != kept[f]]
    problems += [f"wrote {a}" for a in absent_before if (d / fill(a, names)).exists()]
    problems += [f"input gone: {f}" for f in names["inputs"] if not Path(f).exists()]
    problems += nonfinite_models(d, models_before)
    return problems + (case.check(d, names, done) if case.check and done.rc >= 0 else [])


def expected_text(case: Case) -> str:
    parts = [f"exit {case.rc}", *(repr(s) for s in case.says)]
    parts += [f"keeps {', '.join(case.keep)}"] if case.keep else []
    parts += [f"no {', '.join(case.absent)}"] if case.absent else []
    return ", ".join(parts + ([case.expect] if case.expect else []))


def got_text(done: Done) -> str:
    errors = error_lines(done.err + done.out)
    shown = errors[-1] if errors else (done.out.strip().splitlines() or done.err.strip().splitlines() or [""])[-1]
    return f"exit {done.rc}: {shown[:150]}"


def sweep_one(case: Case, d: Path, names: dict) -> tuple[str, bool | None]:
    """(the case's line, passed) -- None where it was skipped. ``d``: the case's own folder, new."""
    d.mkdir(parents=True)
    names = {**names, "d": d}
    skip = names["skip"].get(case.runner)
    if skip:
        return f"{case.name} | {expected_text(case)} | - | skipped (needs {skip})", None
    try:
        names.update((case.setup(d, names) if case.setup else None) or {})
    except Exception as e:  # a broken setup is the sweep's fault: say so, do not hide it
        return f"{case.name} | {expected_text(case)} | setup failed: {e!r} | FAIL (setup)", False
    kept = files_under([d / k for k in case.keep])
    absent = {a for a in case.absent if not (d / fill(a, names)).exists()}
    models_before = model_files(d)
    done = run_case(case, d, names)
    try:
        problems = judge(case, d, names, done, kept, absent, models_before)
    except Exception as e:  # e.g. a check reading output that is not what it expects
        problems = [f"could not judge: {e!r}"]
    verdict = "ok" if not problems else f"FAIL ({'; '.join(problems)})"
    return f"{case.name} | {expected_text(case)} | {got_text(done)} | {verdict}", not problems


# --- shared inputs --------------------------------------------------------------------------------

BUILD_MODELS = """
import sys, torch
from pathlib import Path
from tests.conftest import VOCAB, build_tiny_bert, build_tokenizer
from tests.test_generative import word_tokenizer
sys.path.insert(0, "examples")
import tiny_models
from transformers import (AutoTokenizer, BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel)

root = Path(sys.argv[1])
bert = build_tiny_bert(root / "bert")
torch.manual_seed(1)
# a plain transformers classifier (no hybridft.json): what interpolate, predict and eval also take
BertForSequenceClassification.from_pretrained(bert, num_labels=2).save_pretrained(root / "classifier")
AutoTokenizer.from_pretrained(bert).save_pretrained(root / "classifier")
# another hidden size: the same tensor names, other shapes
wide = BertConfig(vocab_size=len(VOCAB), hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=64, num_labels=2)
BertForSequenceClassification(wide).save_pretrained(root / "wide")
build_tokenizer(root / "wide")
# a GPT-2 of 64 positions without an end-of-text token: only the length stops its generation
tok = word_tokenizer(root / "gpt2", {"unk_token": "<unk>", "pad_token": "<pad>"}, None)
GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=None,
                           eos_token_id=None, pad_token_id=tok.pad_token_id)).save_pretrained(root / "gpt2")
tiny_models.build("llama", root / "llama")
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def sentiment_csv(path: Path, n: int = 40, labels: tuple[str, str] = ("negative", "positive")) -> Path:
    rename = {"negative": labels[0], "positive": labels[1]}
    return write(path, "text,label\n" + "".join(f"{t},{rename[label]}\n" for t, label in sentiment_rows(n)))


def recipe_dict(names: dict, train=None, **stage) -> dict:
    stage = {"name": "s0", "optimizer": {"lr": 1e-3}, "batch_size": 8, "epochs": 1, "max_steps": 1, **stage}
    return {"name": "tiny", "task": "classification", "model": {"name": str(names["bert"]), "max_length": 32},
            "data": {"train": str(train or names["words_csv"])}, "stages": [stage]}


def write_recipe(path: Path, recipe: dict) -> Path:
    import yaml

    return write(path, yaml.safe_dump(recipe, sort_keys=False))


def recipe(d: Path, names: dict, train=None, name: str = "r.yaml", extra: dict | None = None, **stage) -> Path:
    return write_recipe(d / name, {**recipe_dict(names, train, **stage), **(extra or {})})


def train(recipe_path: Path, out: Path, *overrides: str) -> None:
    done = hybridft(["run", str(recipe_path), "--out", str(out), "--no-progress", *overrides], recipe_path.parent)
    if done.rc != 0:
        raise RuntimeError(f"training {out.name} failed: {done.err.strip()[-800:]}")


def checkpointed_run(folder: Path, names: dict) -> tuple[Path, Path]:
    """(recipe, run folder) of a finished 4-step run that kept its checkpoints step-2 and step-4."""
    data = sentiment_csv(folder / "data.csv")
    path = recipe(folder, names, data, max_steps=4, eval_every=2,
                  extra={"output": {"keep_checkpoints": 10, "keep_checkpoints_after_run": True}})
    train(path, folder / "run")
    return path, folder / "run"


def rewind(run: Path, checkpoint: str = "step-2") -> Path:
    """The run folder as a crash right after ``checkpoint`` was written would leave it."""
    for p in (run / "checkpoints").iterdir():
        if p.is_dir() and p.name != checkpoint:
            shutil.rmtree(p)
    (run / "checkpoints" / "latest").write_text(checkpoint)
    shutil.rmtree(run / "model")
    (run / "report.json").unlink()
    return run


def shared_inputs(root: Path, jobs: int) -> dict:
    """Tiny models, data, and three trained runs, built once for every case."""
    done = execute([PY, "-c", BUILD_MODELS, str(root)], ROOT)
    if done.rc != 0:
        raise SystemExit(f"building the tiny models failed:\n{done.err[-3000:]}")
    names = {m: root / m for m in ("bert", "classifier", "wide", "gpt2", "llama")}
    names["words_csv"] = sentiment_csv(root / "data" / "words.csv")
    names["digits_csv"] = sentiment_csv(root / "data" / "digits.csv", labels=("0", "1"))
    runs = {"words": ("words_csv",), "digits": ("digits_csv",)}
    with ThreadPoolExecutor(jobs) as pool:
        trained = [pool.submit(train, recipe(root / "recipes", names, names[csv], name=f"{run}.yaml", max_steps=2),
                               root / run) for run, (csv,) in runs.items()]
        ck = pool.submit(checkpointed_run, root / "ck", names)
        for t in trained:
            t.result()
        names["ck_recipe"], names["ck"] = ck.result()
    names["words"], names["digits"] = root / "words", root / "digits"
    names["inputs"] = [str(f) for f in root.rglob("*") if f.is_file()]
    return names


# --- setups shared by several cases ---------------------------------------------------------------


def plant(d: Path, *paths: str) -> None:
    """The user's own files (a path ending in / is a folder, planted with a file in it)."""
    for p in paths:
        write(d / p / "mine.txt" if p.endswith("/") else d / p, f"the user's {p}\n")


def nan_model(source: Path, folder: Path) -> Path:
    """A copy of a model folder whose classifier bias is NaN (a model hybridft would not write)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, folder)
    state = load_file(folder / "model.safetensors")
    state["classifier.bias"] = torch.full_like(state["classifier.bias"], float("nan"))
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def merge_recipe(d: Path, names: dict, *models: str, **mix) -> dict:
    """A run whose second stage merges ``models`` (stage:s0 if none)."""
    mix = {"method": "task_arithmetic", "models": list(models) or ["stage:s0"], **mix}
    r = recipe_dict(names)
    r["stages"].append({"name": "merge", "mix": mix})
    return {"r": write_recipe(d / "r.yaml", r)}


def tsv_recipe(d: Path, names: dict, text: str, name: str = "d.tsv", **data) -> dict:
    r = recipe_dict(names, write(d / name, text))
    r["data"].update(data)
    return {"r": write_recipe(d / "r.yaml", r)}


def model_copy(d: Path, names: dict, folder: str, source: str = "words") -> None:
    shutil.copytree(names[source] / "model", d / folder)


ZERO_ONE = "".join(f"the film {i}\t{i % 2}\n" for i in range(10))  # lines 2-11 under a header


# --- 1-7: data loss and silently wrong results ----------------------------------------------------

INTERPOLATE = ["interpolate", "$bert", "$words/model"]
TIES = ["--method", "ties", "--density", ".5"]
TWICE = ["--model", "$words/model"]


def data_loss_cases() -> list[Case]:
    return [
        Case("1 interpolate --scale nan", [*INTERPOLATE, *TIES, "--scale", "nan", "-o", "$d/out"],
             says=("--scale must be a finite number above 0",), absent=("out",)),
        Case("1 interpolate --weights 0,0", [*INTERPOLATE, *TIES, *TWICE, "--weights", "0,0", "-o", "$d/out"],
             says=("add up to 0",), absent=("out",)),
        Case("1 interpolate --weights 1,nan", [*INTERPOLATE, *TIES, *TWICE, "--weights", "1,nan", "-o", "$d/out"],
             says=("finite number, got nan",), absent=("out",)),
        Case("1 interpolate --weights inf,1", [*INTERPOLATE, *TIES, *TWICE, "--weights", "inf,1", "-o", "$d/out"],
             says=("finite number, got inf",), absent=("out",)),
        Case("1 interpolate --weights 1e308,1e308",
             [*INTERPOLATE, *TIES, *TWICE, "--weights", "1e308,1e308", "-o", "$d/out"],
             says=("add up to inf",), absent=("out",)),
        Case("1 interpolate whose merge overflows (--scale 1e30)",
             [*INTERPOLATE, "--method", "task_arithmetic", "--scale", "1e30", *TWICE, "--weights", "1e30,1e30", "-o",
              "$d/out"], says=("infinite values",), absent=("out",)),
        Case("1 predict on a NaN model from elsewhere (planted; hybridft writes none)",
             ["predict", "$d/nan", "--text", "a good film"], says=("NaN values",), setup=lambda d, n: {"nan": nan_model(n["words"] / "model", d / "nan")}),
        Case("1 validate lr=.inf", ["validate", "$r", "stages.0.optimizer.lr=.inf"], says=("finite number",),
             setup=lambda d, n: {"r": recipe(d, n)}),
        Case("1 validate mix.scales=[.nan]", ["validate", "$r", "stages.1.mix.scales=[.nan]"],
             says=("finite number",), setup=merge_recipe),
        Case("1 validate mix.weights=[0,0]", ["validate", "$r", "stages.1.mix.weights=[0,0]"],
             says=("add up to 0",), setup=merge_recipe),
        Case("1 run merging a NaN model (mix.models)", ["run", "$r", "--out", "$d/run", "--no-progress"],
             says=("has NaN values (tensor classifier.bias)",), absent=("run/model",),
             setup=lambda d, n: merge_recipe(d, n, str(nan_model(n["words"] / "model", d / "nan")))),
        Case("1 run that diverges (lr 1e30)", ["run", "$r", "--out", "$d/run", "--no-progress"],
             says=("non-finite",), absent=("run/model",),
             setup=lambda d, n: {"r": recipe(d, n, optimizer={"lr": 1e30}, max_steps=8, epochs=3)}),
        Case("2 run --overwrite reading mix.models from the folder it clears",
             ["run", "$r", "--out", "$d/victim", "--overwrite", "--no-progress", "stages.1.mix.models=[$d/victim/model]"],
             says=("--overwrite would clear",),
             keep=("victim/model/", "victim/report.json", "victim/recipe.yaml", "victim/metrics.jsonl"),
             setup=lambda d, n: (shutil.copytree(n["words"], d / "victim"), merge_recipe(d, n))[1]),
        Case("3 run --overwrite keeps the user's NOTES.md and plots/",
             ["run", "$r", "--out", "$d/old", "--overwrite", "--no-progress"], rc=0,
             says=("kept NOTES.md, model/README.md, plots/",), keep=("old/NOTES.md", "old/plots/", "old/model/README.md"),
             setup=lambda d, n: (shutil.copytree(n["words"], d / "old"),
                                 plant(d, "old/NOTES.md", "old/plots/", "old/model/README.md"), {"r": recipe(d, n)})[2]),
        Case("3 interpolate --overwrite keeps the user's NOTES.txt and mystuff/",
             [*INTERPOLATE, "--alpha", ".2", "-o", "$d/out", "--overwrite"], rc=0,
             says=("kept NOTES.txt, mystuff/",), keep=("out/NOTES.txt", "out/mystuff/"),
             setup=lambda d, n: (model_copy(d, n, "out"), plant(d, "out/NOTES.txt", "out/mystuff/"))[1]),
        Case("4 interpolate -o sib/m --overwrite beside the user's sib/.m.old/",
             [*INTERPOLATE, "--alpha", ".3", "-o", "$d/sib/m", "--overwrite"], rc=0, keep=("sib/.m.old/", "sib/.m.tmp/"),
             setup=lambda d, n: (model_copy(d, n, "sib/m"), plant(d, "sib/.m.old/", "sib/.m.tmp/"))[1]),
        Case("4 interpolate -o sib/m beside the user's sib/.m.tmp/ (no --overwrite)",
             [*INTERPOLATE, "--alpha", ".5", "-o", "$d/sib/m"], rc=0, keep=("sib/.m.tmp/",),
             setup=lambda d, n: plant(d, "sib/.m.tmp/")),
        Case("4 interpolate -o sib/n beside a file sib/.n.tmp", [*INTERPOLATE, "--alpha", ".5", "-o", "$d/sib/n"],
             rc=0, keep=("sib/.n.tmp",), setup=lambda d, n: plant(d, "sib/.n.tmp")),
        Case("5 one 'pos' row in a 0/1 TSV", ["validate", "$r"], says=("line 13 has 'pos'",),
             setup=lambda d, n: tsv_recipe(d, n, "text\tlabel\n" + ZERO_ONE + "\na nice film\tpos\n" + ZERO_ONE)),
        Case("5 a 'nan' label", ["validate", "$r"], says=("line 12 has no label",),
             setup=lambda d, n: tsv_recipe(d, n, "text\tlabel\n" + ZERO_ONE + "a film\tnan\n" + ZERO_ONE)),
        Case("5 a 'NaN' label", ["validate", "$r"], says=("line 12 has no label",),
             setup=lambda d, n: tsv_recipe(d, n, "text\tlabel\n" + ZERO_ONE + "a film\tNaN\n" + ZERO_ONE)),
        Case("5 validate shows the label set", ["validate", "$r"], rc=0, says=("labels (", "0, 1"),
             setup=lambda d, n: tsv_recipe(d, n, "text\tlabel\n" + ZERO_ONE)),
        Case("6 header sentence<TAB>sentence<TAB>label", ["validate", "$r"], says=("names column 'sentence' twice",),
             setup=lambda d, n: tsv_recipe(d, n, "sentence\tsentence\tlabel\n" + "".join(
                 f"a{i}\tb{i}\t{i % 2}\n" for i in range(8)), columns={"text": "sentence"})),
        Case("7 interpolate neg/pos against 0/1 labels", ["interpolate", "$words/model", "$digits/model", "--alpha",
                                                          ".5", "-o", "$d/out"],
             says=("different label sets cannot be merged",), absent=("out",)),
        Case("7 validate mix.models of another label set", ["validate", "$r"],
             says=("labels ['0', '1'], this run's are ['negative', 'positive']",),
             setup=lambda d, n: merge_recipe(d, n, str(n["digits"] / "model"))),
        Case("7 validate mix.models of another architecture", ["validate", "$r"],
             says=("not this run's architecture",), setup=lambda d, n: merge_recipe(d, n, str(n["wide"]))),
        Case("7 run with mix.models of another label set", ["run", "$r", "--out", "$d/run", "--no-progress"],
             says=("different label sets",), absent=("run",),
             setup=lambda d, n: merge_recipe(d, n, str(n["digits"] / "model"))),
    ]


# --- one-line errors instead of tracebacks, and bounded work --------------------------------------


def chat_recipe(d: Path, names: dict, rows: list, template: str = TEMPLATE, **stage) -> dict:
    """Chat fine-tuning of the tiny Llama on ``rows`` (conversations), one LoRA step."""
    data = write(d / "chat.jsonl", "".join(json.dumps({"messages": m}) + "\n" for m in rows))
    r = {"name": "chat", "task": "causal_lm",
         "model": {"name": str(names["llama"]), "max_length": 32, "chat_template": template},
         "data": {"train": str(data), "columns": {"messages": "messages"}},
         "stages": [{"max_steps": 1, "batch_size": 4, "optimizer": {"lr": 1e-3}, "select": [{"name": "lora", "r": 2}],
                     **stage}], "generation": {"max_new_tokens": 2}}
    return {"r": write_recipe(d / "r.yaml", r)}


def talk(answer: str = "fine", first: str = "user") -> list[dict]:
    second = "assistant" if first == "user" else "user"
    return [{"role": first, "content": "how are you"}, {"role": second, "content": answer}]


CONVERSATIONS = [talk(f"fine {i}") for i in range(12)]


def damaged(d: Path, names: dict, how: str) -> dict:
    """A copy of the plain classifier, broken ``how``."""
    folder = d / "model"
    shutil.copytree(names["classifier"], folder)
    weights = folder / "model.safetensors"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "empty":
        weights.write_bytes(b"")
    else:  # model code of its own, which must never run
        config = json.loads((folder / "config.json").read_text())
        config.update(model_type="homemade", auto_map={"AutoConfig": "configuration_homemade.HomemadeConfig"})
        (folder / "config.json").write_text(json.dumps(config))
        write(folder / "configuration_homemade.py", f"open({str(d / 'code-ran')!r}, 'w')\n")
    return {"m": folder}


PICKLE = """
import os, sys, torch
class Pickled:
    def __reduce__(self):
        return os.system, (f"touch {sys.argv[2]}",)
torch.save({"torch": Pickled()}, sys.argv[1])
"""


def pickled_rng(d: Path, names: dict) -> None:
    run = rewind(Path(shutil.copytree(names["ck"], d / "run")))
    done = execute([PY, "-c", PICKLE, str(run / "checkpoints" / "step-2" / "rng.pt"), str(d / "pickle-ran")], d)
    if done.rc != 0:
        raise RuntimeError(done.err[-500:])


def flipped_data(d: Path, names: dict) -> dict:
    """A run killed after step-2, whose data then had every label flipped."""
    path, run = checkpointed_run(d, names)
    rewind(run)
    flip = {"positive": "negative", "negative": "positive"}
    lines = (d / "data.csv").read_text().splitlines()
    write(d / "data.csv", "\n".join([lines[0]] + [f"{t},{flip[label]}" for t, label in
                                                  (line.rsplit(",", 1) for line in lines[1:])]) + "\n")
    return {"r": path}


def corrupt_latest(d: Path, names: dict) -> None:
    run = rewind(Path(shutil.copytree(names["ck"], d / "run")))
    (run / "checkpoints" / "latest").write_bytes(b"\xff\xfe\x00garbage")


def bounded_generation(d: Path, names: dict, done: Done) -> list[str]:
    record = json.loads(done.out or "{}")
    words = len(record.get("generated", "").split())
    return [] if 0 < words <= 64 else [f"{words} words generated by a 64-position model"]


def whole_error_lines(d: Path, names: dict, done: Done) -> list[str]:
    """Under torchrun each process may refuse: every error line whole, never two on one line."""
    refusal = "error: distributed.strategy fsdp: multi-task recipes train with ddp for now"
    ours = [line for line in done.err.splitlines() if "error: " in line]
    whole = all(line == refusal or line.startswith("error: terminated; continue from") for line in ours)
    return [] if refusal in ours and whole and len(ours) <= 2 else [f"error lines: {ours}"]


def multi_task(d: Path, names: dict) -> dict:
    conll = write(d / "ner.conll", "".join("john NN O I-PER\nwent NN O O\nto NN O O\nparis NN O I-LOC\n\n"
                                           for _ in range(8)))
    r = {"name": "mt", "task": "multi_task", "model": {"name": str(names["bert"]), "max_length": 32},
         "tasks": [{"name": "a", "task": "classification", "data": {"train": str(names["words_csv"])}},
                   {"name": "b", "task": "token_classification", "data": {"train": str(conll)}}],
         "stages": [{"max_steps": 1, "batch_size": 4}]}
    return {"r": write_recipe(d / "r.yaml", r)}


def lock_written(folder: str) -> Callable[[Path, dict, Done], list[str]]:
    def check(d: Path, names: dict, done: Done) -> list[str]:
        return [f"wrote {folder}/.hybridft-lock"] if (d / fill(folder, names) / ".hybridft-lock").exists() else []
    return check


def one_line_cases() -> list[Case]:
    r = {"setup": lambda d, n: {"r": recipe(d, n)}}
    run = ["run", "$r", "--no-progress", "--out"]
    return [
        Case("run --out on a read-only mount (new folder)", [*run, "$d/ro/x"], runner="read_only",
             says=("Read-only file system; choose another output folder",), **r),
        Case("run --out on a read-only mount (the mount itself)", [*run, "$d/ro"], runner="read_only",
             says=("Read-only file system; choose another output folder",), **r),
        Case("interpolate -o on a read-only mount", [*INTERPOLATE, "--alpha", ".5", "-o", "$d/ro/x"],
             runner="read_only", says=("Read-only file system; choose another output folder",)),
        Case("run --out the recipe's own folder", [*run, "$d"], says=("holds no hybridft run",),
             check=lock_written("$d"), expect="no .hybridft-lock", **r),
        Case("run --out $HOME", [*run, "$d/home"], says=("holds no hybridft run",), env={"HOME": "$d/home"},
             keep=("home/",), check=lock_written("$d/home"), expect="no .hybridft-lock",
             setup=lambda d, n: (plant(d, "home/.bashrc"), {"r": recipe(d, n)})[1]),
        Case("run --out a non-empty folder of the user's", [*run, "$d/mine"], says=("holds no hybridft run",),
             keep=("mine/",), check=lock_written("$d/mine"), expect="no .hybridft-lock",
             setup=lambda d, n: (plant(d, "mine/thesis.tex"), {"r": recipe(d, n)})[1]),
        Case("run --out /", [*run, "/"], says=("holds no hybridft run",), absent=("/.hybridft-lock",), **r),
        Case("interpolate -o a non-empty folder of the user's", [*INTERPOLATE, "--alpha", ".5", "-o", "$d/mine"],
             says=("holds no hybridft model",), keep=("mine/",), check=lock_written("$d/mine"), expect="no .hybridft-lock",
             setup=lambda d, n: plant(d, "mine/thesis.tex")),
        Case("override name=[ (not YAML)", ["validate", "$r", "name=["], says=("override name=[: not a valid value",),
             **r),
        Case("override with a !!python tag", ["validate", "$r", "name=!!python/object/apply:os.system [touch $d/pwned]"],
             says=("could not determine a constructor for the tag",), absent=("pwned",), **r),
        Case("predict on a truncated model.safetensors", ["predict", "$m", "--text", "a good film"],
             says=("model.safetensors is damaged or incomplete",), setup=lambda d, n: damaged(d, n, "truncated")),
        Case("predict on an empty model.safetensors", ["predict", "$m", "--text", "a good film"],
             says=("model.safetensors is damaged or incomplete",), setup=lambda d, n: damaged(d, n, "empty")),
        Case("eval on a truncated model.safetensors", ["eval", "$m", "$words_csv"],
             says=("model.safetensors is damaged or incomplete",), setup=lambda d, n: damaged(d, n, "truncated")),
        Case("interpolate from a truncated model.safetensors", ["interpolate", "$bert", "$m", "--alpha", ".5", "-o",
                                                                "$d/out"],
             says=("model.safetensors is damaged or incomplete",), absent=("out",),
             setup=lambda d, n: damaged(d, n, "truncated")),
        Case("chat: a chat template that is not Jinja", ["run", "$r", "--out", "$d/run", "--no-progress"],
             says=("chat template",), absent=("run",),
             setup=lambda d, n: chat_recipe(d, n, CONVERSATIONS, "{% for m in messages %}{{ m['content'] }")),
        Case("chat: a template that calls raise_exception", ["run", "$r", "--out", "$d/run", "--no-progress"],
             says=("roles must alternate",), absent=("run",),
             setup=lambda d, n: chat_recipe(d, n, CONVERSATIONS, "{{ raise_exception('roles must alternate') }}")),
        Case("chat: a conversation that starts with the assistant", ["run", "$r", "--out", "$d/run", "--no-progress"],
             says=("line 13",), absent=("run",),
             setup=lambda d, n: chat_recipe(d, n, CONVERSATIONS + [talk("hi", first="assistant")])),
        Case("model.compile without a C++ compiler", [*run, "$d/run", "model.compile=true"],
             env={"CXX": "no-such-compiler++"}, says=("model.compile needs a C++ compiler",), absent=("run",), **r),
        Case("optimizer.betas=[1.5,0.9]", ["validate", "$r", "stages.0.optimizer.betas=[1.5,0.9]"],
             says=("stages.0.optimizer.betas.0: Input should be less than 1",), **r),
        Case("resume from a checkpoint whose rng.pt is pickled", ["run", "$ck_recipe", "--out", "$d/run", "--resume",
                                                                 "--no-progress"],
             says=("rng.pt holds pickled Python objects",), absent=("pickle-ran", "run/model"), setup=pickled_rng),
        Case("predict on a folder with model code of its own", ["predict", "$m", "--text", "a good film"],
             says=("needs model code of its own",), absent=("code-ran",),
             setup=lambda d, n: damaged(d, n, "remote code")),
        Case("eval on a folder with model code of its own", ["eval", "$m", "$words_csv"],
             says=("needs model code of its own",), absent=("code-ran",),
             setup=lambda d, n: damaged(d, n, "remote code")),
        Case("interpolate from a folder with model code of its own",
             ["interpolate", "$bert", "$m", "--alpha", ".5", "-o", "$d/out"],
             says=("needs model code of its own",), absent=("code-ran", "out"),
             setup=lambda d, n: damaged(d, n, "remote code")),
        Case("interpolate -o SAME while another holds it", [*INTERPOLATE, "--alpha", ".5", "-o", "$d/out"],
             runner="locked", says=("is in use by another hybridft run (PID $holder)",), absent=("out/model.safetensors",)),
        Case("torchrun: both processes refuse (fsdp multi-task)",
             ["run", "$r", "--out", "$d/run", "--no-progress", "distributed.strategy=fsdp"], rc=1, runner="torchrun",
             one_line=False, absent=("run",), check=whole_error_lines, setup=multi_task,
             expect="each error line whole, no frame of hybridft's"),
        Case("predict --max-new-tokens 100000", ["predict", "$gpt2", "--text", "der hund rennt", "--max-new-tokens",
                                                 "100000", "--no-progress"], rc=0, check=bounded_generation,
             expect="at most 64 words"),
        Case("two LoRA entries on one module", ["validate", "$r"],
             says=("select entries 0 and 1 are both lora on",),
             setup=lambda d, n: {"r": recipe(d, n, select=[{"name": "lora", "r": 8, "target_modules": ["query"]},
                                                           {"name": "lora", "r": 4, "target_modules": ["query"]}])}),
        Case("resume after every label flipped", ["run", "$r", "--out", "$d/run", "--resume", "--no-progress"],
             says=("the data changed since step-2 was written: data.train", "--allow-changed-data"),
             absent=("run/model",), setup=flipped_data),
        Case("resume after the data changed, --allow-changed-data",
             ["run", "$r", "--out", "$d/run", "--resume", "--allow-changed-data", "--no-progress"], rc=0,
             says=("resuming from step-2",), setup=flipped_data),
        Case("resume with a corrupt checkpoints/latest", ["run", "$ck_recipe", "--out", "$d/run", "--resume",
                                                          "--no-progress"],
             says=("checkpoints/latest is corrupt", "the newest complete checkpoint is step-2"), absent=("run/model",),
             setup=corrupt_latest),
        Case("SIGTERM during a run", ["run", "$r", "--out", "$d/run", "--no-progress"], rc=143, runner="sigterm",
             says=("error: terminated; continue from the last checkpoint with: hybridft run", "--resume"),
             setup=lambda d, n: {"r": recipe(d, n, max_steps=100000, epochs=10000, eval_every=50)}),
    ]


# --- paths and API --------------------------------------------------------------------------------


def extends_with_mix_models(d: Path, names: dict) -> dict:
    """A base recipe in recipes/ whose mix.models is relative to it; the variant two folders away."""
    shutil.copytree(names["words"] / "model", d / "recipes" / "models" / "m")
    base = recipe_dict(names)
    base["stages"].append({"name": "merge", "mix": {"method": "task_arithmetic", "models": ["models/m"]}})
    write_recipe(d / "recipes" / "base.yaml", base)
    return {"r": write_recipe(d / "studies" / "deep" / "v.yaml", {"extends": "../../recipes/base.yaml"})}


def shell_folder(d: Path, names: dict) -> dict:
    """The user's shell in work/, the recipe in recipes/: overrides name work/'s files."""
    shutil.copytree(names["bert"], d / "work" / "models" / "teacher")
    shutil.copytree(names["words"] / "model", d / "work" / "models" / "m")
    sentiment_csv(d / "work" / "pool.csv", 30)
    r = recipe_dict(names)
    r["stages"].append({"name": "merge", "mix": {"method": "task_arithmetic", "models": ["stage:s0"]}})
    return {"r": write_recipe(d / "recipes" / "r.yaml", r)}


def api_recipe(d: Path, names: dict) -> dict:
    return {"r": recipe(d, names)}


def paths_and_api_cases() -> list[Case]:
    api = {"runner": "api", "setup": api_recipe, "says": ("HybridftError (1 line): ",)}
    work = {"cwd": "$d/work", "setup": shell_folder, "rc": 0}
    distill = "stages.0.objectives=[{name: task}, {name: distill, teacher: models/teacher}]"
    return [
        Case("extends: a base's relative mix.models from another folder", ["validate", "$r"], rc=0,
             setup=extends_with_mix_models),
        Case("override data.unlabeled.path relative to the shell", ["validate", "$r", "data.unlabeled.path=pool.csv",
             "stages.0.objectives=[{name: task}, {name: mlm, source: unlabeled}]"], **work),
        Case("override a teacher relative to the shell", ["validate", "$r", distill], **work),
        Case("override mix.models relative to the shell", ["validate", "$r", "stages.1.mix.models=[models/m]"], **work),
        Case("API run(None)", code="hybridft.run(None)", **{**api, "says": (
            "HybridftError (1 line): recipe: give a YAML file's path, a dict or a Recipe, not NoneType",)}),
        Case("API run(overrides='seed=1')", code="hybridft.run('$r', out='$d/run', overrides='seed=1')",
             absent=("run",), **{**api, "says": ("HybridftError (1 line): overrides: give a dict",)}),
        Case("API run(out=123)", code="hybridft.run('$r', out=123)", **{**api, "says": (
            "HybridftError (1 line): out: give a folder's path",)}),
        Case("API predict([None])", code="hybridft.load('$words/model').predict([None])", **{**api, "says": (
            "HybridftError (1 line): texts: item 0 is NoneType None, not a str",)}),
        Case("API predict(batch_size=0)", code="hybridft.load('$words/model').predict(['good'], batch_size=0)",
             **{**api, "says": ("HybridftError (1 line): batch_size must be a whole number above 0, got 0",)}),
        Case("API predict(pairs=True) on a single-text model",
             code="hybridft.load('$words/model').predict(['good\\tfilm'], pairs=True)",
             **{**api, "says": ("HybridftError (1 line): pairs=True (--pair): this model was trained on single texts",)}),
        Case("API load/predict leave transformers' logging as set", rc=0, runner="api", says=("verbosity kept",),
             code="""
                 from transformers.utils import logging
                 logging.set_verbosity_info()
                 hybridft.load('$words/model').predict(['a good film'])
                 print('verbosity kept' if logging.get_verbosity() == logging.INFO else 'verbosity changed')"""),
        Case("API run leaves the global random generators", rc=0, runner="api", setup=api_recipe,
             says=("generators kept",), code="""
                 import random, numpy as np, torch
                 def draws():
                     return random.random(), float(np.random.rand()), float(torch.rand(1))
                 random.seed(11), np.random.seed(11), torch.manual_seed(11)
                 expected = draws()
                 random.seed(11), np.random.seed(11), torch.manual_seed(11)
                 hybridft.run('$r', out='$d/run', progress=False, seed=5)
                 moved = [g for g, a, b in zip(('random', 'numpy', 'torch'), draws(), expected) if a != b]
                 print('generators kept' if not moved else f"generators moved: {', '.join(moved)}")"""),
        Case("two stages named 'first'", ["validate", "$r", "stages=[{name: first}, {name: first}]"],
             says=("stages.1: the name 'first' is already stage 0's",), setup=api_recipe),
        Case("interpolate --scale -1", [*INTERPOLATE, "--method", "task_arithmetic", "--scale", "-1", "-o", "$d/out"],
             says=("--scale must be a finite number above 0, got -1.0",), absent=("out",)),
        Case("interpolate --seed -5", [*INTERPOLATE, "--method", "dare_linear", "--density", ".5", "--seed", "-5",
                                       "-o", "$d/out"], says=("--seed must be a whole number from 0",), absent=("out",)),
    ]


# --- messages -------------------------------------------------------------------------------------


def gzipped(d: Path, names: dict) -> dict:
    import gzip

    rows = [{"text": f"the film {i}", "label": i % 2} for i in range(10)]
    (d / "d.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return {"r": recipe(d, names, d / "d.jsonl.gz")}


def messages_cases() -> list[Case]:
    return [
        Case("pair line without a tab after empty lines", ["predict", "$classifier", "--pair", "--input", "-"],
             stdin="a film\tgood\n\n\nno tab here\n", says=("line 4 has no tab",)),
        Case(".jsonl.gz data", ["validate", "$r"], rc=0, says=("labels (", "0, 1"), setup=gzipped),
        Case("a CSV named .tsv", ["validate", "$r"], says=("separated by commas: set data.format: csv",),
             setup=lambda d, n: tsv_recipe(d, n, "sentence,label\n" + "".join(f"a{i},{i % 2}\n" for i in range(6)),
                                           columns={"text": "sentence"})),
        Case("validate /dev/null", ["validate", "/dev/null"], says=("recipe /dev/null is not a regular file",)),
        Case("every unknown key at once", ["validate", "$r", "foo=1", "bar=2", "stages.0.qux=1"],
             says=("unknown key 'foo'", "unknown key 'bar'", "unknown key 'qux'"),
             setup=lambda d, n: {"r": recipe(d, n)}),
        Case("peft type lora (the grammar slip)", ["validate", "$r", "stages.0.select=[{name: peft, type: lora}]"],
             says=("it has a selector of its own: use the lora selector",), setup=lambda d, n: {"r": recipe(d, n)}),
        Case("interpolate --weights abc", [*INTERPOLATE, "--weights", "abc", "-o", "$d/out"],
             says=("invalid weights value: 'abc'",), absent=("out",)),
    ]


# --- chat -----------------------------------------------------------------------------------------


def report_says(key: str, wanted) -> Callable[[Path, dict, Done], list[str]]:
    """The run's report.json holds ``wanted`` at data.``key`` (a dotted path)."""
    def check(d: Path, names: dict, done: Done) -> list[str]:
        report = d / "run" / "report.json"
        value = json.loads(report.read_text())["data"] if report.is_file() else {}
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return [] if value == wanted else [f"report data.{key} = {value}, not {wanted}"]
    return check


def long_prompts(d: Path, names: dict) -> dict:
    """Prompt/response rows, a quarter with a prompt longer than max_length (cut, so no example)."""
    rows = [{"prompt": "the film", "response": "good"}] * 12 + [{"prompt": "the film " * 40, "response": "bad"}] * 4
    data = write(d / "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    r = {"name": "lm", "task": "causal_lm", "model": {"name": str(names["llama"]), "max_length": 16},
         "data": {"train": str(data), "validation": str(data), "columns": {"prompt": "prompt", "response": "response"}},
         "stages": [{"max_steps": 1, "batch_size": 4, "select": [{"name": "lora", "r": 2}]}],
         "generation": {"max_new_tokens": 2}}
    return {"r": write_recipe(d / "r.yaml", r)}


def empty_line_record(d: Path, names: dict, done: Done) -> list[str]:
    records = [json.loads(line) for line in done.out.splitlines() if line.startswith("{")]
    if len(records) == 2 and records[1] == {"input": "", "error": "empty text"}:
        return []
    return [f"records {records}"]


def chat_cases() -> list[Case]:
    train = ["run", "$r", "--out", "$d/run", "--no-progress"]
    tool = [{"role": "user", "content": "what time is it"},
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function",
                                                                 "function": {"name": "now", "arguments": "{}"}}]}]
    return [
        Case("chat: empty assistant turns", train, rc=0,
             check=report_says("train.skipped_empty_assistant", 2), expect="report: 2 skipped",
             setup=lambda d, n: chat_recipe(d, n, CONVERSATIONS + [talk(""), talk("  \n")])),
        Case("chat: a turn with tool_calls", train, says=("has tool calls",), absent=("run",),
             setup=lambda d, n: chat_recipe(d, n, CONVERSATIONS + [tool])),
        Case("causal LM: rows_used counts only rows that made an example", train, rc=0,
             check=report_says("rows_used.validation", 12), setup=long_prompts,
             expect="report: rows_used 12 of 16"),
        Case("generation: an empty line's record uses 'input'", ["predict", "$llama", "--input", "-",
                                                                 "--max-new-tokens", "2", "--no-progress"],
             rc=0, stdin="hello there\n\n", check=empty_line_record,
             expect="2nd record {input: '', error}"),
    ]


SECTIONS = {"data loss": data_loss_cases, "one-line errors": one_line_cases, "paths and API": paths_and_api_cases,
            "messages": messages_cases, "chat": chat_cases}


# --- the sweep ------------------------------------------------------------------------------------


def unavailable() -> dict[str, str]:
    """Runners this machine cannot honour, with what they need."""
    with tempfile.TemporaryDirectory() as mount:
        probe = subprocess.run(["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o ro tmpfs "$0" && ! touch "$0/x"',
                                mount], capture_output=True)
    return {} if probe.returncode == 0 else {"read_only": "a read-only mount: unshare -m and mount (root)"}


def sweep(base: Path, names: dict, only: str, jobs: int) -> dict:
    """Every section's cases whose name holds ``only``, ``jobs`` at a time, each line printed in
    order; the counts of ok (True), failed (False) and skipped (None) cases."""
    counts = {True: 0, False: 0, None: 0}
    for section, cases in SECTIONS.items():
        chosen = [c for c in cases() if only in c.name]
        if not chosen:
            continue
        print(f"\n## {section}\ncase | expected | got | verdict", flush=True)
        first = sum(counts.values())
        folders = [base / f"{first + i:02d}" for i in range(len(chosen))]
        with ThreadPoolExecutor(jobs) as pool:
            for line, passed in pool.map(lambda c, f: sweep_one(c, f, names), chosen, folders):
                print(line, flush=True)
                counts[passed] += 1
    return counts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-k", default="", help="only the cases whose name holds this text")
    p.add_argument("--jobs", type=int, default=2, help="cases run at once (each is one process)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="hybridft-hostile-"))
    started = time.time()
    try:
        names = {**shared_inputs(base / "shared", args.jobs), "skip": unavailable()}
        print(f"shared inputs ready in {time.time() - started:.0f} s", flush=True)
        counts = sweep(base / "cases", names, args.k, args.jobs)
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        print(f"\n{counts[True]} ok, {counts[False]} failed, {counts[None]} skipped "
              f"({time.time() - started:.0f} s, {used.ru_utime + used.ru_stime:.0f} s of CPU in its processes)")
        return 1 if counts[False] else 0
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)

if __name__ == "__main__":
    sys.exit(main())
