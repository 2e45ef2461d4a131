"""Typed state: what a run carries from one stage to the next, and what one stage carries between steps.

Nothing here is a string-keyed bag: every piece that stages hand each other has a named, typed field.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from ..data import TaskData
from ..errors import HybridftError
from ..generative.models import decoder_source, load_generative_model
from ..models import fit_vocabulary, load_model
from ..recipe import Recipe
from ..selectors import since_restart, stage_structure
from ..tasks import GENERATIVE_TASKS
from .hooks import RunHooks
from .metrics_log import MetricsLog
from .parallel import SingleProcess
from .precision import Precision


@dataclass
class Artifacts:
    """What stages hand to later stages."""

    pretrained_state: dict | None = None  # M_pre's tensors, kept before training for mixing and L2-SP
    fine_tuned_state: dict | None = None  # M_fine as a mix stage found it (teacher fine_tuned)
    mix_report: dict | None = None  # what the mix stage evaluated and chose
    stage_weights: dict[str, dict] = field(default_factory=dict)  # stage name -> final weights (stage:<name>)
    # init: pretrained: the model as the last stage left it, while the restarted stage builds its teachers
    stage_start_model: torch.nn.Module | None = None
    prefix_cache: object | None = None  # training.prefix_cache.PrefixCache, reused by a later stage


@dataclass
class Run:
    recipe: Recipe
    run_dir: Path
    model: torch.nn.Module
    tokenizer: object
    data: TaskData
    collator: object
    processes: SingleProcess  # one process, or several (DDP); see training.parallel
    precision: Precision
    log: MetricsLog
    model_source: str  # the pretrained model's folder or hub name
    base_dir: Path  # the folder recipe-relative paths (teacher folders) start from
    progress: bool = True
    checkpointing: bool = True  # off for trial runs (e.g. choosing an importance density)
    global_step: int = 0
    stage_reports: list[dict] = field(default_factory=list)
    artifacts: Artifacts = field(default_factory=Artifacts)
    hooks: RunHooks = field(default_factory=RunHooks)  # the Python API's callbacks (none on the command line)

    @property
    def device(self) -> torch.device:
        return self.processes.device

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def sub_run(self, **changes) -> Run:
        """A run that trains a copy of something (a search trial, one task's model, M_pre's probe)
        without touching this run's reports, artifacts or checkpoints; the API's callbacks do not see
        it unless ``hooks`` is passed (one task's part of a per-task stage)."""
        return replace(self, **{"checkpointing": False, "stage_reports": [], "artifacts": copy.copy(self.artifacts),
                                "hooks": RunHooks(), **changes})

    def load_pretrained(self) -> torch.nn.Module:
        """The pretrained model the run started from, with a new head (drawn from the global RNG)."""
        return load_recipe_model(self.recipe, self.model_source, self.base_dir, self.tokenizer,
                                 self.data.label_names)

    def skeleton_after(self, end: int) -> torch.nn.Module:
        """A model shaped as the run's model is after ``stages[:end]``: the pretrained model with the
        modules (adapters, LoRA) those stages inserted since the last restart; its weights are to be loaded."""
        with torch.random.fork_rng(devices=[]):  # its new head and modules must not move the run's RNG
            model = self.load_pretrained()
            for spec in since_restart(self.recipe.stages[:end]):
                model = stage_structure(model, spec)
        return model


@dataclass
class StageState:
    """Where a stage is: checkpointed as it is (``asdict``), so a resumed stage goes on exactly."""

    stage: int
    step: int = 0  # optimizer steps
    epoch: int = 0
    micro: int = 0  # micro-batches done in this epoch
    draw: int = 0  # micro-batches drawn in this stage (objectives' streams follow it)
    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # evaluations in a row without progress (early stopping)
    bad_steps: int = 0  # steps skipped for a non-finite loss or gradient
    bad_run: int = 0  # ... of them in a row
    history: list[dict] = field(default_factory=list)
    train_time_s: float = 0.0
    samples: int = 0
    tokens: int = 0
    stopped_early: bool = False
    start: dict | None = None  # a language model's metrics before its first stage
    step_memory_mb: float = 0.0  # the most memory this process held at a training step (weights, gradients,
    # optimizer state and activations; not what loading the model or gathering it took)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> StageState:
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise HybridftError(f"the checkpoint was written by another version of hybridft (it has {unknown[0]!r}); "
                                "start the run again")
        return cls(**data)


def load_recipe_model(recipe, source: str, base_dir: Path, tokenizer, label_names: list[str],
                      notes: dict | None = None):
    """The recipe's model as its task needs it: a classification or tagging head, a causal LM, or a
    seq2seq model (possibly an encoder-decoder built from two pretrained models). Its embeddings grow
    to the tokenizer's size where they are smaller, and a head that reads the last token (decoders)
    knows the pad token; ``notes`` gets a line for the report about what was changed."""
    if recipe.task in GENERATIVE_TASKS:
        model = load_generative_model(source, recipe.task, tokenizer, decoder_source(recipe.model.decoder, base_dir),
                                      recipe.model.trust_remote_code, recipe.model.dtype)
    else:
        model = load_model(source, recipe.task, label_names, recipe.model.trust_remote_code, recipe.model.dtype)
        if getattr(model.config, "pad_token_id", None) is None:  # last-token pooling skips the padding by it
            model.config.pad_token_id = tokenizer.pad_token_id
    grown = fit_vocabulary(model, tokenizer)
    if grown and notes is not None:
        notes["vocabulary"] = grown
    if recipe.model.gradient_checkpointing:
        enable_checkpointing(model)
    return model


def enable_checkpointing(model) -> None:
    """Activations recomputed in backward. The non-reentrant kind needs no gradient on the inputs, so
    it works with frozen embeddings and with LoRA or adapters on a frozen base."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise HybridftError(f"model.gradient_checkpointing: {type(model).__name__} does not support it")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False  # a cache of keys and values is of no use in training
