"""run_recipe(): load model and data, run the stages in order, save the model and the report."""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from pathlib import Path

import torch
import yaml

from ..data import load_task_data
from ..errors import HybridftError
from ..evaluate import evaluate_data
from ..generative.data import load_generative_data
from ..model_io import save_model_folder
from ..models import load_model, load_recipe_model, load_tokenizer, resolve_model
from ..objectives.teachers import STAGE_START, keep_stage_weights, skeleton_after
from ..recipe import GENERATIVE_TASKS, MixStageSpec
from ..report.metrics_log import MetricsLog
from ..report.summary import write_report
from ..selectors import since_restart, stage_structure
from .checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    process_rng_states,
    restore_artifacts,
    save_checkpoint,
    saved_artifacts,
)
from .loop import run_stage
from .mix_step import run_mix_step
from .restart import restart_from_pretrained
from .run_state import Run

RUN_MARKER = ".hybridft-run"  # written into every run folder; the only folders --overwrite deletes


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder. Deletes nothing: that waits until the new run's
    inputs have all been loaded and checked."""
    if resume:
        if not (run_dir / RUN_MARKER).is_file() or not (run_dir / "recipe.yaml").is_file():
            raise HybridftError(f"nothing to resume in {run_dir}: it holds no hybridft run")
        return
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        if not (run_dir / RUN_MARKER).is_file():
            raise HybridftError(f"{run_dir} is not empty and holds no hybridft run; choose another --out")
        if not overwrite:
            raise HybridftError(f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to replace it")


def check_model_fits(recipe, base_dir: Path) -> None:
    """Every stage's selection and the max length, on a weightless skeleton: before anything is written."""
    from ..preflight import check_paths, check_selection

    problems = check_paths(recipe, base_dir) + check_selection(recipe, base_dir)
    if problems:
        raise HybridftError("; ".join(problems))


def collator_for(task: str, tokenizer, model=None):
    from transformers import (
        DataCollatorForSeq2Seq,
        DataCollatorForTokenClassification,
        DataCollatorWithPadding,
    )

    if task in GENERATIVE_TASKS:  # labels padded with -100; an encoder-decoder also gets its decoder inputs
        encoder_decoder = model is not None and model.config.is_encoder_decoder
        return DataCollatorForSeq2Seq(tokenizer, model=model if encoder_decoder else None, return_tensors="pt")
    if task == "token_classification":
        return DataCollatorForTokenClassification(tokenizer, return_tensors="pt")
    return DataCollatorWithPadding(tokenizer, return_tensors="pt")


def resolved_recipe_text(recipe, base_dir: Path, source: str) -> str:
    """The recipe as run: every default filled in, model and data paths absolute."""
    data = recipe.model_dump(mode="json")
    data["model"]["name"] = source
    if recipe.model.decoder:
        from ..generative.models import decoder_source

        data["model"]["decoder"] = decoder_source(recipe.model.decoder, base_dir)
    for section in [data["data"]] if data["data"] else [t["data"] for t in data["tasks"]]:
        for split in ("train", "validation", "test"):
            if section[split]:
                section[split] = str((base_dir / section[split]).resolve())
        if section.get("unlabeled"):
            section["unlabeled"]["path"] = str((base_dir / section["unlabeled"]["path"]).resolve())
    return yaml.safe_dump(data, sort_keys=False)


def start_run(recipe, base_dir: Path, run_dir: Path, resume: bool = False, overwrite: bool = False,
              progress: bool = True) -> Run:
    """Check the folder, load tokenizer, data and model (all before anything is written), then
    create the run folder with its resolved recipe, logs and trackers."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    # several processes (accelerate launch): all check and load, then only the main one writes
    # Accelerate only sets up CPU processes (gloo) when told to use the CPU
    several_on_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(log_with="tensorboard", project_dir=str(run_dir), cpu=several_on_cpu)
    sharded = accelerator.distributed_type.name
    if sharded in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        # the loop builds its optimizer on whole parameters, restores masked entries in place and
        # saves full state dicts: correct under DDP, not under sharding
        raise HybridftError(f"accelerate launched with {sharded}: hybridft trains with data parallelism (DDP) only "
                            "so far; launch with --multi_gpu (see configs/accelerate/)")
    check_run_dir(run_dir, resume, overwrite)
    set_seed(recipe.seed)
    source = resolve_model(recipe.model.name, base_dir)
    tokenizer = load_tokenizer(source, recipe.model.trust_remote_code)
    if recipe.task == "multi_task":
        data, model, collator = load_multitask(recipe, base_dir, source, tokenizer)
    else:
        data = load_generative_data(recipe, base_dir, tokenizer) if recipe.task in GENERATIVE_TASKS \
            else load_task_data(recipe, base_dir, tokenizer)
        model = load_recipe_model(recipe, source, base_dir, tokenizer, data.label_names)
        collator = collator_for(recipe.task, tokenizer, model)
    check_model_fits(recipe, base_dir)

    recipe_text = resolved_recipe_text(recipe, base_dir, source)
    if resume and (run_dir / "recipe.yaml").read_text(encoding="utf-8") != recipe_text:
        raise HybridftError(f"the recipe differs from the one {run_dir} was started with; resume with the same recipe")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if not resume and run_dir.exists() and overwrite:
            shutil.rmtree(run_dir)  # a hybridft run (checked above), replaced only now that the new one can start
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RUN_MARKER).write_text("hybridft run folder\n", encoding="utf-8")
        (run_dir / "recipe.yaml").write_text(recipe_text, encoding="utf-8")
    accelerator.wait_for_everyone()
    accelerator.init_trackers("tensorboard")
    log = MetricsLog(run_dir / "metrics.jsonl", accelerator, enabled=accelerator.is_main_process)
    run = Run(recipe, run_dir, model.to(accelerator.device), tokenizer, data, collator, accelerator, log,
              progress and accelerator.is_main_process)
    run.artifacts["model_source"] = source
    run.artifacts["base_dir"] = base_dir  # recipe-relative paths (teacher folders)
    # M_pre for the mix step and L2-SP, kept before any training (works for hub names too)
    if recipe.needs_pretrained_state:
        run.artifacts["pretrained_state"] = pretrained_state(model)
    return run


def load_multitask(recipe, base_dir: Path, source: str, tokenizer):
    """Each task's data and head; the heads share the first task model's encoder."""
    from ..multitask.data import MultiTaskCollator, load_multitask_data
    from ..multitask.model import MultiTaskModel

    data = load_multitask_data(recipe, base_dir, tokenizer)
    models = {t.name: load_model(source, t.task, labels, recipe.model.trust_remote_code)
              for t, labels in zip(recipe.tasks, data.label_names.values(), strict=True)}
    collator = MultiTaskCollator([collator_for(t.task, tokenizer) for t in recipe.tasks])
    return data, MultiTaskModel(models), collator


def pretrained_state(model) -> dict:
    """A copy of the pretrained encoder's tensors (the new task head is not pretrained)."""
    from ..architecture import base_prefix

    prefix = base_prefix(model)
    base = getattr(model, prefix) if prefix else model
    return {k: v.detach().clone() for k, v in base.state_dict().items()}


def restore_structure(run: Run, stages) -> None:
    """Re-insert modules that completed stages left in the model (adapters), so that a checkpoint
    written after those stages fits the model it is loaded into."""
    for spec in stages:
        if getattr(spec, "per_task", False) and getattr(run.model, "shared", False):
            from ..multitask.model import unshared

            run.model = unshared(run.model)  # each task has had its own encoder since this stage
        run.model = stage_structure(run.model, spec)


def resume_point(run: Run) -> tuple[int, Path | None]:
    """(first stage to run, checkpoint to resume that stage from, or None to start it fresh)."""
    checkpoint = latest_checkpoint(run.checkpoint_dir)
    if checkpoint is None:
        run.log.truncate(0)
        return 0, None
    state = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
    run.log.truncate(state["log_lines"])
    run.global_step, run.stage_reports = state["global_step"], state.get("stage_reports", [])
    stages = run.recipe.stages
    if state["stage_state"] is None:  # written between stages
        restore_structure(run, since_restart(stages[: state["completed_stages"]]))
        load_checkpoint(checkpoint, run.model, process_index=run.accelerator.process_index)
        restore_artifacts(run, checkpoint, state)
        return state["completed_stages"], None
    index = state["stage_state"]["stage"]
    if getattr(stages[index], "init", "continue") == "pretrained":
        # inside a restarted stage, the model has none of the earlier stages' modules; its frozen
        # "previous" teacher is shaped as the last stage left the model (the checkpoint has its weights)
        run.artifacts[STAGE_START] = skeleton_after(run, index).to(run.device).eval().requires_grad_(False)
    else:
        restore_structure(run, since_restart(stages[:index]))
    restore_artifacts(run, checkpoint, state)
    return index, checkpoint


def run_recipe(recipe, base_dir: Path, run_dir: Path, resume: bool = False, overwrite: bool = False,
               progress: bool = True) -> dict:
    started = time.perf_counter()
    run = start_run(recipe, base_dir, run_dir, resume, overwrite, progress)
    first_stage, stage_resume = resume_point(run) if resume else (0, None)

    for index in range(first_stage, len(recipe.stages)):
        spec = recipe.stages[index]
        if isinstance(spec, MixStageSpec):
            run.artifacts["mix"] = run_mix_step(run, spec.mix, recipe.last_training_stage(before=index))
        elif spec.per_task:
            from ..multitask.per_task import run_per_task_stage

            run.stage_reports += run_per_task_stage(run, index, spec)
        else:
            resume_from = stage_resume if index == first_stage else None
            if spec.init == "pretrained" and resume_from is None:  # resumed: the checkpoint has the weights
                restart_from_pretrained(run)
            run.stage_reports.append(run_stage(run, index, spec, resume_from=resume_from))
        keep_stage_weights(run, index)
        reports, tensors = saved_artifacts(run)
        rng_states = process_rng_states(run.accelerator)
        if run.accelerator.is_main_process:
            save_checkpoint(run.checkpoint_dir, f"stage-{index}-done", run.model, None, None,
                            {"stage_state": None, "completed_stages": index + 1, "global_step": run.global_step,
                             "log_lines": run.log.lines, "stage_reports": run.stage_reports, "artifacts": reports},
                            recipe.output.keep_checkpoints, extra_tensors=tensors, rng_states=rng_states)
        run.accelerator.wait_for_everyone()

    batch = recipe.last_training_stage().eval_batch
    final = {"validation": evaluate_data(run, run.model, "validation", batch, "final eval", run.progress)}
    test = evaluate_data(run, run.model, "test", batch, "test eval", run.progress)
    if test is not None:
        final["test"] = test
    bad = next((n for n, p in run.model.named_parameters() if not torch.isfinite(p).all()), None)
    if bad is not None:  # never hand out a broken model as the result
        raise HybridftError(f"the trained model has non-finite values (first in {bad}); nothing was saved")
    main = run.accelerator.is_main_process  # every process evaluated the same model; one writes
    if recipe.output.save_model and main:
        save_model_folder(run, run_dir / "model")
    report = write_report(run, final, run.artifacts["model_source"], wall_time_s=time.perf_counter() - started,
                          peak_memory_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, write=main)
    run.log.close()
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    if not recipe.output.keep_checkpoints_after_run and main:
        shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
    return report
