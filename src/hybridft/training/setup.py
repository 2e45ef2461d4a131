"""Starting a run: check the output folder, load tokenizer, data and model (all before anything is
written), then create the run folder with its resolved recipe, logs and trackers."""

from __future__ import annotations

from pathlib import Path

from accelerate.utils import set_seed

from ..architecture import base_prefix
from ..data import load_task_data
from ..data.collate import collator_for
from ..errors import HybridftError
from ..folders import RUN_MARKER, check_output, clear_folder, mark, write_atomic
from ..generative.chat import template_text, use_template
from ..generative.data import ensure_pad_token, load_generative_data
from ..generative.models import stop_at_end_of_turn
from ..models import load_model, load_tokenizer, resolve_model
from ..multitask.data import MultiTaskCollator, load_multitask_data
from ..multitask.model import MultiTaskModel
from ..preflight import check_inputs_outside, check_paths, check_selection
from ..recipe import resolved_recipe_text
from ..tasks import GENERATIVE_TASKS, MULTI_TASK
from .checkpoint import guarded_write
from .hooks import RunHooks
from .metrics_log import MetricsLog
from .parallel import launch
from .precision import Precision
from .state import Run, load_recipe_model


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder. Deletes nothing: that waits until the new run's
    inputs have all been loaded and checked."""
    if resume:
        if not (run_dir / RUN_MARKER).is_file() or not (run_dir / "recipe.yaml").is_file():
            raise HybridftError(f"nothing to resume in {run_dir}: it holds no hybridft run")
        return
    check_output(run_dir, RUN_MARKER, overwrite, flag="--resume to continue it or --overwrite")


def check_shardable(recipe, processes) -> None:
    """What cannot train sharded yet, refused before anything is loaded."""
    if recipe.task == MULTI_TASK:
        raise HybridftError("distributed.strategy fsdp: multi-task recipes train with ddp for now")
    if processes.device.type == "cpu" and (recipe.distributed.cpu_offload or recipe.distributed.mixed_precision):
        raise HybridftError("distributed.cpu_offload and distributed.mixed_precision are for GPU runs")


def check_model_fits(recipe, base_dir: Path, labels) -> None:
    """Every stage's selection and the max length, on a weightless skeleton, and the models a mix
    stage merges (their architecture and ``labels``, the run's): before anything is written."""
    labels = labels if isinstance(labels, list) and recipe.task not in GENERATIVE_TASKS else None
    problems = check_paths(recipe, base_dir) + check_selection(recipe, base_dir, labels)
    if problems:
        raise HybridftError("; ".join(problems))


def load_inputs(recipe, base_dir: Path, source: str, tokenizer):
    """(data, model, collator) of a recipe."""
    if recipe.task == MULTI_TASK:  # each task's data and head; the heads share the first task model's encoder
        data = load_multitask_data(recipe, base_dir, tokenizer)
        models = {t.name: load_model(source, t.task, labels, recipe.model.trust_remote_code,
                                       recipe.model.dtype)
                  for t, labels in zip(recipe.tasks, data.label_names.values(), strict=True)}
        collator = MultiTaskCollator([collator_for(t.task, tokenizer) for t in recipe.tasks])
        return data, MultiTaskModel(models), collator
    if recipe.task in GENERATIVE_TASKS:
        if recipe.data.columns.messages:
            template = recipe.model.chat_template
            use_template(tokenizer, template_text(template, base_dir) if template else None)
        data = load_generative_data(recipe, base_dir, tokenizer)
    else:
        padding = ensure_pad_token(tokenizer)  # batches are padded: a decoder's tokenizer may have no pad token
        data = load_task_data(recipe, base_dir, tokenizer)
        if padding:
            data.stats["pad_token"] = padding
    model = load_recipe_model(recipe, source, base_dir, tokenizer, data.label_names, notes=data.stats)
    if recipe.task in GENERATIVE_TASKS and recipe.data.columns.messages:
        stop_at_end_of_turn(model, tokenizer)
    return data, model, collator_for(recipe.task, tokenizer, model)


def start_run(recipe, base_dir: Path, run_dir: Path, resume: bool = False, overwrite: bool = False,
              progress: bool = True, processes=None, hooks=None) -> Run:
    """Several processes (accelerate launch, torchrun): all check and load, then only the main one writes.
    ``hooks``: the Python API's callbacks (training.hooks)."""
    processes = processes or launch(run_dir, recipe.distributed)
    check_run_dir(run_dir, resume, overwrite)
    if overwrite and not resume and run_dir.exists():
        check_inputs_outside(recipe, base_dir, run_dir)
    if processes.sharded:
        check_shardable(recipe, processes)
    set_seed(recipe.seed)
    source = resolve_model(recipe.model.name, base_dir)
    tokenizer = load_tokenizer(source, recipe.model.trust_remote_code)
    data, model, collator = load_inputs(recipe, base_dir, source, tokenizer)
    check_model_fits(recipe, base_dir, data.label_names)

    recipe_text = resolved_recipe_text(recipe, base_dir, source)
    if resume and (run_dir / "recipe.yaml").read_text(encoding="utf-8") != recipe_text:
        raise HybridftError(f"the recipe differs from the one {run_dir} was started with; resume with the same recipe")
    processes.barrier()
    if processes.is_main:
        if not resume and run_dir.exists() and overwrite:
            clear_folder(run_dir)  # a hybridft run (checked above), replaced only now that the new one can start
        with guarded_write(f"the run folder {run_dir}", run_dir / "checkpoints"):
            run_dir.mkdir(parents=True, exist_ok=True)
            mark(run_dir, RUN_MARKER)
            write_atomic(run_dir / "recipe.yaml", recipe_text)
    processes.barrier()
    processes.start_tracking(recipe.report_to, run_dir, recipe.name, recipe_text)
    log = MetricsLog(run_dir / "metrics.jsonl", processes, enabled=processes.is_main)
    run = Run(recipe, run_dir, model.to(processes.device), tokenizer, data, collator, processes,
              Precision(recipe.model.precision, processes.device, recipe.model.dtype), log, source, base_dir,
              progress=progress and processes.is_main, hooks=hooks or RunHooks())
    # M_pre for the mix step and L2-SP, kept before any training (works for hub names too)
    if recipe.needs_pretrained_state:
        run.artifacts.pretrained_state = pretrained_state(model)
    return run


def pretrained_state(model) -> dict:
    """A copy of the pretrained encoder's tensors (the new task head is not pretrained)."""
    prefix = base_prefix(model)
    base = getattr(model, prefix) if prefix else model
    return {k: v.detach().clone() for k, v in base.state_dict().items()}
