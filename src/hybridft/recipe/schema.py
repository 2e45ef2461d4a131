"""The recipe schema: pydantic models of every section. Recipes are data; nothing here loads weights
or files. Method sections (``select``, ``objectives``) are the specs their methods register, so a
new method needs no edit here; what a method supports is declared on its spec and checked in
``recipe.checks``.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

from pydantic import Discriminator, Field, Tag, model_validator

from .. import objectives, selectors  # noqa: F401  (importing them registers every method)
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

SelectorSpec = Annotated[Union[SELECTORS.configs()], Field(discriminator="name")]  # noqa: UP007
ObjectiveSpec = Annotated[Union[OBJECTIVES.configs()], Field(discriminator="name")]  # noqa: UP007
TaskType = Literal["classification", "pair_classification", "token_classification"]
RecipeTask = Literal[ALL_TASKS]

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
    chat_template: str | None = Field(None, description="causal_lm with data.columns.messages: a Jinja chat template, "
                                                        "or a file holding one; replaces the tokenizer's and is "
                                                        "saved with the model")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass instead of "
                                                            "keeping them: less memory, about a third more compute")


class Columns(Spec):
    text: str = "text"
    text_pair: str | None = None
    label: str = "label"
    tokens: str = "tokens"
    tags: str = "tags"
    prompt: str | None = Field(None, description="causal_lm: the prompt column; the loss then covers the response only")
    messages: str | None = Field(None, description="causal_lm: a column of conversations, each a list of {role, "
                                                    "content} turns (JSONL); rendered with the chat template, the "
                                                    "loss covers the assistant's turns only")
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
    """A training stage: what trains, on which loss, for how long."""

    kind: ClassVar[str] = "train"
    name: str | None = Field(None, description="names the stage in logs, reports and stage:<name> teachers")
    select: list[SelectorSpec] = Field(default_factory=lambda: [{"name": "full"}], min_length=1,
                                     description="which parameters train: the union of these selectors")
    objectives: list[ObjectiveSpec] = Field(default_factory=lambda: [{"name": "task"}], min_length=1,
                                       description="the loss: the weighted sum of these objectives")
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
    def _checks(self):
        check_stage(self)
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

    kind: ClassVar[str] = "mix"
    name: str | None = "mix"
    mix: MixSpec


def _stage_kind(value) -> str:
    if isinstance(value, dict):
        return "mix" if "mix" in value else "train"
    return "mix" if isinstance(value, MixStageSpec) else "train"


AnyStage = Annotated[Union[Annotated[StageSpec, Tag("train")], Annotated[MixStageSpec, Tag("mix")]],  # noqa: UP007
                     Discriminator(_stage_kind)]


class ShardedMixedPrecision(Spec):
    """FSDP's mixed precision on GPUs: the sharded weights stay fp32 (the optimizer's master copy)."""

    param_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="the dtype weights are gathered in for the forward and backward passes")
    reduce_dtype: Literal["bfloat16", "float32"] = Field("float32", description="the dtype gradients are averaged in")


class DistributedSpec(Spec):
    """How several processes (torchrun / accelerate launch) share the work; ignored by one process."""

    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp: every process holds the whole model and optimizer state; fsdp: each holds a "
                           "shard of every transformer block and of the rest (PyTorch FSDP2)")
    reshard_after_forward: bool = Field(True, description="fsdp: free the gathered weights after each block's "
                                                          "forward (less memory, one more all-gather in backward)")
    cpu_offload: bool = Field(False, description="fsdp: keep the sharded weights, gradients and optimizer state "
                                                 "in CPU memory (GPU runs)")
    mixed_precision: ShardedMixedPrecision | None = Field(None, description="fsdp on GPUs: gather and compute in "
                                                                            "half precision")


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


class SamplingSpec(Spec):
    strategy: Literal["proportional", "temperature", "round_robin"] = Field(
        "proportional", description="which task the next batch comes from")
    temperature: float = Field(2.0, ge=1, description="temperature: task probability ~ size^(1/T)")


class CompareSpec(Spec):
    """Defaults for ``hybridft compare`` on this recipe (its command-line options win)."""

    strategies: list[str] = Field(min_length=1, description="presets (full, layers, lora, adapter, importance, "
                                                            "head) or recipe files, relative to this recipe")
    seeds: int = Field(1, ge=1, description="seeds per strategy: the recipe's seed, +1, ...")



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
        check_recipe(self)
        return self

    def stage_name(self, index: int) -> str:
        return self.stages[index].name or f"stage{index}"

    def stage_index(self, name: str) -> int:
        return [self.stage_name(i) for i in range(len(self.stages))].index(name)

    def teacher_stages(self, after: int = -1) -> set[str]:
        """The stages whose final weights a teacher (``stage:<name>``) of a stage after ``after`` needs."""
        return {t[len(STAGE_REF):] for s in self.stages[after + 1:] for o in getattr(s, "objectives", ())
                for t in o.teachers() if t.startswith(STAGE_REF)}

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
