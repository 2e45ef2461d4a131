"""``init: pretrained``: a stage that starts again from the pretrained weights (Noisy Student).

The model as the last stage left it is kept, frozen, for the stage's teachers named ``previous``
(e.g. pseudo-labels or soft labels on the unlabeled pool); the model itself gets the pretrained
weights back and a new head, drawn from the run's random state like the first stage's."""

from __future__ import annotations

import copy

from ..errors import HybridftError
from ..objectives.teachers import STAGE_START, unwrap


def restart_from_pretrained(run, stage_name: str) -> None:
    from ..models import load_run_pretrained

    model = unwrap(run.model)
    fresh = load_run_pretrained(run).state_dict()  # the new head from the run's RNG, like the first stage's
    added = sorted(set(model.state_dict()) - set(fresh))
    if added:  # adapters an earlier stage inserted have no pretrained weights to go back to
        raise HybridftError(f"stage {stage_name}: init pretrained cannot reset modules an earlier stage added "
                            f"(e.g. {added[0]}); put the adapter stage after it")
    snapshot = copy.deepcopy(model).eval().requires_grad_(False)
    run.artifacts[STAGE_START] = snapshot
    model.load_state_dict(fresh)


def forget_stage_start(run) -> None:
    run.artifacts.pop(STAGE_START, None)
