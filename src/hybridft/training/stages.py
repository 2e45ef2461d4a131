"""train(): start the run and run the stages in order, with checkpoints between and inside them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ..errors import HybridftError
from ..evaluate import evaluate_data
from ..folders import write_atomic
from ..multitask.model import unshared
from ..objectives.teachers import keep_stage_weights
from ..selectors import since_restart, stage_structure
from .checkpoint import (
    INPUTS,
    check_same_inputs,
    checkpoint_to_resume,
    guarded_write,
    input_fingerprints,
    load_checkpoint,
    process_rng_states,
    restore_artifacts,
    save_checkpoint,
    saved_artifacts,
)
from .loop import run_stage
from .mix_step import run_mix_step
from .per_task import run_per_task_stage
from .setup import start_run
from .state import Run


def restore_structure(run: Run, stages) -> None:
    """Re-insert modules that completed stages left in the model (adapters), so that a checkpoint
    written after those stages fits the model it is loaded into."""
    for spec in stages:
        if getattr(spec, "per_task", False) and getattr(run.model, "shared", False):
            run.model = unshared(run.model)  # each task has had its own encoder since this stage
        run.model = stage_structure(run.model, spec)


def resume_point(run: Run, inputs: dict[str, str], allow_changed_data: bool = False) -> tuple[int, Path | None]:
    """(first stage to run, checkpoint to resume that stage from, or None to start it fresh).
    ``inputs``: the data's fingerprints now, which must be the checkpoint's unless ``allow_changed_data``."""
    checkpoint = checkpoint_to_resume(run.checkpoint_dir)
    if checkpoint is not None and not allow_changed_data:
        check_same_inputs(checkpoint, inputs, run.recipe, "--allow-changed-data")
    if checkpoint is None:
        run.log.truncate(0)
        notice(run, f"resuming {run.run_dir}: no checkpoint yet, starting from the beginning")
        return 0, None
    state = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
    stage = state["completed_stages"] if state["stage_state"] is None else state["stage_state"]["stage"]
    notice(run, f"resuming from {checkpoint.name} (stage {run.recipe.stage_name(min(stage, len(run.recipe.stages) - 1))})")
    run.log.truncate(state["log_lines"])
    run.global_step, run.stage_reports = state["global_step"], state.get("stage_reports", [])
    stages = run.recipe.stages
    if state["stage_state"] is None:  # written between stages
        restore_structure(run, since_restart(stages[: state["completed_stages"]]))
        load_checkpoint(checkpoint, run.model, process_index=run.processes.rank)
        restore_artifacts(run, checkpoint, state)
        return state["completed_stages"], None
    index = state["stage_state"]["stage"]
    if getattr(stages[index], "init", "continue") == "pretrained":
        # inside a restarted stage, the model has none of the earlier stages' modules; its frozen
        # "previous" teacher is shaped as the last stage left the model (the checkpoint has its weights)
        run.artifacts.stage_start_model = run.skeleton_after(index).to(run.device).eval().requires_grad_(False)
    else:
        restore_structure(run, since_restart(stages[:index]))
    restore_artifacts(run, checkpoint, state)
    return index, checkpoint


def notice(run: Run, text: str) -> None:
    """A line for the person at the terminal (the main process's stderr), outside the run's logs."""
    if run.processes.is_main:
        print(text, file=sys.stderr, flush=True)


def restart_from_pretrained(run: Run) -> None:
    """``init: pretrained`` (Noisy Student): the model as the last stage left it is kept, frozen, for
    the stage's teachers named ``previous``; the run's model becomes a fresh copy of the pretrained
    one with a new head, drawn from the run's random state like the first stage's. Modules earlier
    stages inserted (adapters) stay with the teacher only."""
    # the last stage's model object itself becomes the snapshot: nothing trains it any more
    run.artifacts.stage_start_model = run.processes.unwrap(run.model).eval().requires_grad_(False)
    run.model = run.load_pretrained().to(run.device)


def run_stages(run: Run, first: int, resume_from: Path | None) -> None:
    recipe = run.recipe
    for index in range(first, len(recipe.stages)):
        spec = recipe.stages[index]
        if spec.kind == "mix":
            run.artifacts.mix_report = run_mix_step(run, spec.mix, recipe.last_training_stage(before=index))
        elif spec.per_task:
            run.stage_reports += run_per_task_stage(run, index, spec)
        else:
            stage_resume = resume_from if index == first else None
            if spec.init == "pretrained" and stage_resume is None:  # resumed: the checkpoint has the weights
                restart_from_pretrained(run)
            run.stage_reports.append(run_stage(run, index, spec, resume_from=stage_resume))
        keep_stage_weights(run, index)
        checkpoint_between_stages(run, index)
        if run.hooks.stop_reason is not None:  # a callback of the Python API stopped the run: no later stage
            break


def checkpoint_between_stages(run: Run, index: int) -> None:
    reports, tensors = saved_artifacts(run)
    rng_states = process_rng_states(run.processes)
    if run.processes.is_main:
        save_checkpoint(run.checkpoint_dir, f"stage-{index}-done", run.model, None, None,
                        {"stage_state": None, "completed_stages": index + 1, "global_step": run.global_step,
                         "log_lines": run.log.lines, "stage_reports": run.stage_reports, "artifacts": reports},
                        run.recipe.output.keep_checkpoints, extra_tensors=tensors, rng_states=rng_states)
    run.processes.barrier()


def final_evaluation(run: Run) -> dict:
    batch = run.recipe.last_training_stage().eval_batch
    final = {"validation": evaluate_data(run, run.model, "validation", batch, "final eval", run.progress)}
    test = evaluate_data(run, run.model, "test", batch, "test eval", run.progress)
    if test is not None:
        final["test"] = test
    bad = next((n for n, p in run.model.named_parameters() if not torch.isfinite(p).all()), None)
    if bad is not None:  # never hand out a broken model as the result
        raise HybridftError(f"the trained model has non-finite values (first in {bad}); nothing was saved")
    return final


def keep_inputs(run: Run, inputs: dict[str, str]) -> None:
    """The data's fingerprints, which every later checkpoint copies (``check_same_inputs``)."""
    if run.processes.is_main:
        with guarded_write("the data's fingerprints", run.checkpoint_dir):
            run.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(run.checkpoint_dir / INPUTS, json.dumps(inputs, indent=1))
    run.processes.barrier()


def check_compiler(recipe, device: torch.device) -> None:
    """``model.compile`` needs inductor's compiler, a C++ one on the CPU and Triton on a GPU: found
    missing here, before anything is loaded or written, not at the first training step."""
    if not recipe.model.compile:
        return
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise HybridftError("model.compile on a GPU needs Triton, which is not installed; install it or set "
                                "model.compile: false")
        return
    from torch._inductor.cpp_builder import get_cpp_compiler
    from torch._inductor.exc import InvalidCxxCompiler

    try:
        get_cpp_compiler()
    except AttributeError:  # inductor's config not set up in this process yet: the first compile will tell
        return
    except InvalidCxxCompiler:
        raise HybridftError("model.compile needs a C++ compiler on the CPU (g++, or the one $CXX names), and none "
                            "works here; install one or set model.compile: false") from None


def train(recipe, base_dir: Path, run_dir: Path, resume: bool, overwrite: bool, progress: bool,
          processes, allow_changed_data: bool = False, hooks=None) -> tuple[Run, dict]:
    """Start (or resume) the run, train every stage; the run and its final metrics per split.
    ``allow_changed_data``: resume even if the data files differ from those the run started on.
    ``hooks``: the Python API's callbacks (training.hooks)."""
    check_compiler(recipe, processes.device)
    run = start_run(recipe, base_dir, run_dir, resume, overwrite, progress, processes, hooks)
    inputs = input_fingerprints(recipe, base_dir)
    first, resume_from = resume_point(run, inputs, allow_changed_data) if resume else (0, None)
    keep_inputs(run, inputs)
    run_stages(run, first, resume_from)
    run.model = run.precision.one_dtype(run.model)
    return run, final_evaluation(run)
