"""The search space: what a trial's recipe may differ in, as the command line's overrides.

A dimension is a dotted override path (``stages.0.optimizer.lr``) with a range or a list of choices;
the preset ``hybrid`` is one choice among hybrid strategies, each with its own learning-rate range
(a conditional space: Optuna draws the strategy, then that strategy's learning rate). A trial's
draws become ``{path: value}``; the trial's recipe is the base recipe with each value set at its path.
Choices that are not plain scalars (a select list) are drawn by their YAML text, which reads well in
Optuna's tables and dashboard.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from .edits import set_path, yaml_text

STRATEGY = "strategy"


def _stage(base: dict, **changes) -> dict:
    """The base recipe's first training stage, with ``changes`` (its budget, batch and schedule kept)."""
    first = next(s for s in base["stages"] if "mix" not in s)
    stage = {k: copy.deepcopy(v) for k, v in first.items() if k not in ("select", "objectives", "prefix_cache")}
    stage["optimizer"] = {**stage.get("optimizer", {}), "lr": changes.pop("lr")}
    return {**stage, **changes}


def _one_stage(select: list[dict], objectives: list[dict] | None = None) -> Callable[[dict, float], dict]:
    def stages(base: dict, lr: float) -> dict:
        return {"stages": [_stage(base, lr=lr, select=select, objectives=objectives or [{"name": "task"}])]}
    return stages


def _linear_probe_then_full(base: dict, lr: float) -> dict:
    """LP-FT (Kumar et al., 2022): the head alone first, at a head's learning rate, then everything."""
    probe = _stage(base, lr=2e-3, name="linear-probe", select=[{"name": "layers", "top_k": 0, "head": True}])
    return {"stages": [probe, _stage(base, lr=lr, name="finetune", select=[{"name": "full"}])]}


LORA = {"name": "lora", "r": 8, "alpha": 16}
# name -> (the trial's stages from the base recipe and a learning rate, that learning rate's range)
HYBRID = {
    "full": (_one_stage([{"name": "full"}]), (1e-5, 2e-4)),
    "top_layers": (_one_stage([{"name": "layers", "top_k": 2, "head": True}]), (3e-5, 1e-3)),
    "lora": (_one_stage([LORA]), (1e-4, 5e-3)),
    "adapter": (_one_stage([{"name": "adapter", "reduction_factor": 16}]), (1e-4, 5e-3)),
    "importance": (_one_stage([{"name": "importance", "density": 0.1}]), (2e-5, 5e-4)),
    "lora+top_layer": (_one_stage([LORA, {"name": "layers", "top_k": 1, "head": True}]), (1e-4, 2e-3)),
    "lp_ft": (_linear_probe_then_full, (1e-5, 2e-4)),
    "full+mlm": (_one_stage([{"name": "full"}], [{"name": "task"}, {"name": "mlm", "weight": 0.1}]), (1e-5, 2e-4)),
    "full+adversarial": (_one_stage([{"name": "full"}], [{"name": "task"}, {"name": "adversarial", "method": "fgm"}]),
                         (1e-5, 2e-4)),
}
PRESETS = {"hybrid": HYBRID}


def lr_param(strategy: str) -> str:
    return f"lr[{strategy}]"


def is_scalar(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def choice_keys(choices: list) -> list:
    """What Optuna draws for ``choices``: the values themselves when all are scalars, else their YAML text."""
    return list(choices) if all(is_scalar(c) for c in choices) else [yaml_text(c) for c in choices]


def suggest(trial, search) -> dict:
    """The trial's draws as ``{path: value}`` overrides (a preset's strategy as ``stages``), and the
    strategy's name under ``STRATEGY`` when a preset is searched."""
    overrides = {}
    if search.preset is not None:
        strategies = PRESETS[search.preset]
        name = trial.suggest_categorical(STRATEGY, list(strategies))
        low, high = strategies[name][1]
        overrides[STRATEGY] = name
        overrides[lr_param(name)] = trial.suggest_float(lr_param(name), low, high, log=True)
    for path, dim in search.space.items():
        if dim.choice is not None:
            keys = choice_keys(dim.choice)
            overrides[path] = dim.choice[keys.index(trial.suggest_categorical(path, keys))]
        elif dim.whole:
            overrides[path] = trial.suggest_int(path, dim.low, dim.high, step=dim.step or 1, log=dim.log)
        else:
            overrides[path] = trial.suggest_float(path, float(dim.low), float(dim.high), log=dim.log, step=dim.step)
    return overrides


def apply(base: dict, overrides: dict, preset: str | None) -> dict:
    """The base recipe's data with the trial's overrides set (a copy)."""
    data = copy.deepcopy(base)
    if STRATEGY in overrides:
        name = overrides[STRATEGY]
        data.update(PRESETS[preset][name][0](data, overrides[lr_param(name)]))
    for path, value in overrides.items():
        if path != STRATEGY and not path.startswith("lr["):
            set_path(data, path, copy.deepcopy(value), f"search.space {path}")
    return data


def candidates(search) -> list[tuple[str, dict]]:
    """Every single change the space can make, as (what it is, overrides): each choice, each range's
    ends, each preset strategy at its lowest learning rate."""
    out = []
    if search.preset is not None:
        for name, (_, (low, _high)) in PRESETS[search.preset].items():
            out.append((f"preset {search.preset}: strategy {name}", {STRATEGY: name, lr_param(name): low}))
    for path, dim in search.space.items():
        if dim.choice is not None:
            out += [(f"{path}: choice {i + 1} ({yaml_text(c)})", {path: c}) for i, c in enumerate(dim.choice)]
        else:
            out += [(f"{path}: {end} {value}", {path: value}) for end, value in (("low", dim.low), ("high", dim.high))]
    return out


def space_problems(base: dict, search, recipe_class) -> list[str]:
    """One line for each change of the space that the recipe's schema (``recipe_class``) refuses,
    naming its path: every choice and range end is applied to the base recipe (``base``, its data
    without ``search``) and the result validated, before any trial runs."""
    from pydantic import ValidationError

    from ..errors import HybridftError
    from .edits import format_validation_error

    Recipe = recipe_class  # noqa: N806  (the schema hands itself in: it imports this module)
    problems = []
    for what, overrides in candidates(search):
        try:
            Recipe.model_validate(apply(base, overrides, search.preset))
        except HybridftError as e:
            problems.append(f"space {what}: {e}")
        except ValidationError as e:
            problems.append(f"space {what}: {'; '.join(format_validation_error(e))}")
    return problems
