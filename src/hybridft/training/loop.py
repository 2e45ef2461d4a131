"""run_stage(): one explicit training loop, readable top to bottom.

forward -> each objective's weighted loss -> backward -> selector hooks -> clip -> step -> log,
evaluate, checkpoint. Selectors and objectives plug in only through their hook methods; how the
work spreads over processes is ``run.processes`` (training.parallel) and the forward's precision is
``run.precision`` (training.precision). What a stage needs between steps lives in ``Stage``
(training.stage), its progress in the typed ``StageState``. The Python API's callbacks see each step,
evaluation and stage end through frozen views (training.hooks), and may stop the run.
"""

from __future__ import annotations

from .hooks import EvaluationView, StageEndView, StepView, frozen
from .selection import Selection, select
from .stage import Stage, stage_name


def build_selection(run, spec, name: str, resume_from=None) -> Selection:
    """The stage's selectors prepared on the run's model, all else frozen. The trials of a selector
    that chooses its value on held-out data (importance densities) train with this same loop: it is
    handed down to ``select``, which sits below this module."""
    return select(run, spec, name, resume_from, train_stage=run_stage)


def run_stage(run, index: int, spec, resume_from=None, selection=None) -> dict:
    """Train one stage of the recipe; returns its report. ``resume_from``: a checkpoint inside it."""
    selection = selection or build_selection(run, spec, stage_name(spec, index), resume_from)
    stage = Stage.open(run, index, spec, selection, resume_from)
    st, hooks = stage.state, run.hooks
    with stage.started() as bar:
        while not stage.done:
            batches = stage.begin_epoch()
            while st.micro < len(batches) and not stage.done:
                if stage.forward_backward(batches):  # the last micro-batch of an optimizer step
                    stage.step(bar)
                    hooks.call("on_step", step_view(stage), run.processes)
                    evaluations = len(st.history)
                    stage.evaluate_and_checkpoint(end_of_epoch=st.micro == len(batches))
                    if len(st.history) > evaluations:
                        hooks.call("on_evaluate", evaluation_view(stage), run.processes)
                    st.stopped_early = st.stopped_early or hooks.stop_reason is not None
            if st.micro >= len(batches):
                st.epoch, st.micro = st.epoch + 1, 0
    report = stage.close()
    if hooks.stop_reason is not None:
        report["stop_requested"] = hooks.stop_reason
    hooks.call("on_stage_end", stage_end_view(stage, report), run.processes)
    return report


def step_view(stage: Stage) -> StepView:
    st, logged = stage.state, stage.logged
    losses = {k.removeprefix("loss/"): v for k, v in logged.items() if k.startswith("loss/")}
    return StepView(stage.name, stage.index, st.step, stage.total_steps, stage.run.global_step, st.epoch,
                    logged["lr"], logged["loss"], frozen(losses), logged["samples_per_s"])


def evaluation_view(stage: Stage) -> EvaluationView:
    st, metric = stage.state, stage.run.recipe.selection_metric
    metrics = {k: v for k, v in st.history[-1].items() if k != "step"}
    return EvaluationView(stage.name, stage.index, st.step, stage.run.global_step, metric, metrics[metric],
                          frozen(metrics), st.best, st.best_step, st.best_step == st.step)


def stage_end_view(stage: Stage, report: dict) -> StageEndView:
    st = stage.state
    return StageEndView(stage.name, stage.index, st.step, stage.run.global_step, st.stopped_early,
                        stage.run.recipe.selection_metric, st.best, st.best_step, frozen(st.history), frozen(report))
