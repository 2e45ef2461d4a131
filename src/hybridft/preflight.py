"""`hybridft validate` beyond the schema: files exist, and every stage's selection fits the model.

The selection check builds the model skeleton from its config on the ``meta`` device (no weights
are read, no memory is used), applies each stage's selectors in order and reports selections that
name missing layers or modules, or select nothing.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
import transformers

from .data.memory import held_problem, is_placeholder
from .data.prepare import load_rows
from .data.readers import LANG, parallel_files
from .errors import HybridftError
from .generative.models import decoder_source, generative_skeleton
from .model_io import task_of
from .models import HEAD_CLASSES, check_model_dir, quiet_transformers, remote_code_hint, resolve_model
from .optimizers import OPTIMIZERS
from .pooling import supports_mean_pooling
from .registry import SELECTORS
from .selectors import check_one_entry_per_module
from .spec import STAGE_REF, teacher_is_folder
from .tasks import GENERATIVE_TASKS, MULTI_TASK


def resolve(value: str, base_dir: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


def data_paths(recipe) -> dict[str, str]:
    """The recipe's data files by key, as written (``{lang}`` paths name two files)."""
    sections = {"data": recipe.data} if recipe.data is not None else \
        {f"tasks.{i}.data": t.data for i, t in enumerate(recipe.tasks)}
    named = {f"{where}.{split}": getattr(data, split) for where, data in sections.items()
             for split in ("train", "validation", "test")}
    if recipe.data is not None and recipe.data.unlabeled is not None:
        named["data.unlabeled.path"] = recipe.data.unlabeled.path
    return {key: value for key, value in named.items() if value}


def model_folders(recipe) -> dict[str, str]:
    """The model folders the stages read, by key: teachers named by folder, mix.models."""
    named = {}
    for i, stage in enumerate(recipe.stages):
        for j, objective in enumerate(getattr(stage, "objectives", [])):
            for teacher in objective.teachers():
                if teacher_is_folder(teacher):
                    named[f"stages.{i}.objectives.{j}.teacher"] = teacher
        for j, model in enumerate(stage.mix.models if stage.kind == "mix" else []):
            if not model.startswith(STAGE_REF):
                named[f"stages.{i}.mix.models.{j}"] = model
    return named


def check_paths(recipe, base_dir: Path) -> list[str]:
    """Data files, the unlabeled pool and teacher model folders exist (a missing teacher would
    otherwise only be found when its stage starts, after the earlier stages have trained)."""
    problems = []
    languages = recipe.data.languages if recipe.data is not None else None
    for key, value in data_paths(recipe).items():
        if is_placeholder(value):  # a table held in memory, not a file
            problems += [f"{key}: {held_problem(value)}"] if held_problem(value) else []
            continue
        try:  # parallel text names two files, one per language
            files = parallel_files(resolve(value, base_dir), languages) if LANG in value else (resolve(value, base_dir),)
        except HybridftError as e:
            problems.append(f"{key}: {e}")
            continue
        problems += [f"{key}: not found: {f if LANG in value else value}" for f in files if not f.exists()]
    for key, folder in model_folders(recipe).items():
        try:
            check_model_dir(resolve(folder, base_dir))
        except HybridftError as e:
            problems.append(f"{key}: {e}")
    return problems


def input_paths(recipe, base_dir: Path) -> dict[str, Path]:
    """Every file or folder on this machine that the recipe reads, by key."""
    named = {**data_paths(recipe), **model_folders(recipe)}
    for key in ("name", "decoder", "chat_template"):
        value = getattr(recipe.model, key, None)
        if value and value != "embedded" and "{" not in value:  # a Jinja template is text, not a path
            named[f"model.{key}"] = value
    languages = recipe.data.languages if recipe.data is not None else None
    paths = {}
    for key, value in named.items():
        if LANG in value and languages is not None:
            paths.update(zip((f"{key} ({languages.source})", f"{key} ({languages.target})"),
                             parallel_files(resolve(value, base_dir), languages), strict=True))
        else:
            paths[key] = resolve(value, base_dir)
    return paths


def check_inputs_outside(recipe, base_dir: Path, folder: Path) -> None:
    """``--overwrite`` clears ``folder``: refuse before that if the recipe reads anything inside it
    (``mix.models: [runs/old/model]`` would be gone by the time the mix stage loads it)."""
    inside = []
    for key, path in input_paths(recipe, base_dir).items():
        if path.exists() or path.is_symlink():
            as_named, target = Path(os.path.abspath(path)), path.resolve()
            if any(p == root or root in p.parents for p in (as_named, target)
                   for root in (Path(os.path.abspath(folder)), folder.resolve())):
                inside.append(f"{key} ({path})")
    if inside:
        raise HybridftError(f"{', '.join(inside)} lies inside {folder}, which --overwrite would clear first; "
                            "copy it elsewhere or choose another --out")


def run_labels(recipe, base_dir: Path) -> list[str] | None:
    """The labels a run of the recipe will have (None where it has none, or its data cannot be read:
    the run reports that)."""
    if recipe.task in GENERATIVE_TASKS or recipe.task == MULTI_TASK:
        return None
    if recipe.data.labels:
        return list(recipe.data.labels)
    try:
        return load_rows(recipe, base_dir)[1]
    except HybridftError:
        return None


def mix_model_problems(recipe, base_dir: Path, labels: list[str] | None = None) -> list[str]:
    """Each saved model a mix stage merges has this run's architecture and labels: found now, not
    after the stages before the mix have trained. ``labels``: the run's (else read from its data)."""
    folders = {key: resolve(value, base_dir) for key, value in model_folders(recipe).items() if ".mix.models." in key}
    folders = {key: f for key, f in folders.items() if (f / "config.json").is_file()}  # else check_paths says so
    if not folders or recipe.task == MULTI_TASK:  # a multi-task merge takes no further models
        return []
    try:
        source = resolve_model(recipe.model.name, base_dir)
        ours = transformers.AutoConfig.from_pretrained(source, trust_remote_code=recipe.model.trust_remote_code)
    except (HybridftError, OSError, ValueError):
        return []  # check_selection reports the model
    labels = labels if labels is not None else run_labels(recipe, base_dir)
    problems = [(key, mix_model_problem(folder, ours, recipe, labels)) for key, folder in folders.items()]
    return [f"{key}: {why}" for key, why in problems if why]


def mix_model_problem(folder: Path, ours, recipe, labels: list[str] | None) -> str | None:
    """Why the saved model ``folder`` cannot be merged with a run of ``recipe`` (config ``ours``)."""
    try:
        config = transformers.AutoConfig.from_pretrained(folder)
        meta_file = folder / "hybridft.json"
        task = json.loads(meta_file.read_text(encoding="utf-8")).get("task") if meta_file.is_file() else None
        task = task or task_of(config, folder)
    except HybridftError as e:
        return str(e)
    except (OSError, ValueError) as e:
        return f"cannot read the model config of {folder}: {str(e).splitlines()[0]}"
    if config.model_type != ours.model_type:
        return f"{folder} is a {config.model_type} model, this run's is a {ours.model_type} model"
    if HEAD_CLASSES.get(task) != HEAD_CLASSES[recipe.task]:
        return f"{folder} is a {task} model, this run is {recipe.task}"
    if recipe.model.decoder is None:  # a two-model encoder-decoder has no one config to compare with
        why = shapes_problem(folder, config, ours, task)
        if why:
            return why
    theirs = [config.id2label[i] for i in range(len(config.id2label))]
    if labels is not None and task not in GENERATIVE_TASKS and theirs != labels:
        return (f"{folder} predicts labels {theirs[:8]}, this run's are {labels[:8]}: models with different "
                "label sets cannot be merged")
    return None


def shapes_problem(folder: Path, config, ours, task: str) -> str | None:
    """The first tensor whose name or shape differs between the two configs' models (heads of the
    same size), on weightless skeletons."""
    ours = copy.deepcopy(ours)
    ours.num_labels = config.num_labels
    if getattr(config, "vocab_size", 0) > getattr(ours, "vocab_size", 0):
        ours.vocab_size = config.vocab_size  # a run grows its embeddings to a larger tokenizer (fit_vocabulary)
    try:
        theirs, mine = skeleton_shapes(config, task), skeleton_shapes(ours, task)
    except (OSError, ValueError):  # model code of its own: the merge compares the tensors themselves
        return None
    odd = next((n for n in sorted(theirs.keys() | mine.keys()) if theirs.get(n) != mine.get(n)), None)
    if odd is None:
        return None
    return (f"{folder} is not this run's architecture: tensor {odd} is {theirs.get(odd, 'missing')} there, "
            f"{mine.get(odd, 'missing')} in this run's model")


def skeleton_shapes(config, task: str) -> dict[str, tuple]:
    """Tensor names and shapes of the model ``config`` describes, built weightless."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):  # building draws no weights to keep
        model = getattr(transformers, HEAD_CLASSES[task]).from_config(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def model_skeleton(source: str, task: str, num_labels: int = 2, trust_remote_code: bool = False):
    config = transformers.AutoConfig.from_pretrained(source, num_labels=num_labels, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return getattr(transformers, HEAD_CLASSES[task]).from_config(config, trust_remote_code=trust_remote_code)


def check_selection(recipe, base_dir: Path, labels: list[str] | None = None) -> list[str]:
    """Every stage's selection fits the model, and the models a mix stage merges fit the run
    (``labels``: the run's, where they are known already)."""
    return selection_fits(recipe, base_dir) + mix_model_problems(recipe, base_dir, labels)


def selection_fits(recipe, base_dir: Path) -> list[str]:
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
            check_one_entry_per_module(selectors, model)
            for s in selectors:
                model = s.prepare(model, None)
            names = set().union(*(s.trainable(model) for s in selectors))
            data_dependent = any(c.data_dependent for c in stage.select)
            if not names and not data_dependent:
                problems.append(f"stages.{i}.select: selects no parameter")
            elif stage.optimizer.name in OPTIMIZERS.names():  # its package, and what it needs of the selection
                problem = stage.optimizer.problem(model, names)
                problems += [f"stages.{i}.optimizer: {problem}"] if problem else []
            for s in selectors:
                model = s.finish(model)
        except HybridftError as e:
            problems.append(f"stages.{i}.select: {e}")
    return problems


def weight_based_choices(recipe, base_dir: Path) -> list[str]:
    """What a selector that chooses from the pretrained weights alone (``spectrum``) chooses in the
    first stage, read off the real weights, one line per module type; later stages choose from the
    weights the stages before them trained, so they are told when they start."""
    lines = []
    for i, stage in enumerate(recipe.stages):
        for j, entry in enumerate(getattr(stage, "select", [])):
            if entry.name != "spectrum":
                continue
            if i > 0:
                lines.append(f"stages.{i}.select.{j} spectrum: chosen from the weights when the stage starts")
                continue
            source = resolve_model(recipe.model.name, base_dir)
            with torch.random.fork_rng(devices=[]), quiet_transformers():
                model = transformers.AutoModel.from_pretrained(source, dtype=torch.float32, use_safetensors=True,
                                                               trust_remote_code=recipe.model.trust_remote_code)
            selector = SELECTORS.build(entry)
            selector.trainable(model)
            lines.append(f"stages.{i}.select.{j} spectrum: {len(selector.chosen)} of {len(selector.snr)} matrices")
            lines += [f"  {kind}: layers {', '.join(layers)}" for kind, layers in by_module_type(selector.chosen).items()]
    return lines


def by_module_type(names: list[str]) -> dict[str, list[str]]:
    """``layers.3.self_attn.q_proj.weight`` ... -> {``self_attn.q_proj``: ["3", ...]}."""
    from .architecture import LAYER_INDEX

    grouped: dict[str, list[str]] = {}
    for name in names:
        match = LAYER_INDEX.search(f".{name}")
        if match:
            grouped.setdefault(f".{name}"[match.end():].removesuffix(".weight"), []).append(match.group(1))
    return grouped
