"""A mix stage with a merge method other than linear interpolation of two models (``mix.method``,
``mix.models``): every point of the method's parameter grid is evaluated on validation data beside
M_fine, and the best point (or M_fine, under the one-standard-error rule unless a merge beats it by
more) becomes the run's model. Every point goes to the report.

After a multi-task run's per_task stage, the merged models are the tasks' own encoders: the merge
is one shared encoder again, each task keeping its own head (``TaskMergeSearch``).
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

from ..errors import HybridftError
from ..evaluate import evaluate_data, scalar_metrics
from ..merging import MergePoint, build_method, merge_states
from ..model_io import check_finite, load_saved
from ..multitask.model import MultiTaskModel
from ..spec import STAGE_REF
from ..tasks import lower_is_better

GRIDS = {"alpha": "alphas", "scale": "scales", "density": "densities"}  # point field -> the MixSpec list


def merge_points(spec, method) -> list[MergePoint]:
    """Every combination of the values of the parameters the method takes."""
    fields = list(method.searches)
    values = [getattr(spec, GRIDS[f]) for f in fields]
    return [MergePoint(**dict(zip(fields, combo, strict=True))) for combo in itertools.product(*values)]


def further_models(run, refs: list[str]) -> list[dict]:
    """The state dicts of ``mix.models``: earlier stages' kept weights, or saved folders with this
    run's labels."""
    states = []
    for ref in refs:
        if ref.startswith(STAGE_REF):
            weights = run.artifacts.stage_weights.get(ref[len(STAGE_REF):])
            if weights is None:
                raise HybridftError(f"mix.models {ref}: no finished stage of that name kept its weights")
            states.append(weights)
            continue
        path = Path(ref).expanduser()
        model, _, meta, labels = load_saved(path if path.is_absolute() else run.base_dir / path)
        if meta.get("adapters"):
            raise HybridftError(f"mix.models {ref} has bottleneck adapters, which the other models lack")
        if labels is not None and labels != run.data.label_names:
            raise HybridftError(f"mix.models {ref} predicts labels {labels[:8]}, this run's are "
                                f"{run.data.label_names[:8]}: models with different label sets cannot be merged")
        states.append(model.state_dict())
    return states


class MergeSearch:
    """Evaluates merges on validation data."""

    def __init__(self, run, model, spec, eval_batch: int | None):
        self.run, self.model, self.spec, self.batch = run, model, spec, eval_batch
        self.fine = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.fines = [self.fine, *further_models(run, spec.models)]
        self.pre = run.artifacts.pretrained_state
        self.labels = ["this run's model", *spec.models]
        self.check_inputs()
        self.metric = run.recipe.selection_metric
        self.sign = -1.0 if lower_is_better(self.metric) else 1.0
        self.done: dict[tuple, dict] = {}  # (method, point, split) -> metrics: the chosen point's test is a best's

    def check_inputs(self) -> None:
        """A model with NaN or infinite weights would only give NaN merges and metrics to choose from."""
        check_finite(self.pre, "the pretrained model")
        for label, state in zip(self.labels, self.fines, strict=True):
            check_finite(state, label, "training diverged? a lower learning rate may help")

    def state(self, method, point: MergePoint | None) -> dict:
        """M_fine for no point, else ``method``'s merge at ``point`` (finite, or an error)."""
        if point is None:
            return self.fine
        merged = merge_states(self.pre, self.fines, method, point, self.spec.weights, self.run.recipe.seed, self.labels)
        check_finite(merged, f"the merge {method.name} {point.label}", "mix.weights or mix.scales are too large "
                     "for these models")
        return merged

    def model_at(self, method, point: MergePoint | None):
        """The model holding M_fine (no point) or the merge."""
        self.model.load_state_dict(self.state(method, point))
        return self.model

    def apply(self, method, point: MergePoint | None) -> None:
        """The choice becomes the run's model."""
        self.model_at(method, point)

    def evaluate(self, method, point: MergePoint | None, split: str = "validation") -> dict:
        key = (method.name if point else None, point, split)
        if key not in self.done:
            self.done[key] = self.evaluated(method, point, split)
        return self.done[key]

    def evaluated(self, method, point: MergePoint | None, split: str) -> dict:
        model = self.model_at(method, point)
        label = "fine-tuned" if point is None else f"{method.name} {point.label}"
        run = self.run
        m = scalar_metrics(evaluate_data(run, model, split, self.batch, f"merge {label}", run.progress))
        if split == "validation":
            run.log.write(run.global_step, {"stage": "mix", "mix": label, **{f"mix/{k}": v for k, v in m.items()}})
        return m

    def better(self, a: dict, b: dict) -> bool:
        return self.sign * a[self.metric] > self.sign * b[self.metric]


class TaskMergeSearch(MergeSearch):
    """After a per_task stage: the merged models are the tasks' own encoders, the merge one encoder
    that every task shares again, each task keeping its own head. M_fine is the per-task model."""

    def __init__(self, run, model: MultiTaskModel, spec, eval_batch: int | None):
        super().__init__(run, model, spec, eval_batch)
        self.fines = [{k: v.detach().clone() for k, v in model.task_model(t).base_model.state_dict().items()}
                      for t in model.task_names]
        self.labels = [f"task {t}'s model" for t in model.task_names]
        self.check_inputs()
        self.shared = MultiTaskModel({t: copy.deepcopy(model.task_model(t)) for t in model.task_names}, share=True)

    def state(self, method, point: MergePoint | None) -> dict:
        """The per-task model (no point), else the merged encoder."""
        return self.fine if point is None else super().state(method, point)

    def model_at(self, method, point: MergePoint | None):
        if point is None:
            return super().model_at(method, point)
        self.shared.encoder.load_state_dict(self.state(method, point))
        return self.shared

    def apply(self, method, point: MergePoint | None) -> None:
        self.run.model = self.model_at(method, point)


def run_merge_step(run, spec, train_spec, tolerance_of) -> dict:
    """The chosen merge left in the run's model; the report's ``mix`` section. ``tolerance_of``:
    the one-standard-error rule's tolerance for a best value (the linear path's rule)."""
    model = run.processes.unwrap(run.model)
    search = (TaskMergeSearch if isinstance(model, MultiTaskModel) else MergeSearch)(run, model, spec,
                                                                                    train_spec.eval_batch)
    run.artifacts.fine_tuned_state = search.fine
    methods = [build_method(name, spec.majority_sign) for name in spec.methods]
    fine = search.evaluate(None, None)
    # simplest first: M_fine, then each method's grid in order; the first within the tolerance of the best
    points = [(None, None, fine)] + [(m, p, search.evaluate(m, p)) for m in methods for p in merge_points(spec, m)]
    best = max((r for _, _, r in points), key=lambda r: search.sign * r[search.metric])[search.metric]
    tolerance = tolerance_of(best) if spec.rule == "one_se" else 0.0
    method, point, chosen = next(x for x in points if search.sign * x[2][search.metric] >=
                                 search.sign * best - tolerance - 1e-12)
    result = {"method": spec.method, "models": search.labels, "weights": spec.weights,
              "metric": search.metric, "rule": spec.rule, "tolerance": tolerance, "fine_tuned": fine,
              "curve": [{"method": m.name, **p.as_dict(), **r} for m, p, r in points[1:]], "chosen": chosen,
              "chosen_method": method.name if method else None, "chosen_point": point.as_dict() if point else None,
              "final": "fine_tuned" if point is None else "merge", "methods": {}}
    for m in methods:  # each method's best point, for comparing the methods
        best_point, best_metrics = None, None
        for pm, p, r in points[1:]:
            if pm is m and (best_metrics is None or search.better(r, best_metrics)):
                best_point, best_metrics = p, r
        result["methods"][m.name] = {"point": best_point.as_dict(), "validation": best_metrics}
        if run.data.test is not None:
            result["methods"][m.name]["test"] = search.evaluate(m, best_point, "test")
    if run.data.test is not None:  # the choice was made on validation; test shows what it is worth
        result["test"] = {"fine_tuned": search.evaluate(None, None, "test"),
                          "chosen": search.evaluate(method, point, "test")}
    search.apply(method, point)
    return result
