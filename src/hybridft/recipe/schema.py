"""The recipe schema: pydantic models of every section. Recipes are data; nothing here loads weights
or files. Method sections (``select``, ``objectives``) are the specs their methods register, so a
new method needs no edit here; what a method supports is declared on its spec and checked in
``recipe.checks``.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from .. import objectives, selectors  # noqa: F401  (importing them registers every method)
from ..data.memory import hold_tables
from ..errors import HybridftError
from ..registry import OBJECTIVES, SELECTORS
from ..spec import STAGE_REF, Spec
from ..tasks import (
    ALL_TASKS,
    CLASSIFICATION_METRICS,
    MULTI_TASK,
    TAGGING_METRICS,
    default_metric,
)
from .checks import check_recipe, check_stage
from .search_section import SearchSpec
from .sections import (
    AnyOptimizer,
    CompareSpec,
    DataSpec,
    DistributedSpec,
    EarlyStoppingSpec,
    GenerationSpec,
    MixSpec,
    ModelSpec,
    OptimizerSpec,
    OutputSpec,
    PrefixCacheSpec,
    SamplingSpec,
    SchedulerSpec,
)

SelectorSpec = Annotated[Union[SELECTORS.configs()], Field(discriminator="name")]  # noqa: UP007
ObjectiveSpec = Annotated[Union[OBJECTIVES.configs()], Field(discriminator="name")]  # noqa: UP007
TaskType = Literal["classification", "pair_classification", "token_classification"]
RecipeTask = Literal[ALL_TASKS]

class StageSpec(Spec):
    """A training stage: what trains, on which loss, for how long."""

    kind: ClassVar[str] = "train"
    name: str | None = Field(None, description="names the stage in logs, reports and stage:<name> teachers")
    select: list[SelectorSpec] = Field(default_factory=lambda: [{"name": "full"}], min_length=1,
                                     description="which parameters train: the union of these selectors")
    objectives: list[ObjectiveSpec] = Field(default_factory=lambda: [{"name": "task"}], min_length=1,
                                       description="the loss: the weighted sum of these objectives")
    optimizer: AnyOptimizer = Field(default_factory=OptimizerSpec, description="torch's adamw, adam, sgd, rmsprop, "
                                    "or a low-memory one: galore_adamw, apollo_adamw, adam_mini, badam")
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; overrides epochs")
    batch_size: int = Field(32, gt=0)
    eval_batch_size: int | None = Field(None, gt=0, description="examples per evaluation batch (length-sorted); "
                                        "default: as many as fit a token budget (16 for a language model)")
    grad_accum_steps: int = Field(1, ge=1)
    group_by_length: bool = Field(True, description="batch examples of similar length (little padding: about "
                                                    "twice the training speed on SST-2, the same accuracy over 3 "
                                                    "seeds); false: plain shuffled batches")
    max_grad_norm: float | None = Field(1.0, gt=0)
    eval_every: int | None = Field(None, gt=0, description="optimizer steps; evaluation also runs at the end")
    keep_best: bool = Field(True, description="restore the best evaluated weights at stage end")
    evaluate_start: bool = Field(True, description="a language model's first stage first scores the model as it "
                                                   "starts (start_metrics: zero-shot for a chat model); false "
                                                   "skips that evaluation, e.g. in repeated runs of one model")
    early_stopping: EarlyStoppingSpec | None = None
    max_bad_steps: int = Field(5, ge=1, description="steps in a row with a non-finite loss or gradient "
                                                    "(skipped) before the run stops")
    per_task: bool = Field(False, description="multi_task only: each task trains its own copy of the model on "
                                                "its data alone (MT-DNN's task-specific stage)")
    data: Literal["labeled", "unlabeled"] = Field("labeled", description="the examples epochs run over; "
                                                  "unlabeled: e.g. MLM alone, no task evaluation")
    prefix_cache: PrefixCacheSpec | None = Field(None, description="compute the frozen embeddings and bottom "
                                                 "layers once per example (no dropout there) and reuse them")
    init: Literal["continue", "pretrained"] = Field(
        "continue", description="pretrained: start this stage again from the pretrained weights and a new head; "
                                "teachers named previous still see the model as the last stage left it (Noisy "
                                "Student: a fresh student learns from the last stage's model as teacher)")
    pooling: Literal["first", "mean"] = Field(
        "first", description="what the classification head reads: first, the first token ([CLS]) as transformers "
                             "does; mean, the mean of the last layer's tokens (sentence-embedding models), for "
                             "stages a later init: pretrained stage replaces (teachers)")

    @property
    def eval_batch(self) -> int | None:
        return self.eval_batch_size

    @model_validator(mode="after")
    def _checks(self):
        check_stage(self)
        return self


class MixStageSpec(Spec):
    """A stage that trains nothing: it mixes the current model with the pretrained one."""

    kind: ClassVar[str] = "mix"
    name: str | None = "mix"
    mix: MixSpec


def _stage_kind(value) -> str:
    if isinstance(value, dict):
        return "mix" if "mix" in value else "train"
    return "mix" if isinstance(value, MixStageSpec) else "train"


AnyStage = Annotated[Union[Annotated[StageSpec, Tag("train")], Annotated[MixStageSpec, Tag("mix")]],  # noqa: UP007
                     Discriminator(_stage_kind)]


class TaskSpec(Spec):
    """One task of a multi-task recipe: its own data and head on the shared encoder."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="names the task's metrics and its model folder")
    task: TaskType = Field(description="the head: classification, pair_classification or token_classification")
    data: DataSpec
    weight: float = Field(1.0, gt=0, description="weight of this task's loss")
    metric: str | None = Field(None, description="its primary metric; default accuracy (entity_f1 for tagging)")

    @property
    def primary_metric(self) -> str:
        return self.metric or default_metric(self.task)

    @model_validator(mode="after")
    def _checks(self):
        valid = TAGGING_METRICS if self.task == "token_classification" else CLASSIFICATION_METRICS
        if self.metric is not None and self.metric not in valid:
            raise ValueError(f"metric {self.metric!r} is not reported for {self.task}; valid: {', '.join(valid)}")
        if self.task == "pair_classification" and not self.data.columns.text_pair:
            raise ValueError("task pair_classification needs data.columns.text_pair")
        if self.data.unlabeled is not None:
            raise ValueError("data.unlabeled is not supported in multi-task recipes yet")
        return self


class Recipe(Spec):
    """A whole run: the model, the data, the stages in order, and what to write."""

    name: str = Field("run", description="names the run folder (runs/<name>-<time>) and the report")
    seed: int = Field(42, ge=0, lt=2**32, description="every random choice of the run follows from it")
    task: RecipeTask = "classification"
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec | None = Field(None, description="the task's data (not for multi_task: see tasks)")
    tasks: list[TaskSpec] | None = Field(None, description="multi_task: one entry per task")
    sampling: SamplingSpec = Field(default_factory=SamplingSpec, description="multi_task: batch sampling")
    stages: list[AnyStage] = Field(min_length=1, description="trained in order; a mix stage mixes the model "
                                                             "so far with the pretrained one")
    metric: str | None = Field(None, description="validation metric for keep-best/early stopping")
    generation: GenerationSpec = Field(default_factory=GenerationSpec, description="causal_lm and seq2seq")
    output: OutputSpec = Field(default_factory=OutputSpec)
    distributed: DistributedSpec = Field(default_factory=DistributedSpec,
                                         description="several processes: data parallel (ddp) or sharded (fsdp)")
    compare: CompareSpec | None = Field(None, description="hybridft compare: strategies and seeds (ignored by run)")
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="experiment trackers that receive the resolved recipe as parameters, every logged step and "
                    "evaluation, the final metrics and the report as artifacts, each through its own library: "
                    "tensorboard (the run folder's tensorboard/), mlflow (where MLFLOW_TRACKING_URI says; "
                    "experiment MLFLOW_EXPERIMENT_NAME, else the recipe's name), wandb (WANDB_PROJECT, else the "
                    "recipe's name; WANDB_MODE=offline writes to the run folder); [] for none")
    search: SearchSpec | None = Field(None, description="hybridft search: the space, budget and metric (ignored "
                                                         "by run)")  # last: its check reads every other field

    @field_validator("search")
    @classmethod
    def _every_choice_valid(cls, search, info):
        """Each change the space can make is applied to the recipe and validated (``hybridft validate``
        and ``hybridft search`` refuse a bad choice before any trial runs); skipped when another field
        failed, which is reported on its own."""
        if search is None or any(name not in info.data for name in cls.model_fields if name != "search"):
            return search
        from .search_space import space_problems

        base = cls.model_construct(**info.data).model_dump(mode="json", exclude={"search"})
        problems = space_problems(base, search, cls)
        if problems:
            raise ValueError("; ".join(problems))
        return search

    @model_validator(mode="before")
    @classmethod
    def _one_tracker_as_a_list(cls, data):
        """``report_to: mlflow`` reads as ``[mlflow]``."""
        if isinstance(data, dict) and isinstance(data.get("report_to"), str):
            data = {**data, "report_to": [data["report_to"]]}
        return data

    @model_validator(mode="before")
    @classmethod
    def _mix_as_last_stage(cls, data):
        """A top-level ``mix:`` is shorthand for a final mix stage (one code path for both)."""
        if isinstance(data, dict) and "mix" in data and isinstance(data.get("stages"), list):
            data = dict(data)
            data["stages"] = [*data["stages"], {"name": "mix", "mix": data.pop("mix")}]
        return data

    @model_validator(mode="before")
    @classmethod
    def _tables_held(cls, data):
        """Data given in memory (a DataFrame, a list of dicts, a datasets.Dataset) where a file may stand
        is held, and the recipe names it by its placeholder (``data.memory``)."""
        try:
            return hold_tables(data)
        except HybridftError as e:  # a problem of the recipe, reported with the others
            raise ValueError(str(e)) from None

    @model_validator(mode="after")
    def _cross_checks(self):
        check_recipe(self)
        if len(set(self.report_to)) != len(self.report_to):
            raise ValueError(f"report_to names a tracker twice: {self.report_to}")
        return self

    def stage_name(self, index: int) -> str:
        return self.stages[index].name or f"stage{index}"

    def stage_index(self, name: str) -> int:
        return [self.stage_name(i) for i in range(len(self.stages))].index(name)

    def teacher_stages(self, after: int = -1) -> set[str]:
        """The stages whose final weights a stage after ``after`` needs: a teacher ``stage:<name>``,
        or a model ``stage:<name>`` that a mix stage merges."""
        refs = [t for s in self.stages[after + 1:] for o in getattr(s, "objectives", ()) for t in o.teachers()]
        refs += [m for s in self.stages[after + 1:] if s.kind == "mix" for m in s.mix.models]
        return {t[len(STAGE_REF):] for t in refs if t.startswith(STAGE_REF)}

    @property
    def training_stages(self) -> list[StageSpec]:
        return [s for s in self.stages if s.kind == "train"]

    def last_training_stage(self, before: int | None = None) -> StageSpec:
        stages = self.stages[:before] if before is not None else self.stages
        return [s for s in stages if s.kind == "train"][-1]

    @property
    def needs_pretrained_state(self) -> bool:
        """M_pre's weights are kept in memory for mixing and L2-SP."""
        if any(s.kind == "mix" for s in self.stages):
            return True
        return any(o.needs_pretrained_state for s in self.training_stages for o in s.objectives)

    @property
    def selection_metric(self) -> str:
        if self.task == MULTI_TASK:
            return "score"
        if self.metric:
            return self.metric
        if self.task == "seq2seq" and not self.generation.evaluate:
            return "perplexity"  # BLEU needs generated text
        return default_metric(self.task)

    def single_selector(self):
        """The recipe's one selector when it is the whole recipe (one stage, one selector): only then
        does that selector's own export (a PEFT adapter) reproduce the final model."""
        if len(self.stages) == 1 and len(self.stages[0].select) == 1:
            return self.stages[0].select[0]
        return None
