"""What a caller of the Python API hooks into a run (callbacks), and what it gets back from the run in
memory (the trained model). The command line runs with none of it.

A callback is any object with some of ``on_step``, ``on_evaluate`` and ``on_stage_end`` (``Callback``
is a base class with all three doing nothing). Each receives a frozen view of the state: the run's
own state is never handed out, so a callback cannot change the training by accident. A method that
returns ``Stop("why")`` (or True) asks the run to stop: the stage ends as early stopping ends it
(best weights restored, checkpointed, reported), and no later stage runs. Callbacks run in every
process of a run on several processes; the run stops when any of them asks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ..errors import HybridftError

EVENTS = ("on_step", "on_evaluate", "on_stage_end")


@dataclass(frozen=True)
class Stop:
    """Returned by a callback method: stop the run (``reason`` goes into the stage's report)."""

    reason: str = "a callback asked the run to stop"


class Callback:
    """Optional base class: override the methods you need."""

    def on_step(self, step: StepView) -> Stop | None:
        """After each optimizer step, once its losses are logged."""

    def on_evaluate(self, evaluation: EvaluationView) -> Stop | None:
        """After each evaluation on the validation data during a stage."""

    def on_stage_end(self, stage: StageEndView) -> Stop | None:
        """When a training stage has ended (best weights restored, its report written)."""


@dataclass(frozen=True)
class StepView:
    stage: str  # the stage's name
    stage_index: int
    step: int  # optimizer steps done in this stage
    total_steps: int  # ... that the stage will take unless it stops early
    global_step: int  # optimizer steps done in the run
    epoch: int
    lr: float
    loss: float  # the weighted sum of the objectives' losses (over the global batch)
    losses: Mapping[str, float]  # each objective's, e.g. {"task": 0.69}
    samples_per_s: float


@dataclass(frozen=True)
class EvaluationView:
    stage: str
    stage_index: int
    step: int
    global_step: int
    metric: str  # the metric that chooses the best weights and stops early
    value: float  # ... its value now
    metrics: Mapping[str, float]  # every scalar validation metric
    best: float | None  # the best value of the stage so far (this one included)
    best_step: int | None
    improved: bool  # this evaluation is the stage's best so far


@dataclass(frozen=True)
class StageEndView:
    stage: str
    stage_index: int
    steps: int
    global_step: int
    stopped_early: bool  # by early stopping or by a callback
    metric: str
    best: float | None
    best_step: int | None
    evaluations: tuple[Mapping, ...]  # every evaluation of the stage: {"step": ..., metric: ...}
    report: Mapping  # the stage's report (report.json's stages[i]), read-only


def frozen(value):
    """A read-only deep copy: mappings as MappingProxyType, lists as tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(frozen(v) for v in value)
    return value


def check_callbacks(callbacks) -> tuple:
    """The callbacks as a tuple; one line for what is not a list of callbacks."""
    if callbacks is None:
        return ()
    if not isinstance(callbacks, (list, tuple)):
        raise HybridftError(f"callbacks: give a list of callbacks, not {type(callbacks).__name__}")
    for i, callback in enumerate(callbacks):
        if not any(callable(getattr(callback, name, None)) for name in EVENTS):
            raise HybridftError(f"callbacks[{i}]: a {type(callback).__name__} has none of the methods "
                                f"{', '.join(EVENTS)}")
    return tuple(callbacks)


class RunHooks:
    def __init__(self, callbacks=None):
        self.callbacks = check_callbacks(callbacks)
        self.stop_reason: str | None = None  # set once a callback asked the run to stop
        # (model, tokenizer, meta, labels) once the run is over; per task for multi-task (report.outputs.trained_model)
        self.final_model = None

    def call(self, event: str, view, processes) -> None:
        """``event`` on every callback; a stop asked in any process stops every process."""
        if not self.callbacks:
            return
        for callback in self.callbacks:
            method = getattr(callback, event, None)
            if callable(method):
                self.note(method(view), f"{type(callback).__name__}.{event}")
        if processes.world > 1:
            self.stop_reason = next((r for r in processes.gather(self.stop_reason) if r), None)

    def note(self, answer, who: str) -> None:
        if answer is None or answer is False:
            return
        if answer is True:
            answer = Stop(f"{who} asked the run to stop")
        if not isinstance(answer, Stop):
            raise HybridftError(f"callbacks: {who} returned {answer!r:.60}; return None to go on, or "
                                "hybridft.Stop('why') to stop the run")
        self.stop_reason = self.stop_reason or answer.reason
