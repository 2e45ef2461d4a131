"""One stage of training: what its steps need (model, objectives, optimizer, batches), built once when
the stage opens, and the few operations the loop in ``training.loop`` strings together."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..data.batching import epoch_batches
from ..errors import HybridftError
from ..evaluate import evaluate_data, scalar_metrics
from ..multitask.sampling import multitask_batches
from ..objectives.base import StepContext, model_inputs
from ..progress import Progress
from ..registry import OBJECTIVES
from ..tasks import GENERATIVE_TASKS, MULTI_TASK, loss_targets, lower_is_better
from .best import BestWeights
from .checkpoint import (
    SHARDED,
    guarded_write,
    load_checkpoint,
    objective_state,
    process_rng_states,
    restore_objective_state,
    save_checkpoint,
    saved_artifacts,
    selector_state,
    stage_sharded,
)
from .masking import EntryMasks
from .optim import build_optimizer, build_scheduler
from .prefix_cache import PrefixCache, prefix_cache_for_stage, unsupported
from .selection import Selection
from .state import StageState


def is_better(value: float, best: float | None, metric: str, min_delta: float = 0.0) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best - min_delta if lower_is_better(metric) else value > best + min_delta


def stage_name(spec, index: int) -> str:
    return spec.name or f"stage{index}"


def stage_seed(run, index: int) -> int:
    """The seed of a stage's data order and of its objectives' streams."""
    return run.recipe.seed * 1_000_003 + index * 1009


@dataclass
class Stage:
    run: object
    index: int
    spec: object
    name: str
    selection: Selection
    objectives: list  # those with a weight above 0: an objective of weight 0 is not built at all
    examples: list[dict]  # what the epochs run over: the labeled or the unlabeled examples
    total_steps: int
    optimizer: torch.optim.Optimizer
    scheduler: object
    best: BestWeights
    state: StageState
    wrapped: torch.nn.Module  # what training forwards run through: the model on one process, compiled or not
    extra: tuple  # parameters outside the model that train with it (an objective's MLM head)
    trainable: list  # everything the optimizer updates (whose gradient norm is clipped)
    cache: PrefixCache | None = None
    cache_note: str | None = None
    entry_masks: EntryMasks | None = None
    compiled_model: torch.nn.Module | None = None  # the stage's evaluations run it (model.compile)
    running: dict = field(default_factory=dict)  # losses of the optimizer step in progress
    dtypes: dict = field(default_factory=dict)  # what the stage trained in (precision.describe), once it closes
    logged: dict = field(default_factory=dict)  # the last step's log record (the API's callbacks see it)
    tic: float = 0.0

    @property
    def model(self) -> torch.nn.Module:
        return self.selection.model

    @property
    def seed(self) -> int:
        """The seed of this stage's data order, objectives' streams and selectors' draws."""
        return stage_seed(self.run, self.index)

    @property
    def step_hooks(self) -> list:
        """What is called before each step and after its backward: the selectors, then an optimizer
        that switches the block it trains during the stage (badam)."""
        return [*self.selection.selectors, *([self.optimizer] if hasattr(self.optimizer, "before_step") else [])]

    @property
    def labeled(self) -> bool:
        return self.spec.data == "labeled"

    @property
    def done(self) -> bool:
        return self.state.step >= self.total_steps or self.state.stopped_early

    @classmethod
    def open(cls, run, index: int, spec, selection: Selection, resume_from=None) -> Stage:
        name = stage_name(spec, index)
        run.precision.train_in_fp32(selection.model.parameters())  # before the wrappers and the optimizer
        run.model = selection.model  # objectives see the stage's model (with its LoRA layers or adapters)
        objectives = [OBJECTIVES.build(c) for c in spec.objectives if c.weight > 0]
        if resume_from is not None:
            restore_objective_state(resume_from, objectives)  # e.g. the pseudo-labeled pool, not labeled again
        for o in objectives:
            o.on_stage_start(run)
        run.artifacts.stage_start_model = None  # teachers have their copies (init: pretrained)
        cache, note = open_prefix_cache(run, spec, name, selection.model, objectives)
        examples = run.data.train if spec.data == "labeled" else run.data.unlabeled
        total = spec.max_steps or spec.epochs * math.ceil(micro_batches_per_epoch(run, examples, spec.batch_size)
                                                          / spec.grad_accum_steps)
        # the word embeddings stay whole on every process when an objective reads them outside the forward
        replicated = (selection.model.get_input_embeddings().weight,) if any(o.config.reads_embeddings
                                                                            for o in objectives) else ()
        wrapped = run.processes.wrap(selection.model, replicated)
        compiled_model = None
        if run.recipe.model.compile:  # the compiled module shares the parameters; state dicts keep their keys
            compiled_model = torch.compile(selection.model)
            wrapped = compiled_model if wrapped is selection.model else torch.compile(wrapped)
        lr_overrides = {k: v for s in selection.selectors
                        for k, v in s.lr_overrides(selection.model, spec.optimizer.lr).items()}
        extra = tuple(p for o in objectives for p in o.trainable_parameters())
        run.precision.train_in_fp32(extra)
        optimizer = build_optimizer(spec.optimizer, selection.model, lr_overrides, extra)
        scheduler = build_scheduler(spec.scheduler, optimizer, total)
        best = BestWeights(run, index, selection.model, resume_from)  # before any step (see BestWeights)
        state = StageState(stage=index) if resume_from is None else \
            resume_stage(run, resume_from, selection.model, optimizer, scheduler)
        run.processes.barrier()
        # after loading: the entries a mask leaves out are kept at their stage-start values
        masks = EntryMasks(selection.model, selection.masks, run.processes.local) if selection.masks else None
        trainable = [p for p in selection.model.parameters() if p.requires_grad] + list(extra)
        return cls(run, index, spec, name, selection, objectives, examples, total, optimizer, scheduler, best,
                   state, wrapped, extra, trainable, cache, note, masks, compiled_model)

    @contextmanager
    def started(self):
        """The stage under way (a language model's first stage evaluates where it starts), with its
        progress display, and the frozen weights in the precision policy's dtype."""
        run, st = self.run, self.state
        with run.precision.frozen_held(self.model):
            if (self.index == 0 and st.step == 0 and st.start is None and run.data.task in GENERATIVE_TASKS
                    and self.spec.evaluate_start):
                # where a language model starts (its new LM head or cross-attention is untrained): the
                # report shows perplexity before and after
                st.start = self.evaluation(f"eval {self.name} (start)")
                run.log.write(run.global_step, {"stage": self.name, **{f"eval/{k}": v for k, v in st.start.items()}})
            bar = Progress(self.total_steps, f"train {self.name}", run.progress, initial=st.step)
            self.model.train()
            if self.cache:
                self.cache.eval_prefix()
            try:
                yield bar
            finally:
                bar.close()

    def begin_epoch(self) -> list[list[int]]:
        """This epoch's batches (example indices, the same for every attempt at it); the objectives'
        epoch hook runs when the epoch starts from its beginning."""
        run, st, spec = self.run, self.state, self.spec
        seed = stage_seed(run, self.index) + st.epoch
        if run.data.task == MULTI_TASK:
            lengths = [len(ex["input_ids"]) for ex in self.examples] if spec.group_by_length else None
            batches = multitask_batches(run.data.task_rows(), spec.batch_size, seed, run.recipe.sampling.strategy,
                                        run.recipe.sampling.temperature, lengths)
        else:
            batches = epoch_batches([len(ex["input_ids"]) for ex in self.examples], spec.batch_size, seed,
                                    spec.group_by_length, spec.grad_accum_steps)
        if st.micro == 0:
            for o in self.objectives:
                o.on_epoch_start(run, st.epoch)
        self.tic, self.running = time.perf_counter(), {}
        return batches

    def forward_backward(self, batches: list[list[int]]) -> bool:
        """One micro-batch; True when it completes an optimizer step's group."""
        run, st, accum = self.run, self.state, self.spec.grad_accum_steps
        micro = st.micro
        group_start = micro - micro % accum
        group = batches[group_start:min(group_start + accum, len(batches))]  # the last may be short
        is_update = micro == group_start + len(group) - 1
        if micro == group_start:
            for s in self.step_hooks:
                s.before_step(self.model, self)
        share = self.loss_share(batches[micro], group)
        ctx = StepContext(run, stage_seed(run, self.index), st.draw, batches[micro], self.labeled,
                          self.spec.batch_size, run.processes.rank, run.processes.world, self.model)
        ctx.batch_ids = ctx.shard(batches[micro])  # this process's part of the global batch
        batch = ctx.collate([self.examples[i] for i in ctx.batch_ids])
        with run.processes.no_sync(self.wrapped, sync=is_update):
            with run.precision.autocast():
                outputs = self.shared_forward(batch, ctx)
                losses = {o.name: o.loss(self.wrapped, batch, outputs, ctx) for o in self.objectives}
                loss = sum(o.weight * losses[o.name] for o in self.objectives)
            st.step_memory_mb = max(st.step_memory_mb, run.processes.memory_now_mb())  # the activations' peak
            run.processes.backward(loss * share)
        for k, v in {"loss": loss, **{f"loss/{n}": v for n, v in losses.items()}}.items():
            self.running[k] = self.running.get(k, 0.0) + float(v.detach()) * share
        st.samples += len(batches[micro])
        st.tokens += int(batch["attention_mask"].sum())
        st.micro += 1
        st.draw += 1
        return is_update

    def loss_share(self, micro_batch: list[int], group: list[list[int]]) -> float:
        """This process's weight for its part of a micro-batch: its targets over the optimizer step's,
        across micro-batches and processes (times the processes, whose gradients are averaged). Losses
        are means over their targets, so k accumulated micro-batches, or W processes, equal one batch:
        token-level losses count tokens, sequence-level ones examples. A process whose share of a
        small batch is empty repeats an example (every process must step): it weighs nothing."""
        run = self.run
        causal = run.data.task == "causal_lm"
        by_tokens = self.labeled and run.data.task != MULTI_TASK  # a multi-task group mixes kinds of target

        def targets(ids: list[int]) -> int:
            return sum(loss_targets(self.examples[i], causal) for i in ids) if by_tokens else len(ids)

        mine = micro_batch[run.processes.rank::run.processes.world]
        return targets(mine) / max(1, sum(targets(b) for b in group)) * run.processes.world

    def shared_forward(self, batch: dict, ctx: StepContext):
        """The one forward pass of the batch that objectives share (None when none reads it)."""
        if not any(o.uses_outputs for o in self.objectives):
            return None
        hidden_states = any(o.needs_hidden_states for o in self.objectives)
        if self.cache:
            where = "labeled" if self.labeled else "unlabeled"
            examples = [self.examples[i] for i in ctx.batch_ids]
            return self.cache.forward(self.model, batch, examples, [(where, i) for i in ctx.batch_ids], ctx.collate)
        return self.wrapped(**model_inputs(batch), output_hidden_states=hidden_states)

    def step(self, bar) -> None:
        """The optimizer step that ends a group of micro-batches, then its log line."""
        run, st, model = self.run, self.state, self.model
        run.processes.average_gradients(self.extra)  # the model's own are DDP's
        if self.entry_masks:
            self.entry_masks.zero_unselected_grads()
        for s in self.step_hooks:
            s.after_backward(model)
        # the norm is needed anyway to catch inf/NaN gradients; inf as the limit means no clipping
        grad_norm = run.processes.clip_grad_norm(self.trainable, self.spec.max_grad_norm or math.inf)
        if math.isfinite(self.running["loss"]) and bool(torch.isfinite(grad_norm)):
            self.optimizer.step()
            st.step_memory_mb = max(st.step_memory_mb, run.processes.memory_now_mb())  # gradients + optimizer state
            st.bad_run = 0
        else:  # a non-finite loss or gradient: no update (the weights stay as they were), counted
            st.bad_steps += 1
            st.bad_run += 1
            self.running["skipped_nonfinite"] = 1
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.entry_masks:
            self.entry_masks.restore_unselected()
        for s in self.selection.selectors:
            s.after_step(model)
        st.step += 1
        run.global_step += 1
        stepped = time.perf_counter()
        st.train_time_s += stepped - self.tic
        self.log_step(bar)
        st.train_time_s += time.perf_counter() - stepped  # the clock covers logging (metrics.jsonl, TensorBoard)
        if st.bad_run >= self.spec.max_bad_steps:
            self.checkpoint()  # the weights are the last good ones: no bad step changed them
            where = f" (checkpoint in {run.checkpoint_dir})" if run.checkpointing else ""
            raise HybridftError(f"stage {self.name}: {st.bad_run} steps in a row had a non-finite loss or gradient "
                                f"(last at step {st.step}); stopped with the last good weights{where}. "
                                "Lower the learning rate or check the data")

    def log_step(self, bar) -> None:
        run, st = self.run, self.state
        running = run.processes.mean(self.running)  # the global batch's losses, not this process's share
        throughput = st.samples / max(st.train_time_s, 1e-9)
        self.logged = {"stage": self.name, "epoch": st.epoch, "lr": self.scheduler.get_last_lr()[0], **running,
                       "samples_per_s": throughput}
        run.log.write(run.global_step, self.logged)
        bar.update(1, loss=f"{running['loss']:.4f}", samples_per_s=f"{throughput:.1f}")
        self.running = {}

    def evaluate_and_checkpoint(self, end_of_epoch: bool) -> None:
        """After an optimizer step: evaluate when due (and stop early if asked), checkpoint when due."""
        st, spec, output = self.state, self.spec, self.run.recipe.output
        done = st.step >= self.total_steps
        if (spec.eval_every and st.step % spec.eval_every == 0) or done or (end_of_epoch and not spec.eval_every):
            if self.evaluated:
                self.evaluate()
            if spec.early_stopping and st.bad_evals >= spec.early_stopping.patience:
                st.stopped_early = done = True
            if not output.checkpoint_every and not done:
                self.checkpoint()
        if output.checkpoint_every and st.step % output.checkpoint_every == 0 and not done:
            self.checkpoint()
        self.tic = time.perf_counter()

    @property
    def evaluated(self) -> bool:
        """A stage over unlabeled text (e.g. MLM) has no task head worth evaluating, unless an
        objective teaches it (a distilled or pseudo-labeled student)."""
        return self.labeled or any(o.teaches_head for o in self.objectives)

    def evaluation(self, desc: str) -> dict:
        run = self.run
        model = self.model if self.compiled_model is None else self.compiled_model
        return scalar_metrics(evaluate_data(run, model, "validation", self.spec.eval_batch, desc, run.progress))

    def evaluate(self) -> None:
        run, st, spec, metric = self.run, self.state, self.spec, self.run.recipe.selection_metric
        scalars = self.evaluation(f"eval {self.name}")
        run.log.write(run.global_step, {"stage": self.name, **{f"eval/{k}": v for k, v in scalars.items()}})
        st.history.append({"step": st.step, **scalars})
        if self.cache:
            self.cache.eval_prefix()  # evaluation put the whole model back in train mode
        # min_delta decides what counts as progress for early stopping; any improvement is kept as best
        min_delta = spec.early_stopping.min_delta if spec.early_stopping else 0.0
        st.bad_evals = 0 if is_better(scalars[metric], st.best, metric, min_delta) else st.bad_evals + 1
        if is_better(scalars[metric], st.best, metric):
            st.best, st.best_step = scalars[metric], st.step
            if spec.keep_best:
                self.best.save(self.model)

    def checkpoint(self) -> None:
        run = self.run
        if not run.checkpointing:
            return
        reports, tensors = saved_artifacts(run)
        rng_states = process_rng_states(run.processes)
        name, sharded = f"step-{run.global_step}", run.processes.sharded
        if sharded:  # every process writes its shards; the main process completes the checkpoint
            stage_sharded(run.checkpoint_dir, name, run.processes, self.model, self.optimizer)
        if run.processes.is_main:
            save_checkpoint(run.checkpoint_dir, name, None if sharded else self.model,
                            None if sharded else self.optimizer, self.scheduler,
                            {"stage_state": self.state.to_json(), "global_step": run.global_step,
                             "log_lines": run.log.lines, "stage_reports": run.stage_reports, "artifacts": reports},
                            run.recipe.output.keep_checkpoints, extra_files=(self.best.path,),
                            extra_tensors={**selector_state(self.selection.selectors),
                                           **objective_state(self.objectives), **tensors},
                            rng_states=rng_states, staged=sharded)
        run.processes.barrier()

    def close(self) -> dict:
        """Gather the weights (sharded ones into a plain model), restore the best ones if asked, let
        selectors and objectives finish; the stage's report."""
        run = self.run
        run.processes.barrier()  # the best weights are written by the main process
        self.dtypes = run.precision.describe(self.model, self.optimizer)
        self.optimizer.state.clear()  # done with: its memory is free before the weights are gathered
        model = run.processes.full_model(self.model)
        if self.spec.keep_best:
            self.best.restore(model)
        export = run.recipe.single_selector()
        for s in self.selection.selectors:
            if s.config == export and run.checkpointing and run.processes.is_main:  # the run's own stage
                with guarded_write("the PEFT adapter folder", run.checkpoint_dir):
                    s.export(model, run.run_dir)
            model = s.finish(model)
        for o in self.objectives:
            o.on_stage_end(run)
        run.model = model
        from .stage_report import stage_report  # it reads a Stage: imported where it is used

        return stage_report(self)


def resume_stage(run, checkpoint, model, optimizer, scheduler) -> StageState:
    """Where the stage was at ``checkpoint``: weights and optimizer state (sharded ones through the
    strategy, on any number of processes), scheduler, this process's RNG."""
    sharded = (checkpoint / SHARDED).is_dir()
    if sharded:
        run.processes.load_sharded(checkpoint / SHARDED, model, optimizer)
    state = load_checkpoint(checkpoint, None if sharded else model, None if sharded else optimizer, scheduler,
                            process_index=run.processes.rank)
    return StageState.from_json(state["stage_state"])


def micro_batches_per_epoch(run, examples: list[dict], batch_size: int) -> int:
    if run.data.task == MULTI_TASK:
        return sum(math.ceil(len(rows) / batch_size) for rows in run.data.task_rows())
    return math.ceil(len(examples) / batch_size)


def open_prefix_cache(run, spec, name: str, model, objectives) -> tuple[PrefixCache | None, str | None]:
    """The stage's cache of frozen-prefix outputs, or why there is none."""
    if spec.prefix_cache is None:
        return None, None
    if run.processes.world > 1:
        raise HybridftError(f"stage {name}: prefix_cache runs on one process for now; remove it for several")
    if any(o.needs_hidden_states for o in objectives):  # layer indices would shift with the prefix left out
        return None, "off: an objective reads every layer's hidden states"
    if unsupported(model):
        return None, unsupported(model)
    cache = prefix_cache_for_stage(run, model, spec.prefix_cache.max_mb)
    return cache, None if cache else "off: nothing below the trained layers is frozen"
