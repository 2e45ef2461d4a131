"""Bad input and faults that must end as one line ``error: ...`` (exit 2), never a traceback, and
never with something written where it was refused (issue 37)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from hybridft.cli import main
from hybridft.folders import RunLock

from .conftest import base_recipe, write_recipe
from .helpers import one_line_error


class Recorder:
    """A stderr that keeps every write call apart."""

    def __init__(self):
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_an_error_line_is_written_in_one_piece(tmp_path, monkeypatch):
    """Under torchrun every process writes to one stderr: a line written in two pieces (the text,
    then the newline) interleaves with another process's line."""
    stderr = Recorder()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    written = [w for w in stderr.writes if w]
    assert len(written) == 1 and written[0].startswith("error: ") and written[0].endswith("\n")
    assert written[0].count("\n") == 1


def test_sigterm_during_a_run_says_how_to_resume(tiny_model, sentiment_csv, tmp_path, capsys, monkeypatch):
    import hybridft.api

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs before this ends
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr(hybridft.api, "run_recipe", terminated)
    path = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, sentiment_csv, max_steps=1))
    before = signal.getsignal(signal.SIGTERM)
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 143
    assert capsys.readouterr().err.strip() == (f"error: terminated; continue from the last checkpoint with: "
                                               f"hybridft run {path} --out {tmp_path / 'run'} --resume")
    assert signal.getsignal(signal.SIGTERM) is before  # the command's handler was only for the command


def test_only_the_main_process_reports_an_interruption(tiny_model, sentiment_csv, tmp_path, capsys, monkeypatch):
    """Ctrl-C and torchrun's SIGTERM reach every process; one resume command is enough."""
    import hybridft.api

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hybridft.api, "run_recipe", interrupted)
    monkeypatch.setenv("RANK", "1")
    path = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, sentiment_csv, max_steps=1))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err == ""


# --- output folders: decided before anything is written, one line when they cannot be written --------------


@pytest.fixture(scope="module")
def classifier_dir(tiny_model, tmp_path_factory) -> Path:
    """A plain transformers classification folder (what interpolate and predict accept)."""
    from transformers import AutoTokenizer

    from .helpers import tiny_classifier

    folder = tmp_path_factory.mktemp("classifier")
    tiny_classifier(tiny_model).save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    return folder


@pytest.fixture
def read_only(tmp_path, monkeypatch) -> Path:
    """A folder on a read-only mount (root writes through chmod, so the mount is imitated): creating
    or opening for writing anything under it fails with EROFS."""
    mount = tmp_path / "ro"
    (mount / "empty").mkdir(parents=True)
    real_open, real_mkdir = os.open, os.mkdir

    def refused(path) -> bool:
        return str(Path(path).absolute()).startswith(str(mount))

    def fail(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def fake_open(path, flags, *args, **kwargs):
        if refused(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            fail(path)
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        fail(path) if refused(path) else real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    return mount


@pytest.mark.parametrize("folder", ["new", "empty"])
def test_a_read_only_output_folder_is_one_line(tiny_model, sentiment_csv, classifier_dir, read_only, tmp_path,
                                               capsys, folder):
    recipe = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, sentiment_csv, max_steps=1))
    out = read_only / folder
    assert main(["run", str(recipe), "--out", str(out), "--no-progress"]) == 2
    assert "Read-only file system; choose another output folder" in one_line_error(capsys)
    assert main(["interpolate", str(tiny_model), str(classifier_dir), "--alpha", ".5", "-o", str(out)]) == 2
    assert "Read-only file system; choose another output folder" in one_line_error(capsys)


def test_a_refused_output_folder_gets_no_lock_written_into_it(tiny_model, sentiment_csv, classifier_dir, tmp_path,
                                                              capsys):
    """The recipe's own folder, a home folder, any non-empty folder hybridft did not write."""
    recipe = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, sentiment_csv, max_steps=1))
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["run", str(recipe), "--out", str(tmp_path), "--no-progress"]) == 2
    assert "holds no hybridft run" in one_line_error(capsys)
    assert main(["run", str(recipe), "--out", str(tmp_path), "--resume", "--no-progress"]) == 2
    assert "nothing to resume" in one_line_error(capsys)
    assert main(["interpolate", str(tiny_model), str(classifier_dir), "--alpha", ".5", "-o", str(tmp_path)]) == 2
    assert "holds no hybridft model" in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no .hybridft-lock


def test_two_interpolations_into_one_folder_give_one_error(tiny_model, classifier_dir, tmp_path, capsys):
    out = tmp_path / "mixed"
    with RunLock(out):  # another interpolate is writing it
        assert main(["interpolate", str(tiny_model), str(classifier_dir), "--alpha", ".5", "-o", str(out)]) == 2
        assert f"in use by another hybridft run (PID {os.getpid()})" in one_line_error(capsys)
    assert not out.exists()
    assert main(["interpolate", str(tiny_model), str(classifier_dir), "--alpha", ".5", "-o", str(out)]) == 0
    assert (out / "model.safetensors").is_file()


# --- resuming: the data, the latest pointer and the files of a checkpoint ---------------------------------


def train_with_checkpoints(tiny_model, folder: Path) -> tuple[Path, Path]:
    """(recipe, run folder) of a finished 4-step run that kept its checkpoints step-2 and step-4."""
    from .conftest import sentiment_rows

    data = folder / "data.csv"
    data.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in sentiment_rows(40)))
    recipe = base_recipe(tiny_model, data, max_steps=4, eval_every=2)
    recipe["output"] = {"keep_checkpoints": 10, "keep_checkpoints_after_run": True}
    recipe = write_recipe(folder / "r.yaml", recipe)
    assert main(["run", str(recipe), "--out", str(folder / "run"), "--no-progress"]) == 0
    return recipe, folder / "run"


@pytest.fixture(scope="module")
def finished(tiny_model, tmp_path_factory) -> tuple[Path, Path]:
    return train_with_checkpoints(tiny_model, tmp_path_factory.mktemp("finished"))


def rewound(finished, tmp_path, checkpoint: str = "step-2") -> Path:
    from .helpers import rewind_to

    out = tmp_path / "run"
    shutil.copytree(finished[1], out)
    rewind_to(out, checkpoint)
    return out


def test_resume_on_changed_data_is_refused_unless_allowed(tiny_model, tmp_path, capsys):
    recipe, out = train_with_checkpoints(tiny_model, tmp_path)
    from .helpers import rewind_to

    rewind_to(out, "step-2")
    data = tmp_path / "data.csv"
    flipped = {"positive": "negative", "negative": "positive"}
    lines = data.read_text().splitlines()
    data.write_text("\n".join([lines[0]] + [f"{t},{flipped[label]}" for t, label in
                                            (line.rsplit(",", 1) for line in lines[1:])]) + "\n")
    capsys.readouterr()
    assert main(["run", str(recipe), "--out", str(out), "--resume", "--no-progress"]) == 2
    message = one_line_error(capsys)
    assert f"the data changed since step-2 was written: data.train ({data})" in message
    assert "--allow-changed-data" in message and not (out / "model").exists()
    assert main(["run", str(recipe), "--out", str(out), "--allow-changed-data", "--no-progress"]) == 2
    assert "is for resuming a run" in one_line_error(capsys)
    assert main(["run", str(recipe), "--out", str(out), "--resume", "--allow-changed-data", "--no-progress"]) == 0
    assert "resuming from step-2" in capsys.readouterr().err
    assert json.loads((out / "checkpoints" / "stage-0-done" / "inputs.json").read_text())["data.train"] == \
        hashlib.sha256(data.read_bytes()).hexdigest()  # later checkpoints hold the data they trained on


@pytest.mark.parametrize("pointer", [b"\xff\xfe\x00garbage", b"step-99", b"../step-2", b""])
def test_a_corrupt_latest_pointer_names_the_newest_complete_checkpoint(finished, tmp_path, capsys, pointer):
    out = rewound(finished, tmp_path)
    (out / "checkpoints" / "latest").write_bytes(pointer)
    capsys.readouterr()
    assert main(["run", str(finished[0]), "--out", str(out), "--resume", "--no-progress"]) == 2
    message = one_line_error(capsys)
    assert message.startswith(f"error: {out / 'checkpoints' / 'latest'} is corrupt")
    assert "the newest complete checkpoint is step-2" in message
    assert not (out / "model").exists()  # it did not start over


class Pickled:
    def __reduce__(self):
        return print, ("code from a pickle ran",)


def test_a_pickled_rng_state_in_a_checkpoint_is_one_line(finished, tmp_path, capsys):
    import torch

    out = rewound(finished, tmp_path)
    torch.save({"torch": Pickled()}, out / "checkpoints" / "step-2" / "rng.pt")
    capsys.readouterr()
    assert main(["run", str(finished[0]), "--out", str(out), "--resume", "--no-progress"]) == 2
    message = one_line_error(capsys)
    assert "rng.pt holds pickled Python objects, which hybridft does not load" in message
    assert "code from a pickle ran" not in capsys.readouterr().out


@pytest.mark.parametrize("part", ["optimizer.pt", "scheduler.pt"])
def test_a_checkpoint_without_its_optimizer_or_scheduler_state_is_refused(finished, tmp_path, capsys, part):
    """Resuming without them would restart AdamW's moments or the schedule silently."""
    out = rewound(finished, tmp_path)
    (out / "checkpoints" / "step-2" / part).unlink()
    capsys.readouterr()
    assert main(["run", str(finished[0]), "--out", str(out), "--resume", "--no-progress"]) == 2
    message = one_line_error(capsys)
    assert f"has no {part}: the checkpoint is incomplete" in message and not (out / "model").exists()


def test_a_process_the_checkpoint_has_no_random_state_for_is_told(tmp_path, capsys):
    import torch

    from hybridft.training.checkpoint import load_checkpoint, rng_file, rng_state

    (tmp_path / "state.json").write_text("{}")
    torch.save(rng_state(), tmp_path / rng_file(0))  # written by one process
    assert load_checkpoint(tmp_path, None, process_index=0) == {}
    assert "random state" not in capsys.readouterr().err
    load_checkpoint(tmp_path, None, process_index=1)
    assert "holds no random state for process 1" in capsys.readouterr().err


# --- recipes and overrides ------------------------------------------------------------------------------


@pytest.mark.parametrize("override, expected", [
    ("name=[", "override name=[: not a valid value"),
    ("seed={a: 1", "override seed={a: 1: not a valid value"),
    ('name=!!python/object/apply:os.system ["echo pwned"]', "could not determine a constructor for the tag"),
    ("stages.0.optimizer.betas=[1.5,0.9]", "stages.0.optimizer.betas.0: Input should be less than 1"),
    ("stages.0.optimizer.betas=[0.9,1]", "stages.0.optimizer.betas.1: Input should be less than 1"),
])
def test_bad_override_values_are_one_line(tiny_model, sentiment_csv, tmp_path, capsys, override, expected):
    recipe = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, sentiment_csv, max_steps=1))
    assert main(["validate", str(recipe), override]) == 2
    assert expected in one_line_error(capsys)


# --- model folders that cannot be used ------------------------------------------------------------------


def damage(folder: Path, how: str) -> str:
    """Break a copy of a model folder; the message expected."""
    weights = folder / "model.safetensors"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        return "model.safetensors is damaged or incomplete (Error while deserializing header"
    if how == "empty":
        weights.write_bytes(b"")
        return "model.safetensors is damaged or incomplete"
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="homemade", auto_map={"AutoConfig": "configuration_homemade.HomemadeConfig"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_homemade.py").write_text("raise SystemExit('the folder's code ran')\n")
    return "needs model code of its own (config.json's auto_map, model type 'homemade')"


@pytest.mark.parametrize("how", ["truncated", "empty", "remote code"])
def test_a_model_folder_that_cannot_be_loaded_is_one_line(classifier_dir, sentiment_csv, tiny_model, tmp_path, capsys,
                                                          how):
    folder = tmp_path / "model"
    shutil.copytree(classifier_dir, folder)
    expected = damage(folder, how)
    commands = [["predict", str(folder), "--text", "a good film"], ["eval", str(folder), str(sentiment_csv)],
                ["interpolate", str(tiny_model), str(folder), "--alpha", ".5", "-o", str(tmp_path / "a")]]
    if how != "remote code":  # a pretrained side of another model type is refused as such first
        commands.append(["interpolate", str(folder), str(classifier_dir), "--alpha", ".5", "-o", str(tmp_path / "b")])
    for command in commands:
        assert main(command) == 2, command
        assert expected in one_line_error(capsys)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --- bounded work ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def endless_gpt2(tmp_path_factory) -> Path:
    """A tiny GPT-2 (64 positions) with no end-of-text token: only the length stops its generation."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from .test_generative import word_tokenizer

    folder = tmp_path_factory.mktemp("endless-gpt2")
    tok = word_tokenizer(folder, {"unk_token": "<unk>", "pad_token": "<pad>"}, None)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=None,
                        eos_token_id=None, pad_token_id=tok.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


def test_generation_is_capped_at_the_model_context(endless_gpt2, capsys):
    """100,000 new tokens from a 64-position model: what fits after the prompt, not a traceback
    (positions run out) or hours of work."""
    assert main(["predict", str(endless_gpt2), "--text", "der hund rennt", "--max-new-tokens", "100000",
                 "--no-progress"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert 0 < len(record["generated"].split()) <= 64 - 3


def test_model_compile_without_a_compiler_is_one_line_and_leaves_no_folder(tiny_model, sentiment_csv, tmp_path,
                                                                           capsys, monkeypatch):
    from torch._inductor import config

    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=1)
    recipe["model"]["compile"] = True
    out = tmp_path / "run"
    # inductor's own patch: monkeypatch would delete the entry on undo (it is not in the proxy's __dict__)
    with config.patch({"cpp.cxx": (None, "no-such-compiler++")}):
        code = main(["run", str(write_recipe(tmp_path / "r.yaml", recipe)), "--out", str(out), "--no-progress"])
    assert code == 2 and config.cpp.cxx != (None, "no-such-compiler++")
    assert "model.compile needs a C++ compiler" in one_line_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("select, module", [
    ([{"name": "lora", "r": 8, "target_modules": ["query"]}, {"name": "lora", "r": 4, "target_modules": ["query"]}],
     "bert.encoder.layer.0.attention.self.query (and 1 more)"),
    ([{"name": "lora", "r": 8}, {"name": "lora", "r": 4, "target_modules": ["value"], "layers": [1]}],
     "bert.encoder.layer.1.attention.self.value"),
    ([{"name": "peft", "type": "loha", "r": 2, "target_modules": ["key"]},
      {"name": "peft", "type": "loha", "r": 4, "target_modules": ["key"], "layers_to_transform": [0]}],
     "bert.encoder.layer.0.attention.self.key"),
])
def test_two_entries_of_one_type_on_one_module_are_refused(tiny_model, sentiment_csv, tmp_path, capsys, select,
                                                           module):
    """The second entry's modules would replace the first's, which would silently not train there."""
    recipe = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, sentiment_csv, max_steps=1, select=select))
    for command in (["validate", str(recipe)], ["run", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]):
        assert main(command) == 2
        message = one_line_error(capsys)
        assert f"select entries 0 and 1 are both {select[0]['name']} on {module}" in message
    assert not (tmp_path / "run").exists()


def test_entries_of_one_type_on_other_modules_are_a_union(tiny_model, sentiment_csv, tmp_path, capsys):
    select = [{"name": "lora", "r": 8, "layers": [0]}, {"name": "lora", "r": 4, "layers": [1]},
              {"name": "adapter", "layers": [1]}]
    recipe = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, sentiment_csv, max_steps=1, select=select))
    assert main(["validate", str(recipe)]) == 0
