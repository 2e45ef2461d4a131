"""Issue 37, data loss and silently wrong results: no NaN model is ever written (1), --overwrite never
clears an input of the new run (2) nor anything hybridft did not write (3), temporary names never
take a user's entry (4), and models of other labels or architecture are not merged (7)."""

import json
import os
import shutil

import pytest
import torch

from hybridft.errors import HybridftError
from hybridft.folders import MODEL_MARKER, new_folder, write_atomic

from .conftest import base_recipe, sentiment_rows, write_recipe
from .helpers import one_line_error, run_cli, tiny_classifier


def labeled_csv(path, labels=("negative", "positive"), n: int = 40):
    """The sentiment rows with their two labels renamed (0/1 data from the same sentences)."""
    rename = {"negative": labels[0], "positive": labels[1]}
    path.write_text("text,label\n" + "".join(f"{t},{rename[label]}\n" for t, label in sentiment_rows(n)))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model):
    """Two finished runs of the tiny BERT: labels negative/positive, and 0/1."""
    folder = tmp_path_factory.mktemp("runs")
    for name, labels in (("words", ("negative", "positive")), ("digits", ("0", "1"))):
        data = labeled_csv(folder / f"{name}.csv", labels)
        recipe = write_recipe(folder / f"{name}.yaml", base_recipe(tiny_model, data, max_steps=2))
        assert run_cli("run", recipe, "--out", folder / name, "--no-progress") == 0
    return folder


def copy_run(runs, tmp_path, name: str = "words"):
    shutil.copytree(runs / name, tmp_path / name)
    return tmp_path / name


# --- 1. no NaN model is written -----------------------------------------------------------------


@pytest.mark.parametrize("flags, expected", [
    (["--method", "ties", "--density", ".5", "--scale", "nan"], "--scale must be a finite number above 0"),
    (["--method", "task_arithmetic", "--scale", "inf"], "--scale must be a finite number above 0"),
    (["--method", "ties", "--density", ".5", "--twice", "--weights", "0,0"], "add up to 0"),
    (["--method", "ties", "--density", ".5", "--twice", "--weights", "1,nan"], "finite number, got nan"),
    (["--method", "ties", "--density", ".5", "--twice", "--weights", "inf,1"], "finite number, got inf"),
    (["--method", "ties", "--density", ".5", "--twice", "--weights", "1e308,1e308"], "add up to inf"),
    (["--method", "task_arithmetic", "--scale", "1e30", "--twice", "--weights", "1e30,1e30"], "infinite values"),
])
def test_interpolate_refuses_what_would_write_a_nan_model(runs, tiny_model, tmp_path, capsys, flags, expected):
    model = runs / "words" / "model"
    if "--twice" in flags:
        flags = [f for f in flags if f != "--twice"] + ["--model", model]
    assert run_cli("interpolate", tiny_model, model, *flags, "-o", tmp_path / "out") == 2
    assert expected in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override, expected", [
    ("stages.0.optimizer.lr=.inf", "finite number"),
    ("stages.0.optimizer.betas=[.nan,0.9]", "finite number"),
    ("stages.0.max_grad_norm=.inf", "finite number"),
    ("stages.1.mix.scales=[.nan]", "finite number"),
    ("stages.1.mix.weights=[0,0]", "add up to 0"),
    ("stages.1.mix.weights=[1e308,1e308]", "add up to inf"),
    ("stages.0.select=[{name: peft, type: loha, r: 2, alpha: .nan, target_modules: [query]}]", "alpha: Input should be "
     "a finite number"),
])
def test_validate_refuses_nan_inf_and_zero_weights_anywhere_in_a_recipe(tiny_model, sentiment_csv, tmp_path, capsys,
                                                                       override, expected):
    recipe = base_recipe(tiny_model, sentiment_csv, max_steps=1)
    recipe["stages"].append({"name": "merge", "mix": {"method": "task_arithmetic", "models": ["stage:s0"]}})
    assert run_cli("validate", write_recipe(tmp_path / "r.yaml", recipe), override) == 2
    assert expected in one_line_error(capsys)


def test_a_model_with_nan_weights_is_never_saved(tiny_model, tmp_path):
    from hybridft.model_io import save_folder
    from hybridft.models import load_tokenizer

    model = tiny_classifier(tiny_model)
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    with pytest.raises(HybridftError, match=r"NaN values \(tensor classifier.weight\)"):
        save_folder(model, load_tokenizer(str(tiny_model)), {"task": "classification"}, tmp_path / "m")
    assert os.listdir(tmp_path) == []  # neither the folder nor its temporary sibling


def test_a_mix_stage_refuses_a_nan_model_before_merging(runs, tiny_model, sentiment_csv, tmp_path, capsys):
    broken = tmp_path / "nan-model"
    shutil.copytree(runs / "words" / "model", broken)
    from safetensors.torch import load_file, save_file

    state = load_file(broken / "model.safetensors")
    state["classifier.bias"] = torch.full_like(state["classifier.bias"], float("nan"))
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    recipe = base_recipe(tiny_model, labeled_csv(tmp_path / "d.csv"), max_steps=1)
    recipe["stages"].append({"name": "merge", "mix": {"method": "task_arithmetic", "models": [str(broken)]}})
    assert run_cli("run", write_recipe(tmp_path / "r.yaml", recipe), "--out", tmp_path / "run", "--no-progress") == 2
    assert "has NaN values (tensor classifier.bias)" in one_line_error(capsys)
    assert not (tmp_path / "run" / "model").exists()


# --- 2. --overwrite never clears an input of the new run -----------------------------------------


def test_overwrite_refuses_a_run_that_reads_from_the_folder_it_would_clear(runs, tiny_model, tmp_path, capsys):
    victim = copy_run(runs, tmp_path)
    before = sorted(os.listdir(victim))
    recipe = base_recipe(tiny_model, labeled_csv(tmp_path / "d.csv"), max_steps=1)
    recipe["stages"].append({"name": "merge", "mix": {"method": "task_arithmetic", "models": ["stage:s0"]}})
    recipe = write_recipe(tmp_path / "r.yaml", recipe)
    assert run_cli("run", recipe, "--out", victim, "--overwrite", "--no-progress",
                   f"stages.1.mix.models=[{victim / 'model'}]") == 2
    error = one_line_error(capsys)
    assert "stages.1.mix.models.0" in error and "--overwrite would clear" in error
    assert sorted(os.listdir(victim)) == before and (victim / "model" / "model.safetensors").is_file()
    # a data file inside the old run's model folder, and the model to start from
    assert run_cli("run", recipe, "--out", victim, "--overwrite", "--no-progress",
                   f"data.train={victim / 'model' / 'config.json'}", f"model.name={victim / 'model'}") == 2
    error = one_line_error(capsys)
    assert "data.train" in error and "model.name" in error
    assert sorted(os.listdir(victim)) == before


# --- 3. --overwrite deletes only what hybridft wrote ---------------------------------------------


def test_run_overwrite_keeps_what_the_user_added_to_the_old_run(runs, tiny_model, tmp_path, capsys):
    old = copy_run(runs, tmp_path)
    (old / "NOTES.md").write_text("my notes")
    (old / "plots").mkdir()
    (old / "plots" / "curve.png").write_bytes(b"png")
    (old / "model" / "README.md").write_text("how I made it")
    recipe = write_recipe(tmp_path / "r.yaml", base_recipe(tiny_model, labeled_csv(tmp_path / "d.csv"), max_steps=1))
    assert run_cli("run", recipe, "--out", old, "--overwrite", "--no-progress") == 0
    assert (old / "NOTES.md").read_text() == "my notes" and (old / "plots" / "curve.png").read_bytes() == b"png"
    assert (old / "model" / "README.md").read_text() == "how I made it"
    assert "max_steps: 1" in (old / "recipe.yaml").read_text() and (old / "report.json").is_file()
    assert "kept NOTES.md, model/README.md, plots/" in capsys.readouterr().err


def test_interpolate_overwrite_keeps_what_the_user_added(runs, tiny_model, tmp_path, capsys):
    fine = runs / "words" / "model"
    out = tmp_path / "mixed"
    assert run_cli("interpolate", tiny_model, fine, "--alpha", "0.5", "-o", out) == 0
    (out / "NOTES.txt").write_text("mine")
    (out / "mystuff").mkdir()
    (out / "mystuff" / "a.txt").write_text("a")
    assert run_cli("interpolate", tiny_model, fine, "--alpha", "0.2", "-o", out, "--overwrite") == 0
    assert (out / "NOTES.txt").read_text() == "mine" and (out / "mystuff" / "a.txt").read_text() == "a"
    assert json.loads((out / "hybridft.json").read_text())["mixed"]["alpha"] == 0.2
    assert "kept NOTES.txt, mystuff/" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed"]  # no temporary folder left


# --- 4. temporary names are the process's own ----------------------------------------------------


def test_interpolate_never_takes_a_users_sibling_for_its_temporary(runs, tiny_model, tmp_path):
    fine = runs / "words" / "model"
    sib = tmp_path / "sib"
    for folder in (".m.old", ".m.tmp"):
        (sib / folder).mkdir(parents=True)
        (sib / folder / "keep.txt").write_text(folder)
    (sib / ".n.tmp").write_text("a file")
    assert run_cli("interpolate", tiny_model, fine, "--alpha", "0.5", "-o", sib / "m") == 0
    assert run_cli("interpolate", tiny_model, fine, "--alpha", "0.3", "-o", sib / "m", "--overwrite") == 0
    assert run_cli("interpolate", tiny_model, fine, "--alpha", "0.5", "-o", sib / "n") == 0
    assert (sib / ".m.old" / "keep.txt").read_text() == ".m.old" and (sib / ".m.tmp" / "keep.txt").read_text() == ".m.tmp"
    assert (sib / ".n.tmp").read_text() == "a file"
    assert sorted(os.listdir(sib)) == [".m.old", ".m.tmp", ".n.tmp", "m", "n"]


def test_temporary_files_and_folders_have_names_of_their_own(tmp_path):
    (tmp_path / ".notes.txt.tmp").write_text("the user's")
    write_atomic(tmp_path / "notes.txt", "ours")
    assert (tmp_path / ".notes.txt.tmp").read_text() == "the user's" and (tmp_path / "notes.txt").read_text() == "ours"
    with pytest.raises(RuntimeError), new_folder(tmp_path / "m", MODEL_MARKER) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".m.") and tmp.name != ".m.tmp"
        raise RuntimeError("a failed write")
    assert sorted(os.listdir(tmp_path)) == [".notes.txt.tmp", "notes.txt"]


# --- 7. models of other labels or architecture are not merged -------------------------------------


def test_interpolate_refuses_a_fine_tuned_pretrained_side_with_other_labels(runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("interpolate", runs / "words" / "model", runs / "digits" / "model", "--alpha", "0.5", "-o", out) == 2
    assert "different label sets cannot be merged" in one_line_error(capsys)
    assert not out.exists()


def wider_bert(folder):
    """A BERT classifier with another hidden size: same names, other shapes."""
    from transformers import BertConfig, BertForSequenceClassification

    from .conftest import VOCAB, build_tokenizer

    config = BertConfig(vocab_size=len(VOCAB), hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(folder)
    build_tokenizer(folder)
    return folder


def test_validate_and_run_refuse_mix_models_of_other_labels_or_architecture(runs, tiny_model, tmp_path, capsys):
    recipe = base_recipe(tiny_model, labeled_csv(tmp_path / "d.csv"), max_steps=1)
    recipe["stages"].append({"name": "merge", "mix": {"method": "task_arithmetic",
                                                      "models": [str(runs / "digits" / "model"),
                                                                 str(wider_bert(tmp_path / "wide"))]}})
    recipe = write_recipe(tmp_path / "r.yaml", recipe)
    assert run_cli("validate", recipe) == 2
    error = one_line_error(capsys)
    assert "stages.1.mix.models.0" in error and "labels ['0', '1'], this run's are ['negative', 'positive']" in error
    assert "stages.1.mix.models.1" in error and "not this run's architecture" in error
    assert run_cli("run", recipe, "--out", tmp_path / "run", "--no-progress") == 2
    assert "different label sets" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()  # refused before anything trained or was written
