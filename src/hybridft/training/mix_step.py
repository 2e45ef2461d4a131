"""The recipe's ``mix:`` step after training: choose how to mix M_pre and M_fine on validation data.

Weight mixing, M_mix(alpha) = alpha * M_pre + (1 - alpha) * M_fine, is evaluated for every alpha
of the list (and, with ``refine: golden``, by golden-section search in the bracket around the best
grid point); with ``per_layer``, the alphas of embeddings / lower / upper layers / head are then
tuned one at a time from the global choice. The best weight mix replaces the run's model. With
``ensemble``, output-level mixing alpha * p_pre + (1 - alpha) * p_fine is evaluated for comparison,
where M_pre gets its task head by training the head alone on the frozen pretrained encoder.
Every point evaluated goes to the report.
"""

from __future__ import annotations

import copy
import math

import numpy as np

from ..architecture import num_layers
from ..evaluate import evaluate_data, metrics_from_scores, predict, scalar_metrics
from ..mixing import PART_ORDER, interpolate, per_part_alpha
from ..model_io import check_finite
from ..recipe import StageSpec
from ..tasks import MULTI_TASK, lower_is_better
from .learned_mix import learn_mixing, mix_groups
from .loop import run_stage
from .merge_step import run_merge_step

GOLDEN = (math.sqrt(5) - 1) / 2


def golden_section(f, lo: float, hi: float, steps: int) -> None:
    """Maximise f on [lo, hi] with ``steps`` evaluations (f records its own results)."""
    a, b = lo + (1 - GOLDEN) * (hi - lo), lo + GOLDEN * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(max(0, steps - 2)):
        if fa >= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - GOLDEN) * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + GOLDEN * (hi - lo)
            fb = f(b)


class MixSearch:
    """Evaluates mixes on validation data, remembering every result."""

    def __init__(self, run, model, pre: dict, fine: dict, eval_batch: int | None):
        self.run, self.model, self.pre, self.fine = run, model, pre, fine
        self.metric = run.recipe.selection_metric
        self.sign = -1.0 if lower_is_better(self.metric) else 1.0
        self.batch = eval_batch
        self.curve: dict[float, dict] = {}
        self.tolerance = 0.0  # set by the one-standard-error rule

    def evaluate_mix(self, alpha, label: str) -> dict:
        self.model.load_state_dict(interpolate(self.pre, self.fine, alpha))
        run = self.run
        m = scalar_metrics(evaluate_data(run, self.model, "validation", self.batch, f"mix {label}", run.progress))
        run.log.write(run.global_step, {"stage": "mix", "mix": label, **{f"mix/{k}": v for k, v in m.items()}})
        return m

    def score(self, alpha: float) -> float:
        alpha = round(alpha, 6)
        if alpha not in self.curve:
            self.curve[alpha] = self.evaluate_mix(alpha, f"alpha={alpha:g}")
        return self.sign * self.curve[alpha][self.metric]

    def simplest_within(self, candidates: list, metrics_of) -> object:
        """The first candidate (they come simplest first: closest to M_fine) whose metric is within
        ``tolerance`` of the best one's. With tolerance 0 that is the first best."""
        best = max(self.sign * metrics_of(c)[self.metric] for c in candidates)
        return next(c for c in candidates if self.sign * metrics_of(c)[self.metric] >= best - self.tolerance - 1e-12)

    def key(self, metrics: dict, alpha_sum: float) -> tuple:
        # ties go to the smaller alphas: the model closer to the fine-tuned one
        return (self.sign * metrics[self.metric], -alpha_sum)


def per_layer_search(search: MixSearch, start: float, grid: list[float]) -> dict:
    """One coordinate pass over the parts, each part's alpha over the grid, the others held."""
    n_layers = num_layers(search.model)
    alphas = dict.fromkeys(PART_ORDER, start)
    best = search.curve[round(start, 6)]
    for part in PART_ORDER:
        for a in grid:
            if a == alphas[part]:
                continue
            trial = {**alphas, part: a}
            m = search.evaluate_mix(per_part_alpha(trial, n_layers), "per-layer " + ",".join(
                f"{k}={v:g}" for k, v in trial.items()))
            if search.key(m, sum(trial.values())) > search.key(best, sum(alphas.values())):
                alphas, best = trial, m
    return {"alphas": alphas, "metrics": best}


def tolerant_choice(points: list[dict], metric: str, tolerance: float) -> dict:
    """The point of smallest alpha whose metric is within ``tolerance`` of the best."""
    sign = -1.0 if lower_is_better(metric) else 1.0
    best = max(sign * p[metric] for p in points)
    return min((p for p in points if sign * p[metric] >= best - tolerance - 1e-12), key=lambda p: p["alpha"])


def standard_error(value: float, n: int) -> float:
    """Binomial standard error of a proportion-like metric (exact for accuracy) measured on n examples."""
    return math.sqrt(max(value * (1 - value), 0.0) / max(n, 1))


def ensemble_search(run, fine_model, pre_state: dict, grid: list[float], probe_steps: int, train_spec,
                    tolerance: float = 0.0) -> dict:
    """Output-level mixing with M_pre, which first gets a head trained on its frozen encoder."""
    probe_model = copy.deepcopy(fine_model)
    probe_model.load_state_dict(interpolate(pre_state, fine_model.state_dict(), 1.0))
    probe = StageSpec(name="probe", select=[{"name": "layers", "top_k": 0, "head": True}],
                      optimizer=train_spec.optimizer.model_copy(update={"lr": 1e-3}),
                      max_steps=probe_steps, batch_size=train_spec.batch_size, keep_best=False)
    sub = run.sub_run(model=probe_model, progress=False)
    run_stage(sub, len(run.recipe.stages), probe)
    batch, data = train_spec.eval_batch, run.data

    def probabilities(model, examples):
        return [_softmax(x) for x in predict(model, examples, run.collator, batch, run.device, "ensemble eval",
                                             run.progress, run.processes)[0]]

    def mixed_metrics(a, p_pre, p_fine, examples):
        mixed = [a * p + (1 - a) * f for p, f in zip(p_pre, p_fine, strict=True)]
        return scalar_metrics(metrics_from_scores(examples, mixed, data.task, data.label_names))

    p_pre, p_fine = probabilities(sub.model, data.validation), probabilities(fine_model, data.validation)
    curve = [{"alpha": a, **mixed_metrics(a, p_pre, p_fine, data.validation)} for a in grid]
    best = tolerant_choice(curve, run.recipe.selection_metric, tolerance)
    result = {"pretrained_with_head": mixed_metrics(1.0, p_pre, p_fine, data.validation), "curve": curve,
              "chosen_alpha": best["alpha"], "chosen": best}
    if data.test is not None:  # the alpha chosen on validation, applied to the test split
        t_pre, t_fine = probabilities(sub.model, data.test), probabilities(fine_model, data.test)
        result["test"] = {"pretrained_with_head": mixed_metrics(1.0, t_pre, t_fine, data.test),
                          "chosen": mixed_metrics(best["alpha"], t_pre, t_fine, data.test)}
    return result


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def run_mix_step(run, spec, train_spec) -> dict:
    """``train_spec``: the training stage before the mix (its batch sizes and optimizer are reused).
    Leaves the chosen mix in the run's model and M_fine's weights in ``run.artifacts.fine_tuned_state``."""
    if not spec.interpolates or run.data.task == MULTI_TASK:  # a multi-task run merges its tasks' models
        return run_merge_step(run, spec, train_spec, lambda best: standard_error(best, len(run.data.validation)))
    model = run.processes.unwrap(run.model)
    fine = {k: v.detach().clone() for k, v in model.state_dict().items()}
    run.artifacts.fine_tuned_state = fine
    pre = run.artifacts.pretrained_state
    # mixes of finite weights with alphas in [0, 1] are finite: checking the two ends covers every mix
    check_finite(pre, "the pretrained model")
    check_finite(fine, "this run's model", "training diverged? a lower learning rate may help")
    search = MixSearch(run, model, pre, fine, train_spec.eval_batch)
    for alpha in spec.alphas:
        search.score(alpha)
    grid = sorted(spec.alphas)
    if spec.refine == "golden" and len(grid) > 1:
        i = grid.index(max(grid, key=search.score))
        golden_section(search.score, grid[max(0, i - 1)], grid[min(len(grid) - 1, i + 1)], spec.refine_steps)
    if spec.rule == "one_se":  # prefer M_fine unless a mix is better by more than one standard error
        best_value = max(search.curve.values(), key=lambda m: search.sign * m[search.metric])[search.metric]
        search.tolerance = standard_error(best_value, len(run.data.validation))
    chosen = search.simplest_within(sorted(search.curve), lambda a: search.curve[a])
    result = {"metric": search.metric, "rule": spec.rule, "tolerance": search.tolerance,
              "chosen_alpha": chosen, "chosen": search.curve[chosen],
              "fine_tuned": search.curve.get(0.0), "curve": [{"alpha": a, **search.curve[a]} for a in sorted(search.curve)]}
    # candidates for the final model: the global alpha, then the per-layer and learned ones if asked
    options = [("global", search.curve[chosen], chosen)]
    n_layers = num_layers(model)
    if spec.per_layer:
        result["per_layer"] = per_layer_search(search, chosen, grid)
        options.append(("per_layer", result["per_layer"]["metrics"],
                        per_part_alpha(result["per_layer"]["alphas"], n_layers)))
    if spec.learn:
        learned = learn_mixing(run, model, pre, fine, chosen, spec, train_spec.batch_size)
        groups = mix_groups(list(fine), spec.learn_granularity, n_layers)

        def learned_alpha(name: str) -> float:
            return learned.get(groups.get(name), 0.0)

        m = search.evaluate_mix(learned_alpha, "learned")
        result["learned"] = {"alphas": learned, "granularity": spec.learn_granularity, "metrics": m}
        options.append(("learned", m, learned_alpha))
    # simplest first: a per-layer or learned mix must beat the global one (by the tolerance, if any)
    label, _, final_alpha = search.simplest_within(options, lambda o: o[1])
    result["final"] = label
    if spec.ensemble:
        model.load_state_dict(fine)  # the searches above left the last evaluated mix in the model
        result["ensemble"] = ensemble_search(run, model, pre, grid, spec.probe_steps, train_spec, search.tolerance)
    model.load_state_dict(interpolate(pre, fine, final_alpha))
    if run.data.test is not None:  # the choices were made on validation; test shows what they are worth
        result["test"] = {"fine_tuned": _test_metrics(run, model, interpolate(pre, fine, 0.0), train_spec)}
        for option, _, alpha in options:
            result["test"][option] = _test_metrics(run, model, interpolate(pre, fine, alpha), train_spec)
        result["test"]["chosen"] = result["test"][label]
        model.load_state_dict(interpolate(pre, fine, final_alpha))
    return result


def _test_metrics(run, model, state: dict, train_spec) -> dict:
    model.load_state_dict(state)
    return scalar_metrics(evaluate_data(run, model, "test", train_spec.eval_batch, "mix test", run.progress))
