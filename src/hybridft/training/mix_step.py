"""The recipe's ``mix:`` step after training: sweep alpha on validation data, keep the best mix.

M_mix(alpha) = alpha * M_pre + (1 - alpha) * M_fine, evaluated for every alpha of the list (and,
with ``refine: golden``, by golden-section search in the bracket around the best grid point). The
chosen mix replaces the run's model; every point of the curve goes to the report.
"""

from __future__ import annotations

import math

from ..evaluate import evaluate, scalar_metrics
from ..mixing import interpolate

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


def run_mix_step(run, spec) -> dict:
    metric = run.recipe.selection_metric
    sign = -1.0 if metric == "loss" else 1.0
    model = run.accelerator.unwrap_model(run.model)
    fine = {k: v.detach().clone() for k, v in model.state_dict().items()}
    pre = run.artifacts["pretrained_state"]
    batch = run.recipe.stages[-1].eval_batch
    curve: dict[float, dict] = {}

    def score(alpha: float) -> float:
        alpha = round(alpha, 6)
        if alpha not in curve:
            model.load_state_dict(interpolate(pre, fine, alpha))
            m = evaluate(model, run.data.validation, run.data.task, run.data.label_names, run.collator, batch,
                         run.device, desc=f"mix alpha={alpha:g}", progress=run.progress)
            curve[alpha] = scalar_metrics(m)
            run.log.write(run.global_step, {"stage": "mix", "alpha": alpha,
                                            **{f"mix/{k}": v for k, v in curve[alpha].items()}})
        return sign * curve[alpha][metric]

    for alpha in spec.alphas:
        score(alpha)
    if spec.refine == "golden" and len(spec.alphas) > 1:
        grid = sorted(spec.alphas)
        best = max(grid, key=score)
        i = grid.index(best)
        golden_section(score, grid[max(0, i - 1)], grid[min(len(grid) - 1, i + 1)], spec.refine_steps)
    # ties go to the smaller alpha: the model closer to the fine-tuned one
    chosen = max(sorted(curve), key=lambda a: (sign * curve[a][metric], -a))
    model.load_state_dict(interpolate(pre, fine, chosen))
    return {"metric": metric, "chosen_alpha": chosen, "chosen": curve[chosen], "fine_tuned": curve.get(0.0),
            "curve": [{"alpha": a, **curve[a]} for a in sorted(curve)]}
