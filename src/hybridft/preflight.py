"""`hybridft validate` beyond the schema: files exist, and every stage's selection fits the model.

The selection check builds the model skeleton from its config on the ``meta`` device (no weights
are read, no memory is used), applies each stage's selectors in order and reports selections that
name missing layers or modules, or select nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from .data.readers import LANG, parallel_files
from .errors import HybridftError
from .generative.models import decoder_source, generative_skeleton
from .models import HEAD_CLASSES, check_model_dir, remote_code_hint, resolve_model
from .pooling import supports_mean_pooling
from .registry import SELECTORS
from .spec import STAGE_REF, teacher_is_folder


def check_paths(recipe, base_dir: Path) -> list[str]:
    """Data files, the unlabeled pool and teacher model folders exist (a missing teacher would
    otherwise only be found when its stage starts, after the earlier stages have trained)."""
    def resolve(value: str) -> Path:
        return Path(value) if Path(value).is_absolute() else base_dir / value

    problems = []
    sections = {"data": recipe.data} if recipe.data is not None else \
        {f"tasks.{i}.data": t.data for i, t in enumerate(recipe.tasks)}
    named = {f"{where}.{split}": getattr(data, split) for where, data in sections.items()
             for split in ("train", "validation", "test")}
    if recipe.data is not None and recipe.data.unlabeled is not None:
        named["data.unlabeled.path"] = recipe.data.unlabeled.path
    languages = recipe.data.languages if recipe.data is not None else None
    for key, value in named.items():
        if not value:
            continue
        try:  # parallel text names two files, one per language
            files = parallel_files(resolve(value), languages) if LANG in value else (resolve(value),)
        except HybridftError as e:
            problems.append(f"{key}: {e}")
            continue
        problems += [f"{key}: not found: {f if LANG in value else value}" for f in files if not f.exists()]
    for i, stage in enumerate(recipe.stages):
        for j, objective in enumerate(getattr(stage, "objectives", [])):
            for teacher in objective.teachers():
                if not teacher_is_folder(teacher):
                    continue
                try:
                    check_model_dir(resolve(teacher))
                except HybridftError as e:
                    problems.append(f"stages.{i}.objectives.{j}.teacher: {e}")
        for j, model in enumerate(stage.mix.models if stage.kind == "mix" else []):
            if not model.startswith(STAGE_REF):
                try:
                    check_model_dir(resolve(model))
                except HybridftError as e:
                    problems.append(f"stages.{i}.mix.models.{j}: {e}")
    return problems


def model_skeleton(source: str, task: str, num_labels: int = 2, trust_remote_code: bool = False):
    config = transformers.AutoConfig.from_pretrained(source, num_labels=num_labels, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return getattr(transformers, HEAD_CLASSES[task]).from_config(config, trust_remote_code=trust_remote_code)


def check_selection(recipe, base_dir: Path) -> list[str]:
    source = recipe.model.name or ""
    try:
        source = resolve_model(recipe.model.name, base_dir)
        task = recipe.tasks[0].task if recipe.task == "multi_task" else recipe.task  # layers live in the encoder
        if task in ("causal_lm", "seq2seq"):
            model = generative_skeleton(source, task, decoder_source(recipe.model.decoder, base_dir),
                                        recipe.model.trust_remote_code)
        else:
            model = model_skeleton(source, task, trust_remote_code=recipe.model.trust_remote_code)
    except HybridftError as e:
        return [f"model.name: {e}"]
    except (OSError, ValueError) as e:
        return [f"model.name: cannot read the model config of {recipe.model.name}: {str(e).splitlines()[0]}"
                f"{remote_code_hint(source, recipe.model.trust_remote_code)}"]
    # the selectors' new modules (LoRA, adapters) draw their initial weights: a check must not move
    # the run's RNG, or adding a LoRA stage would change what every earlier stage trains
    with torch.random.fork_rng(devices=[]):
        return selection_problems(recipe, model)


def selection_problems(recipe, model) -> list[str]:
    problems = []
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and recipe.model.max_length > limit:
        problems.append(f"model.max_length: {recipe.model.max_length} but the model takes at most {limit} tokens")
    for i, stage in enumerate(recipe.stages):
        if not hasattr(stage, "select"):  # a mix stage selects nothing
            continue
        if getattr(stage, "pooling", "first") == "mean" and not supports_mean_pooling(model):
            problems.append(f"stages.{i}.pooling: mean needs a head that reads the first token (BERT, RoBERTa, "
                            f"DistilBERT...); {model.config.model_type} models are not known to")
        try:
            selectors = [SELECTORS.build(c) for c in stage.select]
            for s in selectors:
                model = s.prepare(model, None)
            names = set().union(*(s.trainable(model) for s in selectors))
            data_dependent = any(c.data_dependent for c in stage.select)
            if not names and not data_dependent:
                problems.append(f"stages.{i}.select: selects no parameter")
            for s in selectors:
                model = s.finish(model)
        except HybridftError as e:
            problems.append(f"stages.{i}.select: {e}")
    return problems
