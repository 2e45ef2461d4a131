"""The recipe's ``search:`` section, for ``hybridft search`` (``hybridft run`` ignores it): the
space, the trial budget, the metric and the confirmation runs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..spec import Spec


class SearchDimension(Spec):
    """One dimension of a search space: ``{low, high, log, step}``, a number drawn from [low, high]
    (whole numbers when both ends are whole), or ``{choice: [...]}``, one of these values (any YAML
    value: a whole select list, a stage list)."""

    low: int | float | None = None
    high: int | float | None = None
    log: bool = Field(False, description="draw on a log scale (learning rates)")
    step: int | float | None = Field(None, gt=0, description="only multiples of step above low")
    choice: list | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _range_or_choice(self):
        if self.choice is not None:
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("give either choice or low/high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high (a range) or choice (a list of values)")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("log: true needs low above 0")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self

    @property
    def whole(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high, self.step or 1))


SEARCH_PRESETS = ("hybrid",)


def _space_or_preset(schema: dict) -> None:
    """The JSON Schema of ``space`` also takes a preset's name, as the model reads it (``space: hybrid``)."""
    mapping = {k: schema.pop(k) for k in list(schema) if k not in ("description", "title", "default")}
    schema["anyOf"] = [mapping, {"enum": list(SEARCH_PRESETS)}]


class ConfirmSpec(Spec):
    top: int = Field(3, ge=1, description="the best trials re-run with more seeds")
    seeds: int = Field(3, ge=1, description="seeds per confirmed trial in all, its own run counting as the first")


class SearchSpec(Spec):
    """``hybridft search``: what varies, for how long, and how trials are scored (ignored by run)."""

    trials: int | None = Field(20, ge=1, description="trials in all (every worker of the study together)")
    timeout: float | None = Field(None, gt=0, description="wall-clock seconds a worker starts trials for")
    metric: str | None = Field(None, description="the trials' score; default: the recipe's selection metric")
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="default: minimize for a loss or perplexity, else maximize")
    space: dict[str, SearchDimension] = Field(
        default_factory=dict, description="dotted override paths (stages.0.optimizer.lr, as on the command line) "
                                          "to {low, high, log} or {choice: [...]}; or a preset's name (space: "
                                          "hybrid)", json_schema_extra=_space_or_preset)
    preset: Literal[SEARCH_PRESETS] | None = Field(
        None, description="hybrid: full, top layers, LoRA, adapters, importance masks, a union, LP-FT, an "
                          "auxiliary MLM or adversarial objective, each with its own learning-rate range; the "
                          "space's paths are searched besides")
    validation_fraction: float = Field(0.2, gt=0, lt=1, description="the share of the training rows that scores "
                                                                    "the trials (the recipe's validation set "
                                                                    "scores the chosen configuration only)")
    pruning: bool = Field(True, description="stop trials whose periodic evaluations fall below the median "
                                            "(Optuna's MedianPruner; needs eval_every)")
    confirm: ConfirmSpec | None = Field(None, description="re-run the top trials with more seeds; choose by mean")

    @model_validator(mode="before")
    @classmethod
    def _preset_named_as_space(cls, data):
        """``space: hybrid`` reads as ``preset: hybrid``."""
        if isinstance(data, dict) and isinstance(data.get("space"), str):
            if data["space"] not in SEARCH_PRESETS:
                raise ValueError(f"space {data['space']!r} is no preset; presets: {', '.join(SEARCH_PRESETS)} "
                                 "(or a mapping of override paths)")
            data = {**data, "preset": data["space"], "space": {}}
        return data

    @model_validator(mode="after")
    def _a_budget(self):
        if self.trials is None and self.timeout is None:
            raise ValueError("give trials, timeout or both: the search needs an end")
        if not self.space and self.preset is None:
            raise ValueError("space names nothing to search")
        return self
