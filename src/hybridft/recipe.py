"""The recipe: YAML validated by pydantic. Recipes are data; nothing here loads weights or files.

Relative paths in a recipe are resolved against the recipe file's folder, so a recipe works from
any working directory; paths given as command-line overrides are resolved against the shell's
working directory, where the user typed them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import Discriminator, Field, Tag, ValidationError, model_validator

from . import objectives as _objectives  # noqa: F401  (registers objectives)
from . import selectors as _selectors  # noqa: F401  (registers selectors)
from .errors import HybridftError
from .objectives.task import TaskConfig
from .objectives.teachers import STAGE_REF, teacher_names
from .registry import OBJECTIVES, SELECTORS
from .selectors.full import FullConfig
from .spec import Spec

TaskType = Literal["classification", "pair_classification", "token_classification"]
RecipeTask = Literal["classification", "pair_classification", "token_classification", "multi_task", "causal_lm",
                     "seq2seq"]
GENERATIVE_TASKS = ("causal_lm", "seq2seq")
SelectorSpec = Annotated[Union[SELECTORS.configs()], Field(discriminator="name")]  # noqa: UP007
ObjectiveSpec = Annotated[Union[OBJECTIVES.configs()], Field(discriminator="name")]  # noqa: UP007

def _uses_unlabeled(objective) -> bool:
    return getattr(objective, "source", "batch") in ("unlabeled", "both") or objective.name == "pseudo_label"


CLASSIFICATION_METRICS = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "loss")
TAGGING_METRICS = ("entity_f1", "entity_precision", "entity_recall", "token_accuracy", "loss")
CAUSAL_LM_METRICS = ("perplexity", "loss", "token_accuracy")
SEQ2SEQ_METRICS = ("bleu", "chrf", "perplexity", "loss", "token_accuracy")
TASK_METRICS = {"token_classification": TAGGING_METRICS, "causal_lm": CAUSAL_LM_METRICS, "seq2seq": SEQ2SEQ_METRICS}
DEFAULT_METRIC = {"token_classification": "entity_f1", "causal_lm": "perplexity", "seq2seq": "bleu"}
LOWER_IS_BETTER = ("loss", "perplexity")


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER


# objectives that make sense for text generation (the others read a class head or an unlabeled pool)
GENERATIVE_OBJECTIVES = ("task", "distill", "regularize")


class ModelSpec(Spec):
    name: str | None = Field(None, description="local HF folder or hub name; empty = embedded MiniLM")
    max_length: int = Field(128, gt=1, le=8192, description="tokens per example (longer inputs truncated)")
    trust_remote_code: bool = Field(False, description="run code shipped with a hub model (off by default)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="training forward passes: bf16 autocast (weights, gradients and optimizer stay fp32) "
                            "or fp32; auto = bf16 on a GPU that supports it, fp32 elsewhere")
    decoder: str | None = Field(None, description="seq2seq: build an encoder-decoder with model.name as encoder and "
                                                  "this as decoder (a folder, a hub name or 'embedded'); the "
                                                  "cross-attention is new")
    max_target_length: int = Field(128, gt=1, le=8192, description="seq2seq: target tokens (longer ones truncated)")


class Columns(Spec):
    text: str = "text"
    text_pair: str | None = None
    label: str = "label"
    tokens: str = "tokens"
    tags: str = "tags"
    prompt: str | None = Field(None, description="causal_lm: the prompt column; the loss then covers the response only")
    response: str = "response"
    source: str = "source"
    target: str = "target"


class CleanSpec(Spec):
    strip: bool = True
    drop_empty: bool = True
    drop_duplicates: bool = True


class UnlabeledSpec(Spec):
    path: str = Field(description="file or load_from_disk folder with text (labels, if present, are only used "
                                  "to check pseudo-labels)")
    format: Literal["auto", "csv", "tsv", "json", "jsonl", "parquet", "conll", "disk"] = "auto"
    max_samples: int | None = Field(None, gt=0, description="seeded subset of the pool")
    drop_overlap: bool = Field(True, description="drop texts that also occur in train, validation or test")
    min_words: int | None = Field(None, gt=0, description="keep only texts of at least this many words (a pool "
                                                          "closer to the text the model will see, e.g. sentences "
                                                          "rather than fragments)")


class LanguagePair(Spec):
    source: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    target: str = Field(pattern=r"^[A-Za-z0-9_-]+$")


class DataSpec(Spec):
    train: str = Field(description="file (csv/tsv/json/jsonl/parquet/CoNLL) or load_from_disk folder")
    validation: str | None = Field(None, description="if absent, a seeded split of train")
    test: str | None = None
    format: Literal["auto", "csv", "tsv", "json", "jsonl", "parquet", "conll", "disk", "txt", "parallel"] = "auto"
    columns: Columns = Field(default_factory=Columns)
    labels: list[str] | None = Field(None, description="label names in id order; inferred if absent")
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    max_train_samples: int | None = Field(None, gt=0, description="seeded subset of train")
    max_eval_samples: int | None = Field(None, gt=0, description="seeded subset of validation/test")
    clean: CleanSpec = Field(default_factory=CleanSpec)
    bad_rows: Literal["error", "skip"] = Field("error", description="malformed csv/tsv/jsonl lines: stop with "
                                                                    "an error naming the line, or skip and count")
    unlabeled: UnlabeledSpec | None = Field(None, description="text without labels for mlm, pseudo_label, "
                                                               "distill, contrastive and adversarial")
    languages: LanguagePair | None = Field(None, description="parallel text: files named with {lang} in their path, "
                                                              "e.g. train.{lang}.gz with source de, target en")
    packing: bool = Field(False, description="causal_lm: concatenate examples and cut them into blocks of "
                                             "model.max_length tokens (no padding)")

    @model_validator(mode="after")
    def _labels_unique(self):
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError("data.labels has duplicates")
        return self


class OptimizerSpec(Spec):
    name: Literal["adamw", "adam", "sgd", "rmsprop"] = "adamw"
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.0, ge=0, lt=1, description="sgd and rmsprop only")
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)


# get_scheduler names that need nothing but warmup and total steps (others need metrics or extra settings)
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt")


class SchedulerSpec(Spec):
    name: str = Field("linear", description="a transformers.get_scheduler name: " + ", ".join(SCHEDULERS))
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    warmup_steps: int | None = Field(None, ge=0, description="overrides warmup_ratio")

    @model_validator(mode="after")
    def _known(self):
        if self.name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.name!r}; valid: {', '.join(SCHEDULERS)}")
        return self


class EarlyStoppingSpec(Spec):
    patience: int = Field(3, ge=1, description="evaluations without improvement before stopping")
    min_delta: float = Field(0.0, ge=0)


class PrefixCacheSpec(Spec):
    max_mb: float = Field(1024, ge=0, description="memory for cached outputs; examples beyond it are recomputed")


class StageSpec(Spec):
    name: str | None = None
    select: list[SelectorSpec] = Field(default_factory=lambda: [FullConfig()], min_length=1)
    objectives: list[ObjectiveSpec] = Field(default_factory=lambda: [TaskConfig()], min_length=1)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; overrides epochs")
    batch_size: int = Field(32, gt=0)
    eval_batch_size: int | None = Field(None, gt=0)
    grad_accum_steps: int = Field(1, ge=1)
    group_by_length: bool = Field(False, description="batch examples of similar length (less padding)")
    max_grad_norm: float | None = Field(1.0, gt=0)
    eval_every: int | None = Field(None, gt=0, description="optimizer steps; evaluation also runs at the end")
    keep_best: bool = Field(True, description="restore the best evaluated weights at stage end")
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
    def eval_batch(self) -> int:
        return self.eval_batch_size or 2 * self.batch_size

    @model_validator(mode="after")
    def _objective_names_unique(self):
        if all(o.weight == 0 for o in self.objectives):
            raise ValueError("at least one objective needs a weight above 0")
        names = [getattr(o, "key", o.name) for o in self.objectives]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"objective {sorted(dup)[0]!r} listed twice in one stage")
        if self.data == "unlabeled":
            needs_labels = [o.name for o in self.objectives if o.weight > 0 and o.needs_labels]
            if needs_labels:
                raise ValueError(f"objective {needs_labels[0]!r} needs labels; a stage over unlabeled data "
                                 "cannot use it on its batch")
        return self


class MixSpec(Spec):
    alphas: list[float] = Field(default_factory=lambda: [round(0.1 * i, 1) for i in range(11)], min_length=1,
                                description="weights of the pretrained model to evaluate, each in [0, 1]")
    refine: Literal["golden"] | None = Field(None, description="golden-section search around the best alpha")
    refine_steps: int = Field(6, ge=2)
    per_layer: bool = Field(False, description="then tune embeddings/lower/upper/head alphas one at a time")
    ensemble: bool = Field(False, description="also compare output-level mixing with M_pre + a trained head")
    probe_steps: int = Field(100, ge=1, description="head-only steps that give M_pre its head (for ensemble)")
    learn: bool = Field(False, description="also learn sigmoid-bounded mixing coefficients on training data")
    learn_granularity: Literal["part", "tensor"] = "part"
    learn_steps: int = Field(100, ge=1)
    learn_lr: float = Field(0.05, gt=0)
    rule: Literal["best", "one_se"] = Field("best", description="best: the best validation score; one_se: the "
                                            "mix closest to M_fine within one standard error of the best "
                                            "(guards against choosing on noise with small validation sets)")

    @model_validator(mode="after")
    def _in_range(self):
        bad = [a for a in self.alphas if not 0 <= a <= 1]
        if bad:
            raise ValueError(f"alpha must be in [0, 1], got {bad[0]}")
        return self


class GenerationSpec(Spec):
    """How text is generated, for evaluation (seq2seq BLEU/chrF) and for ``hybridft predict``."""

    max_new_tokens: int = Field(64, ge=1)
    num_beams: int = Field(1, ge=1, description="1: greedy (or sampling); more: beam search")
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(50, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    evaluate: bool = Field(True, description="seq2seq: generate during evaluation (BLEU, chrF); off: loss only")
    uncased: bool | None = Field(None, description="compare lower-cased, accent-stripped text (default: when the "
                                                   "tokenizer is uncased, which cannot produce case or accents)")


class MixStageSpec(Spec):
    """A stage that trains nothing: it mixes the current model with the pretrained one."""

    name: str | None = "mix"
    mix: MixSpec


def _stage_kind(value) -> str:
    if isinstance(value, dict):
        return "mix" if "mix" in value else "train"
    return "mix" if isinstance(value, MixStageSpec) else "train"


AnyStage = Annotated[Union[Annotated[StageSpec, Tag("train")], Annotated[MixStageSpec, Tag("mix")]],  # noqa: UP007
                     Discriminator(_stage_kind)]


class OutputSpec(Spec):
    checkpoint_every: int | None = Field(None, gt=0, description="optimizer steps; default: at each evaluation")
    keep_checkpoints: int = Field(2, ge=1)
    keep_checkpoints_after_run: bool = Field(False, description="keep checkpoints/ once the run has finished")
    save_model: bool = True


class TaskSpec(Spec):
    """One task of a multi-task recipe: its own data and head on the shared encoder."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="names the task's metrics and its model folder")
    task: TaskType = Field(description="the head: classification, pair_classification or token_classification")
    data: DataSpec
    weight: float = Field(1.0, gt=0, description="weight of this task's loss")
    metric: str | None = Field(None, description="its primary metric; default accuracy (entity_f1 for tagging)")

    @property
    def primary_metric(self) -> str:
        return self.metric or ("entity_f1" if self.task == "token_classification" else "accuracy")

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


class SamplingSpec(Spec):
    strategy: Literal["proportional", "temperature", "round_robin"] = Field(
        "proportional", description="which task the next batch comes from")
    temperature: float = Field(2.0, ge=1, description="temperature: task probability ~ size^(1/T)")


# objectives that a multi-task stage may use (the others read one task's labels or teachers)
MULTI_TASK_OBJECTIVES = ("task", "regularize", "mlm", "contrastive", "adversarial")


class CompareSpec(Spec):
    """Defaults for ``hybridft compare`` on this recipe (its command-line options win)."""

    strategies: list[str] = Field(min_length=1, description="presets (full, layers, lora, adapter, importance, "
                                                            "head) or recipe files, relative to this recipe")
    seeds: int = Field(1, ge=1, description="seeds per strategy: the recipe's seed, +1, ...")


class Recipe(Spec):
    name: str = "run"
    seed: int = 42
    task: RecipeTask = "classification"
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec | None = Field(None, description="the task's data (not for multi_task: see tasks)")
    tasks: list[TaskSpec] | None = Field(None, description="multi_task: one entry per task")
    sampling: SamplingSpec = Field(default_factory=SamplingSpec, description="multi_task: batch sampling")
    stages: list[AnyStage] = Field(min_length=1)
    metric: str | None = Field(None, description="validation metric for keep-best/early stopping")
    generation: GenerationSpec = Field(default_factory=GenerationSpec, description="causal_lm and seq2seq")
    output: OutputSpec = Field(default_factory=OutputSpec)
    compare: CompareSpec | None = Field(None, description="hybridft compare: strategies and seeds (ignored by run)")

    @model_validator(mode="before")
    @classmethod
    def _mix_as_last_stage(cls, data):
        """A top-level ``mix:`` is shorthand for a final mix stage (one code path for both)."""
        if isinstance(data, dict) and "mix" in data and isinstance(data.get("stages"), list):
            data = dict(data)
            data["stages"] = [*data["stages"], {"name": "mix", "mix": data.pop("mix")}]
        return data

    @model_validator(mode="after")
    def _cross_checks(self):
        if self.task == "multi_task":
            return self._multi_task_checks()
        if self.data is None:
            raise ValueError("data: Field required")
        if self.tasks is not None:
            raise ValueError("tasks: only for task multi_task")
        if self.task in GENERATIVE_TASKS:
            self._generative_checks()
        elif self.model.decoder or self.data.packing:
            raise ValueError(f"{'model.decoder' if self.model.decoder else 'data.packing'}: only for generative tasks")
        valid = TASK_METRICS.get(self.task, CLASSIFICATION_METRICS)
        if self.metric is not None and self.metric not in valid:
            raise ValueError(f"metric {self.metric!r} is not reported for {self.task}; valid: {', '.join(valid)}")
        if self.task == "pair_classification" and not self.data.columns.text_pair:
            raise ValueError("task pair_classification needs data.columns.text_pair")
        if isinstance(self.stages[0], MixStageSpec):
            raise ValueError("stages.0: a mix stage needs a trained stage before it")
        for i, stage in enumerate(self.training_stages):
            if stage.per_task:
                raise ValueError(f"stage {stage.name or i}: per_task is for multi_task recipes")
        for i, stage in enumerate(self.stages):
            if isinstance(stage, MixStageSpec) and stage.mix.rule == "one_se" and \
                    self.selection_metric in ("loss", "perplexity", "bleu", "chrf"):
                raise ValueError(f"stages.{i}.mix.rule: one_se needs a proportion-like metric, not "
                                 f"{self.selection_metric}")
        for i, stage in enumerate(self.stages):
            if not isinstance(stage, StageSpec):
                continue
            for o in stage.objectives:
                self._check_stage_teachers(i, o)
                if o.name == "distill" and "pretrained" in teacher_names(o) and o.kind == "logits" and \
                        self.task not in GENERATIVE_TASKS:
                    raise ValueError(f"stages.{i}: the pretrained model has no trained task head: distill from it "
                                     "with kind: hidden")
                if o.name == "distill" and o.kind == "hidden" and self.task == "seq2seq":
                    raise ValueError(f"stages.{i}: distill kind hidden is not supported for seq2seq; use kind: logits")
                if "fine_tuned" in teacher_names(o) and not any(isinstance(s, MixStageSpec) for s in self.stages[:i]):
                    raise ValueError(f"stages.{i}: objective {o.name} with teacher fine_tuned needs a mix stage "
                                     "before it")
                if "previous" in teacher_names(o) and i == 0:
                    raise ValueError(f"stages.0: objective {o.name} with teacher previous needs a stage before it")
                if o.name == "pseudo_label" and "pretrained" in teacher_names(o):
                    raise ValueError(f"stages.{i}: pseudo_label needs a teacher with a trained head; the pretrained "
                                     "model's is new")
            if stage.init == "pretrained" and i == 0:
                raise ValueError("stages.0.init: the first stage starts from the pretrained weights anyway")
            self._check_pooling(i, stage)
            if self.data.unlabeled is None:
                users = [o.name for o in stage.objectives if o.weight > 0 and _uses_unlabeled(o)]
                if stage.data == "unlabeled" or users:
                    what = f"objective {users[0]!r}" if users else "data: unlabeled"
                    raise ValueError(f"stage {stage.name or i}: {what} needs data.unlabeled")
        return self

    def _check_pooling(self, i: int, stage) -> None:
        """Mean pooling is the same within a run of stages that continue one model, and never in the
        last such run: the saved model must read as plain transformers reads it."""
        if stage.pooling == "first":
            return
        if self.task not in ("classification", "pair_classification"):
            raise ValueError(f"stages.{i}.pooling: mean is for classification and pair_classification")
        later = self.stages[i + 1:]
        restart = next((j for j, s in enumerate(later) if getattr(s, "init", "continue") == "pretrained"), None)
        if restart is None:
            raise ValueError(f"stages.{i}.pooling: plain transformers reads the first token, so the saved model "
                             "cannot be mean-pooled; a later stage with init: pretrained must replace this one's "
                             "model (mean pooling is for teachers)")
        segment = later[:restart]
        if stage.init == "continue" and i > 0 and getattr(self.stages[i - 1], "pooling", "first") != "mean":
            raise ValueError(f"stages.{i}.pooling: mean starts with the model it is used on: the first stage or "
                             "one with init: pretrained")
        if any(getattr(s, "pooling", "mean") != "mean" or isinstance(s, MixStageSpec) for s in segment):
            raise ValueError(f"stages.{i}.pooling: the stages that continue a mean-pooled model are mean-pooled "
                             "too (and are not mix stages)")

    def _generative_checks(self):
        if self.data.packing and self.task != "causal_lm":
            raise ValueError("data.packing: only for causal_lm")
        if self.model.decoder and self.task != "seq2seq":
            raise ValueError("model.decoder: only for seq2seq")
        if self.metric in ("bleu", "chrf") and not self.generation.evaluate:
            raise ValueError(f"metric {self.metric} needs generation.evaluate: true")
        if self.data.unlabeled is not None:
            raise ValueError(f"data.unlabeled: not used by {self.task} (its objectives read the batch)")
        for i, stage in enumerate(self.stages):
            if isinstance(stage, MixStageSpec):
                if stage.mix.ensemble or stage.mix.learn:
                    raise ValueError(f"stages.{i}.mix: ensemble and learn are for classification and tagging; "
                                     f"{self.task} mixes by alpha sweep (and per_layer)")
                continue
            if stage.data == "unlabeled":
                raise ValueError(f"stages.{i}.data: {self.task} trains on its text; data: unlabeled is not used")
            for o in stage.objectives:
                if o.name not in GENERATIVE_OBJECTIVES or getattr(o, "source", "batch") != "batch":
                    raise ValueError(f"stages.{i}: objective {o.name} is not supported for {self.task}; use "
                                     f"{', '.join(GENERATIVE_OBJECTIVES)} (on the batch)")
                if getattr(o, "noise", 0):  # a masked prompt or source would change what the target answers
                    raise ValueError(f"stages.{i}: {o.name} noise is for classification and tagging, not {self.task}")
            if any(getattr(c, "choose_by", None) for c in stage.select):
                raise ValueError(f"stages.{i}: choosing an importance value on held-out data is for classification "
                                 "and tagging; give one value")
            if stage.prefix_cache is not None:
                raise ValueError(f"stages.{i}.prefix_cache: for classification and tagging encoders")

    def _multi_task_checks(self):
        if not self.tasks or len(self.tasks) < 2:
            raise ValueError("tasks: a multi_task recipe needs at least two tasks")
        if self.data is not None:
            raise ValueError("data: a multi_task recipe gives each task its data under tasks")
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"tasks: the name {dup[0]!r} is used by two tasks")
        if self.metric not in (None, "score"):
            raise ValueError("metric: a multi_task recipe selects by score (the mean of the tasks' primary metrics)")
        for i, stage in enumerate(self.stages):
            if isinstance(stage, MixStageSpec):
                raise ValueError(f"stages.{i}: mix stages are for single-task recipes")
            if stage.data == "unlabeled":
                raise ValueError(f"stages.{i}: data: unlabeled is not supported in multi-task recipes yet")
            if any(getattr(c, "choose_by", None) for c in stage.select):
                raise ValueError(f"stages.{i}: choosing an importance value on held-out data is for single-task "
                                 "recipes; give one value")
            if stage.prefix_cache is not None:
                raise ValueError(f"stages.{i}.prefix_cache: not supported in multi-task recipes yet")
            if stage.init != "continue":
                raise ValueError(f"stages.{i}.init: restarting from pretrained is for single-task recipes")
            if stage.pooling != "first":
                raise ValueError(f"stages.{i}.pooling: mean is for single-task recipes")
            if i > 0 and self.stages[i - 1].per_task and not stage.per_task:
                raise ValueError(f"stages.{i}: after a per_task stage the tasks no longer share an encoder; "
                                 "later stages must be per_task too")
            for o in stage.objectives:
                if o.name not in MULTI_TASK_OBJECTIVES or getattr(o, "source", "batch") != "batch" or \
                        getattr(o, "mode", None) == "supervised" or getattr(o, "method", None) == "smart":
                    raise ValueError(f"stages.{i}: objective {o.name} (as configured) is not supported in "
                                     f"multi-task recipes; use {', '.join(MULTI_TASK_OBJECTIVES)} on the batch")
        return self

    def _check_stage_teachers(self, i: int, objective) -> None:
        for teacher in teacher_names(objective):
            if not teacher.startswith(STAGE_REF):
                continue
            name = teacher[len(STAGE_REF):]
            earlier = [self.stage_name(j) for j in range(i)]
            if earlier.count(name) != 1:
                why = "names two earlier stages" if earlier.count(name) > 1 else "names no earlier stage"
                raise ValueError(f"stages.{i}: teacher {teacher} {why}; the stages before it are "
                                 f"{', '.join(earlier) or 'none'}")

    def stage_name(self, index: int) -> str:
        return self.stages[index].name or f"stage{index}"

    def stage_index(self, name: str) -> int:
        return [self.stage_name(i) for i in range(len(self.stages))].index(name)

    def teacher_stages(self, after: int = -1) -> set[str]:
        """The stages whose final weights a teacher (``stage:<name>``) of a stage after ``after`` needs."""
        return {t[len(STAGE_REF):] for s in self.stages[after + 1:] for o in getattr(s, "objectives", ())
                for t in teacher_names(o) if t.startswith(STAGE_REF)}

    @property
    def training_stages(self) -> list[StageSpec]:
        return [s for s in self.stages if isinstance(s, StageSpec)]

    def last_training_stage(self, before: int | None = None) -> StageSpec:
        stages = self.stages[:before] if before is not None else self.stages
        return [s for s in stages if isinstance(s, StageSpec)][-1]

    @property
    def needs_pretrained_state(self) -> bool:
        """M_pre's weights are kept in memory for mixing and L2-SP."""
        if any(isinstance(s, MixStageSpec) for s in self.stages):
            return True
        return any(o.name == "regularize" for s in self.training_stages for o in s.objectives)

    @property
    def selection_metric(self) -> str:
        if self.task == "multi_task":
            return "score"
        if self.metric:
            return self.metric
        if self.task == "seq2seq" and not self.generation.evaluate:
            return "perplexity"  # BLEU needs generated text
        return DEFAULT_METRIC.get(self.task, "accuracy")


def format_validation_error(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        parts = list(e["loc"])
        # drop the stage-kind tag pydantic inserts (stages.0.train.optimizer -> stages.0.optimizer)
        parts = [p for i, p in enumerate(parts) if not (p in ("train", "mix") and i >= 2 and parts[i - 2] == "stages")]
        loc = ".".join(str(p) for p in parts) or "(recipe)"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return lines


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise HybridftError(f"recipe {path} is a folder; give the YAML file")
    if not path.is_file():
        raise HybridftError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise HybridftError(f"recipe {path} is not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise HybridftError(f"recipe {path} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise HybridftError(f"recipe {path} must be a mapping of keys to values, got {type(data).__name__}")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.0.c=value`` overrides; the value is parsed as a YAML scalar (1e-4, true, null...)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise HybridftError(f"override {item!r} must look like key.path=value")
        value = yaml.safe_load(raw) if raw else ""
        parts = key.split(".")
        node = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                    raise HybridftError(f"override {key}: {part!r} is not an index of a list of {len(node)}")
                part = int(part)
            elif not isinstance(node, dict):
                raise HybridftError(f"override {key}: {'.'.join(parts[:i])} is not a mapping")
            if last:
                node[part] = value
            else:
                if isinstance(node, dict) and node.get(part) is None:
                    node[part] = {}
                node = node[part]
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> tuple[Recipe, Path]:
    """Read, override and validate a recipe; returns it with the folder its paths are relative to."""
    data = apply_overrides(read_yaml(path), overrides or [])
    return validate_recipe(data, path), Path(path).resolve().parent


def validate_recipe(data: dict, path: str | Path = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        problems = format_validation_error(e)
        raise HybridftError(
            f"{path}: {len(problems)} problem(s): " + "; ".join(problems)
        ) from None


PATH_KEYS = ("data.train", "data.validation", "data.test", "model.name", "model.decoder")


def apply_cwd_paths(overrides: list[str]) -> list[str]:
    """Overrides of path fields name files relative to the shell's folder: make them absolute."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key in PATH_KEYS and value and not Path(value).is_absolute() and Path(value).exists():
            item = f"{key}={Path(value).resolve()}"
        out.append(item)
    return out
