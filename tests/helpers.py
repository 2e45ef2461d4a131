"""Small builders shared by tests: a classification model on the tiny BERT and one training run."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from hybridft.api import run_recipe
from hybridft.data.prepare import load_task_data
from hybridft.models import load_model, load_tokenizer
from hybridft.recipe import validate_recipe


def tiny_classifier(model_dir: Path, labels=("negative", "positive"), dropout: float | None = None):
    model = load_model(str(model_dir), "classification", list(labels))
    if dropout is not None:
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = dropout
    return model


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def train_and_load(recipe_dict: dict, run_dir: Path, base_dir: Path | None = None):
    """Run a recipe in-process; return (report, final model state dict)."""
    from safetensors.torch import load_file

    recipe = validate_recipe(recipe_dict)
    report = run_recipe(recipe, base_dir or run_dir.parent, run_dir, progress=False)
    return report, load_file(run_dir / "model" / "model.safetensors")


def resume_at(recipe_dict: dict, finished: Path, checkpoint: str, out: Path):
    """A copy of a finished run as if killed at ``checkpoint`` (its model folder gone), resumed;
    returns (report, final model state dict)."""
    import shutil

    from safetensors.torch import load_file

    shutil.copytree(finished, out)
    (out / "checkpoints" / "latest").write_text(checkpoint)
    shutil.rmtree(out / "model")
    report = run_recipe(validate_recipe(recipe_dict), out.parent, out, resume=True, progress=False)
    return report, load_file(out / "model" / "model.safetensors")


def tokenized(model_dir: Path, recipe_dict: dict):
    recipe = validate_recipe(recipe_dict)
    tok = load_tokenizer(str(model_dir))
    return load_task_data(recipe, Path("."), tok)


def make_run(recipe_dict: dict, run_dir: Path):
    from hybridft.training.setup import start_run

    return start_run(validate_recipe(recipe_dict), run_dir.parent, run_dir, progress=False)


def train_one_stage(run, stage_index: int = 0):
    """Prepare the stage's selection, snapshot it, train; returns (before, after, selection, report)."""
    from hybridft.training.loop import build_selection, run_stage

    spec = run.recipe.stages[stage_index]
    selection = build_selection(run, spec, "s")
    before = snapshot(selection.model)
    report = run_stage(run, stage_index, spec, selection=selection)
    return before, snapshot(selection.model), selection, report


def rewind_to(run_dir, checkpoint: str) -> None:
    """The folder as a crash right after ``checkpoint`` was written would leave it."""
    root = run_dir / "checkpoints"
    for p in root.iterdir():
        if p.is_dir() and p.name != checkpoint:
            shutil.rmtree(p)
    (root / "latest").write_text(checkpoint)
    shutil.rmtree(run_dir / "model")
    (run_dir / "report.json").unlink()


def run_cli(*args) -> int:
    """The command line in this process, with every argument as text."""
    from hybridft.cli import main

    return main([str(a) for a in args])


def one_line_error(capsys) -> str:
    """The one ``error: ...`` line a refusal writes (other lines, such as notes, may come beside it)."""
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]
