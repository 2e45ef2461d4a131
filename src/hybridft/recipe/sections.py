"""The recipe's sections that hold settings only (model, data, optimizer, output...); the stages and
the recipe itself are in ``schema``."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BeforeValidator, Discriminator, Field, Tag, model_validator

from ..merging import METHODS, weights_problem
from ..optimizers import OPTIMIZERS
from ..spec import Spec


class ModelSpec(Spec):
    name: str | None = Field(None, description="an embedded model (smollm2: the decoder LLM, `hybridft download "
                                               "smollm2`), a .gguf file, a local HF folder or a hub name; empty = "
                                               "the embedded MiniLM")
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
    compile: bool = Field(False, description="torch.compile the model's forward for the training steps and the "
                                             "stage's evaluations (inductor: a C++ compiler on the CPU, Triton on "
                                             "a GPU); the first steps pay for compiling, about a minute or two")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass instead of "
                                                            "keeping them: less memory, about a third more compute")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="the frozen weights during a stage: bfloat16 halves a frozen base's memory (a "
                               "LoRA run on an LLM) and runs the forward in bf16 autocast; trained weights, "
                               "gradients and optimizer state stay float32. Frozen entries are saved rounded "
                               "to bfloat16 (exact for a checkpoint saved in bfloat16). float16 is not "
                               "offered: without loss scaling its gradients underflow")


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


class ConversationFormat(Spec):
    """Each row of a table (or pair of parallel lines) as a one-exchange conversation, for chat
    fine-tuning on data that is not in messages form: SST-2 as questions and one-word answers,
    Multi30k as translation requests. ``{column}`` in a turn is replaced by the row's value."""

    system: str | None = Field(None, description="the system turn (none when absent)")
    user: str = Field(description="the user's turn, e.g. 'Review: {sentence}'")
    assistant: str = Field(description="the answer the model learns, e.g. '{label}'")
    values: dict[str, dict[str, str]] = Field(default_factory=dict, description="words for a column's values, "
                                              "e.g. {label: {'0': negative, '1': positive}}; a value not listed "
                                              "is an error")


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
    conversation: ConversationFormat | None = Field(None, description="causal_lm: make a conversation of each "
                                                                      "row (chat fine-tuning on any table)")

    @model_validator(mode="after")
    def _labels_unique(self):
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError("data.labels has duplicates")
        return self

    @model_validator(mode="after")
    def _conversations_are_messages(self):
        """Rows made into conversations are read as a messages column of that name from then on."""
        if self.conversation is not None and self.columns.messages is None:
            self.columns.messages = "messages"
        return self


Beta = Annotated[float, Field(ge=0, lt=1)]  # Adam's decay rates: 1 or more never forgets, and diverges


class OptimizerSpec(Spec):
    name: Literal["adamw", "adam", "sgd", "rmsprop"] = "adamw"
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.0, ge=0, lt=1, description="sgd and rmsprop only")
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)


TORCH_OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop")  # OptimizerSpec's names
OPTIMIZER_NAMES = sorted([*TORCH_OPTIMIZERS, *OPTIMIZERS.names()])


def _optimizer_tag(value) -> str | None:
    """torch's optimizers are one entry (no name: adamw); each registered one (galore_adamw...) its own."""
    name = value.get("name", "adamw") if isinstance(value, dict) else getattr(value, "name", None)
    return "torch" if name in TORCH_OPTIMIZERS else name if name in OPTIMIZERS.names() else None


def _known_optimizer(value):
    name = value.get("name", "adamw") if isinstance(value, dict) else getattr(value, "name", None)
    if isinstance(value, dict) and _optimizer_tag(value) is None:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZER_NAMES)}")
    return value


# the optimizer entry: each optimizer with its own keys (an error's path leaves the tag out: recipe.io)
AnyOptimizer = Annotated[
    Union[(Annotated[OptimizerSpec, Tag("torch")], *(Annotated[c, Tag(c.model_fields["name"].default)]  # noqa: UP007
                                                     for c in OPTIMIZERS.configs()))],
    Discriminator(_optimizer_tag, custom_error_type="optimizer_entry",
                  custom_error_message="an optimizer entry is a mapping, e.g. {name: adamw, lr: 1.0e-4}"),
    BeforeValidator(_known_optimizer)]


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


MethodName = Literal[tuple(METHODS)]


class MixSpec(Spec):
    method: MethodName | list[MethodName] = Field(
        "linear", description="how M_pre and the fine-tuned model(s) are merged (a list: each method's grid is "
                              "evaluated, and the best point of any method is chosen): " +
                              "; ".join(f"{n}: {m.about}" for n, m in METHODS.items()))
    alphas: list[float] = Field(default_factory=lambda: [round(0.1 * i, 1) for i in range(11)], min_length=1,
                                description="linear, slerp: weights of the pretrained model to evaluate, each in "
                                            "[0, 1]")
    scales: list[float] = Field([0.5, 0.75, 1.0], min_length=1,
                                description="task_arithmetic, ties, dare_*: factors of the merged task vector to "
                                            "evaluate (1: the task vectors as they are)")
    densities: list[float] = Field([0.2, 0.5, 0.8], min_length=1,
                                   description="ties, dare_*: shares of each task vector's entries to keep, each "
                                               "in (0, 1]; every scale x density pair is evaluated")
    majority_sign: Literal["total", "frequency"] = Field("total", description="ties, dare_ties: a sign is elected by "
                                                                              "the summed values or by count")
    models: list[str] = Field([], description="further fine-tuned models merged with this run's: saved model "
                                              "folders or stage:<name> (an earlier training stage's weights); "
                                              "all with this run's labels and architecture")
    weights: list[float] | None = Field(None, description="one weight per fine-tuned model (this run's, then "
                                                          "models); default: equal")
    refine: Literal["golden"] | None = Field(None, description="linear: golden-section search around the best "
                                                               "alpha")
    refine_steps: int = Field(6, ge=2)
    per_layer: bool = Field(False, description="linear: then tune embeddings/lower/upper/head alphas one at a time")
    ensemble: bool = Field(False, description="linear: also compare output-level mixing with M_pre + a trained head")
    probe_steps: int = Field(100, ge=1, description="head-only steps that give M_pre its head (for ensemble)")
    learn: bool = Field(False, description="linear: also learn sigmoid-bounded mixing coefficients on training data")
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
        if any(not 0 < d <= 1 for d in self.densities):
            raise ValueError(f"a density must be in (0, 1], got {next(d for d in self.densities if not 0 < d <= 1)}")
        if any(s <= 0 for s in self.scales):
            raise ValueError("a scale must be above 0")
        problem = weights_problem(self.weights)
        if problem:
            raise ValueError(f"mix.weights: {problem}")
        return self

    @property
    def methods(self) -> list[str]:
        return [self.method] if isinstance(self.method, str) else list(self.method)

    @property
    def interpolates(self) -> bool:
        """Today's two-model linear interpolation (with its refinements), not the merge search."""
        return self.method == "linear" and not self.models

    @model_validator(mode="after")
    def _fits_the_method(self):
        methods = [METHODS[m] for m in self.methods]
        if not methods or len(set(self.methods)) < len(methods):
            raise ValueError("mix.method: give each method once")
        given = self.model_fields_set
        for field, takes in (("alphas", "alpha"), ("scales", "scale"), ("densities", "density")):
            if field in given and not any(takes in m.searches for m in methods):
                raise ValueError(f"mix.{field} is not a parameter of method {', '.join(self.methods)}")
        two_model_linear = [k for k in ("refine", "per_layer", "ensemble", "learn") if getattr(self, k)]
        if two_model_linear and not self.interpolates:
            raise ValueError(f"mix.{two_model_linear[0]} works with method linear on M_pre and this run's model "
                             "only (no mix.models, no list of methods)")
        alone = next((m.name for m in methods if not m.several_models), None)
        if self.models and alone:
            raise ValueError(f"method {alone} merges M_pre with one fine-tuned model; mix.models is for the others")
        if self.weights is not None and any(w <= 0 for w in self.weights):
            raise ValueError("mix.weights must be above 0")
        return self


class GenerationSpec(Spec):
    """How text is generated, for evaluation (seq2seq BLEU/chrF) and for ``hybridft predict``."""

    max_new_tokens: int = Field(64, ge=1)
    num_beams: int = Field(1, ge=1, description="1: greedy (or sampling); more: beam search")
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(50, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    evaluate: bool = Field(True, description="seq2seq and chat: generate during evaluation (BLEU, chrF; chat: "
                                             "the last assistant turn of each conversation); off: loss only")
    chat_metrics: list[Literal["exact_match", "bleu", "chrf"]] = Field(
        ["exact_match"], min_length=1, description="chat: how generated answers are scored against the "
                                                   "conversation's last assistant turn (exact_match: the same "
                                                   "text once whitespace is collapsed)")
    uncased: bool | None = Field(None, description="compare lower-cased, accent-stripped text (default: when the "
                                                   "tokenizer is uncased, which cannot produce case or accents)")


class ShardedMixedPrecision(Spec):
    """FSDP's mixed precision on GPUs: the sharded weights stay fp32 (the optimizer's master copy)."""

    param_dtype: Literal["bfloat16", "float32"] = Field(
        "bfloat16", description="the dtype weights are gathered in for the forward and backward passes (float16 "
                                "is not offered: without loss scaling its gradients underflow)")
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


class SamplingSpec(Spec):
    strategy: Literal["proportional", "temperature", "round_robin"] = Field(
        "proportional", description="which task the next batch comes from")
    temperature: float = Field(2.0, ge=1, description="temperature: task probability ~ size^(1/T)")


class CompareSpec(Spec):
    """Defaults for ``hybridft compare`` on this recipe (its command-line options win)."""

    strategies: list[str] = Field(min_length=1, description="presets (full, layers, lora, adapter, importance, "
                                                            "head) or recipe files, relative to this recipe")
    seeds: int = Field(1, ge=1, description="seeds per strategy: the recipe's seed, +1, ...")
