"""The Python API for notebooks and scripts; the command line is a thin layer over it.

    import hybridft
    result = hybridft.run("recipes/quickstart.yaml", out="runs/q", seed=3)
    result.metrics                      # validation metrics of the final model
    saved = hybridft.load(result.model_dir)
    saved.predict(["a gripping film"])  # [{"text": ..., "label": ..., "score": ...}]
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import HybridftError
from .inference import predict_with
from .model_io import load_saved
from .recipe import Recipe, apply_overrides, load_recipe, validate_recipe
from .training.stages import run_recipe


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    report: dict  # report.json

    @property
    def metrics(self) -> dict:
        """Validation metrics of the final model."""
        return self.report["metrics"]

    @property
    def test_metrics(self) -> dict | None:
        return self.report["test_metrics"]

    @property
    def model_dir(self) -> Path:
        return self.run_dir / "model"


def overrides_of(overrides: dict | list[str] | None, keywords: dict) -> list[str]:
    """``{"stages.0.optimizer.lr": 1e-4}``, ``["stages.0.optimizer.lr=1e-4"]`` and
    ``stages__0__optimizer__lr=1e-4`` as ``key.path=value`` strings."""
    given = [] if overrides is None else list(overrides) if isinstance(overrides, list) else \
        [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    return given + [f"{key.replace('__', '.')}={json.dumps(value)}" for key, value in keywords.items()]


def resolve_recipe(recipe: str | Path | dict | Recipe, overrides: list[str],
                   base_dir: str | Path | None = None) -> tuple[Recipe, Path]:
    """(validated recipe, the folder its relative paths start from)."""
    if isinstance(recipe, (str, Path)):
        validated, folder = load_recipe(recipe, overrides)
        return validated, Path(base_dir) if base_dir is not None else folder
    data = recipe.model_dump(mode="json") if isinstance(recipe, Recipe) else dict(recipe)
    return validate_recipe(apply_overrides(data, overrides)), Path(base_dir or Path.cwd())


def run(recipe: str | Path | dict | Recipe, out: str | Path | None = None, *, resume: bool = False,
        overwrite: bool = False, progress: bool = False, base_dir: str | Path | None = None,
        overrides: dict | list[str] | None = None, **keyword_overrides) -> RunResult:
    """Train from a recipe (a YAML path, a dict or a ``Recipe``) into ``out`` (default
    ``runs/<name>-<time>``). Overrides: ``seed=3``, nested keys with double underscores
    (``stages__0__optimizer__lr=1e-4``), ``overrides={"stages.0.optimizer.lr": 1e-4}`` or the command
    line's ``["stages.0.optimizer.lr=1e-4"]``. Relative paths in a recipe file start from its folder;
    in a dict or ``Recipe``, from ``base_dir`` (default: here)."""
    validated, folder = resolve_recipe(recipe, overrides_of(overrides, keyword_overrides), base_dir)
    if resume and out is None:
        raise HybridftError("resume needs out, the run folder to continue")
    run_dir = Path(out) if out is not None else Path("runs") / f"{validated.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    report = run_recipe(validated, folder, run_dir, resume=resume, overwrite=overwrite, progress=progress)
    return RunResult(run_dir, report)


@dataclass
class SavedModel:
    """A saved model folder, loaded: a plain transformers model with its adapters (if any) restored."""

    model: torch.nn.Module
    tokenizer: object
    task: str
    labels: list[str]
    meta: dict  # hybridft.json

    def predict(self, texts: list[str], batch_size: int = 64, **generation) -> list[dict]:
        """Labels (or tags, or generated text) for each text; a pair is ``"first\\tsecond"``."""
        return predict_with(self.model, self.tokenizer, self.meta, self.labels, list(texts), batch_size, generation)


def load(model_dir: str | Path) -> SavedModel:
    """A model folder hybridft wrote (a run's ``model/``), or any transformers classification, tagging
    or language-model folder."""
    model, tokenizer, meta, labels = load_saved(model_dir)
    return SavedModel(model, tokenizer, meta["task"], labels, meta)
