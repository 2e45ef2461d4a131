"""Issue 24, nothing lost under hostile use: run-folder locks, failed writes, one-class data, and
the rough edges a new user hits. Each test fails without its fix."""

import errno
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from hybridft.folders import RunLock

from .conftest import base_recipe, write_recipe
from .helpers import one_line_error, run_cli

# --- 2. one run at a time in a run folder -------------------------------------------------------------


def test_a_locked_run_folder_refuses_a_second_run_naming_the_holder(tiny_model, sentiment_csv, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, sentiment_csv, max_steps=2))
    out = tmp_path / "run"
    assert run_cli("run", recipe, "--out", out, "--no-progress") == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with RunLock(out):  # a live run holds it
        for extra in ([], ["--overwrite"]):
            assert run_cli("run", recipe, "--out", out, "--no-progress", *extra) == 2
            assert f"in use by another hybridft run (PID {os.getpid()})" in one_line_error(capsys)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing touched


def test_two_runs_started_into_one_folder_give_one_run_and_one_error(tiny_model, sentiment_csv, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, sentiment_csv, max_steps=400, eval_every=100))
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "hybridft", "run", str(recipe), "--out", str(out), "--no-progress"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = out / ".hybridft-lock"
    deadline = time.monotonic() + 120
    while not (lock.is_file() and lock.read_text().strip() == str(first.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = run_cli("run", recipe, "--out", out, "--no-progress", "--overwrite")
    message = one_line_error(capsys)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert second == 2 and f"PID {first.pid}" in message
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 401))  # one run's lines, in order
    assert json.loads((out / "report.json").read_text())["stages"][0]["steps"] == 400


def test_a_stale_lock_of_a_killed_run_does_not_block_resume(tiny_model, sentiment_csv, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from hybridft.folders import RunLock; l = RunLock(Path(sys.argv[1])).__enter__(); "
                               "print('held', flush=True); time.sleep(600)", str(out)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    recipe = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, sentiment_csv, max_steps=2))
    assert run_cli("run", recipe, "--out", out, "--no-progress") == 0  # the kernel released it


# --- 3. every kind of write failing: one line, nothing half-written, --resume bit-identical -------------


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def safetensors_full(*args, **kwargs):
    raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")


def fail_on_call(n: int, error):
    calls = []

    def hook(real):
        def patched(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                error()
            return real(*args, **kwargs)
        return patched
    return hook


WRITES = {  # kind -> (module path, attribute, failing call, how it fails)
    "checkpoint": ("hybridft.training.checkpoint", "save_model", 2, safetensors_full),
    "best weights": ("hybridft.training.best", "save_file", 2, safetensors_full),
    "model": ("hybridft.model_io", "write_model", 1, enospc),
    "report": ("hybridft.report.summary", "write_atomic", 2, enospc),
    "metrics": ("hybridft.training.metrics_log.MetricsLog", "_append", 5, enospc),
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model):
    from .conftest import sentiment_rows

    folder = tmp_path_factory.mktemp("uninterrupted")
    data = folder / "data.csv"
    data.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in sentiment_rows(80)))
    recipe = base_recipe(tiny_model, data, max_steps=6, eval_every=2, select=[{"name": "layers", "top_k": 1}],
                         optimizer={"lr": 2e-2})
    recipe["metric"] = "loss"  # falls at every evaluation here: the best weights are written each time
    recipe = write_recipe(folder / "r.yaml", recipe)
    assert run_cli("run", recipe, "--out", folder / "run", "--no-progress") == 0
    return recipe, load_file(folder / "run" / "model" / "model.safetensors")


@pytest.mark.parametrize("kind", sorted(WRITES))
def test_a_failed_write_is_one_line_and_resume_ends_bit_identical(uninterrupted, tmp_path, capsys, monkeypatch, kind):
    import importlib

    recipe, expected = uninterrupted
    where, name, call, error = WRITES[kind]
    module_path, _, owner = where.rpartition(".") if where.endswith("MetricsLog") else (where, "", "")
    target = getattr(importlib.import_module(module_path), owner) if owner else importlib.import_module(where)
    monkeypatch.setattr(target, name, fail_on_call(call, error)(getattr(target, name)))
    out = tmp_path / "run"
    assert run_cli("run", recipe, "--out", out, "--no-progress") == 2
    message = one_line_error(capsys)
    assert message.startswith("error: cannot write") and ("No space left" in message or "StorageFull" in message)
    assert "is intact: free space, then continue with --resume" in message
    assert not [p for p in out.rglob("*") if p.name.startswith(".") and "tmp" in p.name]  # nothing half-written
    monkeypatch.undo()
    assert run_cli("run", recipe, "--out", out, "--no-progress", "--resume") == 0
    assert "resuming from " in capsys.readouterr().err
    final = load_file(out / "model" / "model.safetensors")
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)


# --- 4. one class ------------------------------------------------------------------------------------


def test_training_data_with_one_class_is_refused(tiny_model, tmp_path, capsys):
    train = tmp_path / "one.csv"
    train.write_text("text,label\n" + "".join(f"good film {i},pos\n" for i in range(20)))
    validation = tmp_path / "two.csv"
    validation.write_text("text,label\ngood film,pos\nbad film,neg\n")
    for data in ({}, {"validation": str(validation)}, {"labels": ["neg", "pos"]}):
        recipe = base_recipe(tiny_model, train, max_steps=1)
        recipe["data"].update(data)
        assert run_cli("run", write_recipe(tmp_path / "r.yaml", recipe), "--out", tmp_path / "run", "--no-progress") == 2
        assert "train data has a single label ('pos') in" in one_line_error(capsys)
        assert not (tmp_path / "run").exists()


# --- 5, 6, 13, 14: loading and predicting -----------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    from .conftest import sentiment_rows

    folder = tmp_path_factory.mktemp("trained")
    data = folder / "data.csv"
    data.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in sentiment_rows(40)))
    recipe = write_recipe(folder / "r.yaml", base_recipe(tiny_model, data, max_steps=2,
                                                        select=[{"name": "adapter", "reduction_factor": 4}]))
    assert run_cli("run", recipe, "--out", folder / "run", "--no-progress") == 0
    return folder / "run"


def test_a_model_whose_adapters_file_is_missing_is_an_error(trained, tmp_path, capsys):
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(trained / "model", broken)
    (broken / "adapters.safetensors").unlink()
    assert run_cli("predict", broken, "--text", "good film") == 2
    assert "lists 4 adapters but adapters.safetensors is missing" in one_line_error(capsys)


def test_predict_keeps_one_record_per_input_and_decides_pairs_from_the_model(trained, tmp_path, capsys):
    lines = tmp_path / "in.txt"
    lines.write_text("good film\n\nbad\tfilm\n   \nawful\n")
    assert run_cli("predict", trained / "model", "--input", lines, "--batch-size", "1", "--no-progress") == 0
    records = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in records] == ["good film", "", "bad\tfilm", "   ", "awful"]  # aligned with the input
    assert [("error" in r) for r in records] == [False, True, False, True, False]
    assert run_cli("predict", trained / "model", "--input", lines, "--pair", "--no-progress") == 2
    assert "this model was trained on single texts" in one_line_error(capsys)  # --pair on a one-text model
    assert run_cli("predict", trained / "model", "--input", tmp_path / "missing-is-not-empty", "--no-progress") == 2
    capsys.readouterr()
    (tmp_path / "empty.txt").write_text("")
    assert run_cli("predict", trained / "model", "--input", tmp_path / "empty.txt") == 2
    assert "no input" in one_line_error(capsys)


def test_messages_point_at_the_fix(trained, tiny_model, tmp_path, capsys):
    assert run_cli("predict", trained, "--text", "good") == 2  # a run folder, not its model
    assert f"is a run folder; its model is {trained / 'model'}" in one_line_error(capsys)
    data = tmp_path / "eval.csv"
    data.write_text("sentence,label\ngood,positive\n")
    assert run_cli("eval", trained / "model", data) == 2
    message = one_line_error(capsys)
    assert "eval data eval.csv: no column 'text'" in message and "--label-column" in message
    (tmp_path / "file").write_text("")
    recipe = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, data, max_steps=1))
    assert run_cli("run", recipe, "--out", tmp_path / "file") == 2
    assert "is a file, not a folder" in one_line_error(capsys)


def test_custom_model_code_is_named_when_it_matters(tiny_model, tmp_path, capsys):
    import shutil

    custom = tmp_path / "custom"
    shutil.copytree(tiny_model, custom)
    config = json.loads((custom / "config.json").read_text())
    (custom / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "modeling.MyModel"}}))
    from hybridft.models import load_model

    load_model(str(custom), "classification", ["a", "b"])  # a known model type: the stock class, said so
    assert "ships its own model code, which is not run without model.trust_remote_code" in capsys.readouterr().err
    (custom / "config.json").write_text(json.dumps({**config, "model_type": "my-own", "auto_map": {}}))
    with pytest.raises(Exception, match="set model.trust_remote_code: true if you trust it"):
        load_model(str(custom), "classification", ["a", "b"])


def test_labels_written_as_numbers_and_as_text_are_refused(tiny_model, tmp_path, capsys):
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps({"text": f"film {i}", "label": [1, "1", "pos"][i % 3]}) + "\n"
                            for i in range(12)))
    recipe = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, data, max_steps=1))
    for command in (["validate", recipe], ["run", recipe, "--out", tmp_path / "run"]):  # validate reads the labels
        assert run_cli(*command) == 2
        assert "label column 'label' mixes numbers and text (e.g. 1 and '1')" in one_line_error(capsys)


# --- 8, 9: tables of odd shape ----------------------------------------------------------------------


def test_a_field_longer_than_the_csv_modules_limit_is_read_and_truncated(tiny_model, tmp_path):
    from hybridft.data.prepare import load_task_data
    from hybridft.models import load_tokenizer
    from hybridft.recipe import validate_recipe

    data = tmp_path / "long.csv"
    data.write_text("text,label\n" + "good " * 60_000 + ",pos\n" + "".join(f"film {i},{['pos', 'neg'][i % 2]}\n"
                                                                           for i in range(9)))
    recipe = validate_recipe(base_recipe(tiny_model, data))
    loaded = load_task_data(recipe, tmp_path, load_tokenizer(str(tiny_model)))
    assert sum(len(ex["input_ids"]) == 32 for ex in loaded.train + loaded.validation) == 1
    assert sum(loaded.stats["truncated"].values()) == 1


def test_an_absurdly_wide_header_is_refused_at_once(tmp_path):
    from hybridft.data.readers import read_table
    from hybridft.errors import HybridftError

    wide = tmp_path / "wide.csv"
    wide.write_text(",".join(f"c{i}" for i in range(500_000)) + "\n")
    started = time.monotonic()
    with pytest.raises(HybridftError, match="more than 10,000 columns"):
        read_table(wide, "auto", "classification", "train")
    assert time.monotonic() - started < 10  # it took 11 minutes before


# --- 10, 11: resuming ------------------------------------------------------------------------------


def test_resume_of_a_complete_run_changes_nothing_and_resume_with_overwrite_is_refused(trained, tmp_path, capsys):
    recipe = trained.parent / "r.yaml"
    before = {p: p.stat().st_mtime_ns for p in trained.rglob("*")}
    assert run_cli("run", recipe, "--out", trained, "--resume", "--no-progress") == 0
    captured = capsys.readouterr()
    assert "holds a complete run: nothing to resume" in captured.err and "validation:" in captured.out
    assert {p: p.stat().st_mtime_ns for p in trained.rglob("*")} == before
    assert run_cli("run", recipe, "--out", trained, "--resume", "--overwrite") == 2
    assert "give one of them" in one_line_error(capsys)


# --- 15, 16: a run nobody watches, files as the umask says ------------------------------------------


def test_without_a_terminal_progress_is_a_status_line_every_so_often(monkeypatch, capsys):
    import hybridft.progress as progress

    monkeypatch.setattr(progress, "STATUS_EVERY_S", 0.0)
    bar = progress.Progress(4, "train s0", show=True)
    for step in range(4):
        bar.update(1, loss=f"{1.0 / (step + 1):.4f}")
    bar.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("train s0: 1/4, loss 1.0000, 0:00 elapsed, ETA")
    assert lines[3].startswith("train s0: 4/4, loss 0.2500")
    assert progress.Progress(4, "quiet", show=False).lines is False


def test_model_files_follow_the_umask(trained):
    mask = os.umask(0)
    os.umask(mask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (trained / "model").iterdir() if p.is_file()}
    assert modes["model.safetensors"] == modes["config.json"] == 0o666 & ~mask
