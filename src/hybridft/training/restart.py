"""``init: pretrained``: a stage that starts again from the pretrained weights (Noisy Student).

The model as the last stage left it is kept, frozen, for the stage's teachers named ``previous``
(e.g. pseudo-labels or soft labels on the unlabeled pool); the run's model becomes a fresh copy of
the pretrained one with a new head, drawn from the run's random state like the first stage's. Modules
earlier stages inserted (adapters) stay with the teacher only."""

from __future__ import annotations

from ..objectives.teachers import STAGE_START, unwrap


def restart_from_pretrained(run) -> None:
    from ..models import load_run_pretrained

    # the last stage's model object itself becomes the snapshot: nothing trains it any more
    run.artifacts[STAGE_START] = unwrap(run.model).eval().requires_grad_(False)
    run.model = load_run_pretrained(run).to(run.device)  # the new head from the run's RNG, like the first stage's


def forget_stage_start(run) -> None:
    run.artifacts.pop(STAGE_START, None)
