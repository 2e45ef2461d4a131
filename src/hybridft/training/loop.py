"""run_stage(): one explicit training loop, readable top to bottom.

forward -> each objective's weighted loss -> backward -> selector hooks -> clip -> step -> log,
evaluate, checkpoint. Selectors and objectives plug in only through their hook methods; how the
work spreads over processes is ``run.processes`` (training.parallel) and the forward's precision is
``run.precision`` (training.precision). What a stage needs between steps lives in ``Stage``
(training.stage), its progress in the typed ``StageState``.
"""

from __future__ import annotations

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
    st = stage.state
    with stage.started() as bar:
        while not stage.done:
            batches = stage.begin_epoch()
            while st.micro < len(batches) and not stage.done:
                if stage.forward_backward(batches):  # the last micro-batch of an optimizer step
                    stage.step(bar)
                    stage.evaluate_and_checkpoint(end_of_epoch=st.micro == len(batches))
            if st.micro >= len(batches):
                st.epoch, st.micro = st.epoch + 1, 0
    return stage.close()
