"""run_stage(): one explicit training loop on Accelerate, readable top to bottom.

forward -> each objective's weighted loss -> backward -> selector hooks -> clip -> step -> log,
evaluate, checkpoint. Selectors and objectives plug in only through their hook methods.
"""

from __future__ import annotations

import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..architecture import trainable_by_module
from ..errors import HybridftError
from ..evaluate import evaluate_data, scalar_metrics
from ..multitask.sampling import multitask_batches
from ..objectives.base import StepContext, model_inputs
from ..pooling import pooled_as
from ..recipe import GENERATIVE_TASKS, lower_is_better
from ..registry import OBJECTIVES, SELECTORS
from .checkpoint import (
    load_checkpoint,
    objective_state,
    process_rng_states,
    restore_objective_state,
    restore_selector_state,
    save_checkpoint,
    saved_artifacts,
    selector_state,
)
from .masking import EntryMasks, union_selection
from .optim import build_optimizer, build_scheduler
from .prefix_cache import prefix_cache_for_stage
from .restart import forget_stage_start


def epoch_batches(lengths: list[int], batch_size: int, seed: int, group_by_length: bool = False) -> list[list[int]]:
    """A seeded shuffle per (run seed, stage, epoch): the data order never depends on RNG state,
    so a resumed run sees exactly the batches the interrupted one would have.

    With ``group_by_length``, examples of similar length share a batch (sorted within shuffled
    windows of 50 batches, then the batches shuffled), so dynamic padding wastes little compute."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(lengths), generator=g).tolist()
    if not group_by_length:
        return [perm[i:i + batch_size] for i in range(0, len(perm), batch_size)]
    window = 50 * batch_size
    batches = []
    for start in range(0, len(perm), window):
        chunk = sorted(perm[start:start + window], key=lambda i: -lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def select_parameters(model, selectors) -> tuple[int, dict]:
    """Freeze everything, then train the union of what the selectors name.
    Returns the number of trainable entries and the entry masks of partly trained tensors."""
    whole, masks = union_selection(model, selectors)
    for name, p in model.named_parameters():
        p.requires_grad_(name in whole or name in masks)
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in whole) + EntryMasks.count(masks), masks


def is_better(value: float, best: float | None, metric: str, min_delta: float = 0.0) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best - min_delta if lower_is_better(metric) else value > best + min_delta


@dataclass
class Selection:
    model: torch.nn.Module
    selectors: list
    masks: dict
    n_trainable: int
    where: dict


def build_selection(run, spec, name: str, resume_from=None) -> Selection:
    """Prepare the stage's selectors on the run's model and freeze all that they do not select."""
    selectors = [SELECTORS.build(c) for c in spec.select]
    model = pooled_as(run.model, spec)
    for s in selectors:
        model = s.prepare(model, run)
    if resume_from is not None:
        restore_selector_state(resume_from, selectors)
    else:
        for s in selectors:
            s.fit(model, run, spec)
    n_trainable, masks = select_parameters(model, selectors)
    if n_trainable == 0:
        raise HybridftError(f"stage {name}: the selection trains no parameter")
    return Selection(model, selectors, masks, n_trainable, trainable_by_module(model))


def run_stage(run, index: int, spec, resume_from=None, selection: Selection | None = None) -> dict:
    name = spec.name or f"stage{index}"
    acc, metric = run.accelerator, run.recipe.selection_metric
    selection = selection or build_selection(run, spec, name, resume_from)
    model, selectors, masks = selection.model, selection.selectors, selection.masks
    run.model = model  # objectives see the stage's model (with its LoRA layers or adapters)
    # an objective of weight 0 is not built at all: it must change nothing, not even RNG use
    objectives = active = [OBJECTIVES.build(c) for c in spec.objectives if c.weight > 0]
    if resume_from is not None:
        restore_objective_state(resume_from, objectives)  # e.g. the pseudo-labeled pool, not labeled again
    for o in objectives:
        o.on_stage_start(run)
    forget_stage_start(run)  # teachers have their copies of the model the last stage left (init: pretrained)
    shared_forward = any(o.uses_outputs for o in active)
    hidden_states = any(o.needs_hidden_states for o in active)
    cache, cache_note = None, None
    if spec.prefix_cache is not None:
        if acc.num_processes > 1:
            raise HybridftError(f"stage {name}: prefix_cache runs on one process for now; remove it for several")
        if hidden_states:  # layer indices of hidden states would shift with the prefix left out
            cache_note = "off: an objective reads every layer's hidden states"
        else:
            cache = prefix_cache_for_stage(run, model, spec.prefix_cache.max_mb)
            cache_note = None if cache else "off: nothing below the trained layers is frozen"
    labeled = spec.data == "labeled"
    # a stage over unlabeled text (e.g. MLM) has no task head worth evaluating, unless an objective
    # teaches it (a distilled or pseudo-labeled student)
    evaluated = labeled or any(o.teaches_head for o in active)
    stage_seed = run.recipe.seed * 1_000_003 + index * 1009

    train = run.data.train if labeled else run.data.unlabeled
    bs, accum = spec.batch_size, spec.grad_accum_steps
    lengths = [len(ex["input_ids"]) for ex in train]
    single_task = run.data.task != "multi_task"
    task_rows = None if single_task else run.data.task_rows()
    micro_per_epoch = math.ceil(len(train) / bs) if single_task else sum(math.ceil(len(r) / bs) for r in task_rows)
    total_steps = spec.max_steps or spec.epochs * math.ceil(micro_per_epoch / accum)
    lr_overrides = {k: v for s in selectors for k, v in s.lr_overrides(model).items()}
    extra = tuple(p for o in active for p in o.trainable_parameters())
    optimizer = build_optimizer(spec.optimizer, model, lr_overrides, extra)
    scheduler = build_scheduler(spec.scheduler, optimizer, total_steps)
    trainable_params = [p for p in model.parameters() if p.requires_grad] + list(extra)
    best_path = run.checkpoint_dir / f"best-stage{index}.safetensors"

    st = {"stage": index, "step": 0, "epoch": 0, "micro": 0, "best": None, "best_step": None, "bad_evals": 0,
          "history": [], "train_time_s": 0.0, "samples": 0, "tokens": 0, "stopped_early": False, "draw": 0}
    # the best weights as they were at the checkpoint (none for a fresh stage), not as a later or
    # an interrupted attempt's evaluation left them
    main, rank, world = acc.is_main_process, acc.process_index, acc.num_processes
    if main:
        best_path.unlink(missing_ok=True)
        if resume_from is not None and (resume_from / best_path.name).is_file():
            shutil.copy2(resume_from / best_path.name, best_path)
    if resume_from is not None:
        st = load_checkpoint(resume_from, model, optimizer, scheduler, process_index=rank)["stage_state"]
    acc.wait_for_everyone()
    entry_masks = EntryMasks(model, masks) if masks else None  # after loading: originals are stage-start values
    # one process: no wrapper needed (and prepare_model would keep a reference to every trial model)
    ddp_model = acc.prepare_model(model) if acc.num_processes > 1 else model

    def evaluate_now():
        m = evaluate_data(run, model, "validation", spec.eval_batch, f"eval {name}", run.progress)
        scalars = scalar_metrics(m)
        run.log.write(run.global_step, {"stage": name, **{f"eval/{k}": v for k, v in scalars.items()}})
        st["history"].append({"step": st["step"], **scalars})
        if cache:
            cache.eval_prefix()  # evaluation put the whole model back in train mode
        # min_delta decides what counts as progress for early stopping; any improvement is kept as best
        min_delta = spec.early_stopping.min_delta if spec.early_stopping else 0.0
        progress = is_better(scalars[metric], st["best"], metric, min_delta)
        st["bad_evals"] = 0 if progress else st["bad_evals"] + 1
        if is_better(scalars[metric], st["best"], metric):
            st.update(best=scalars[metric], best_step=st["step"])
            if spec.keep_best and main:  # every process has the same weights; one file
                best_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = best_path.with_suffix(".tmp")
                save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}, tmp)
                tmp.replace(best_path)

    def checkpoint():
        if not run.checkpointing:
            return
        reports, tensors = saved_artifacts(run)
        rng_states = process_rng_states(acc)
        if main:
            save_checkpoint(run.checkpoint_dir, f"step-{run.global_step}", model, optimizer, scheduler,
                            {"stage_state": st, "global_step": run.global_step, "log_lines": run.log.lines,
                             "stage_reports": run.stage_reports, "artifacts": reports},
                            run.recipe.output.keep_checkpoints, extra_files=(best_path,),
                            extra_tensors={**selector_state(selectors), **objective_state(objectives), **tensors},
                            rng_states=rng_states)
        acc.wait_for_everyone()

    if index == 0 and resume_from is None and run.data.task in GENERATIVE_TASKS:
        # where a language model starts (its new LM head or cross-attention is untrained): the report
        # shows perplexity before and after
        st["start"] = scalar_metrics(evaluate_data(run, model, "validation", spec.eval_batch, f"eval {name} (start)",
                                                   run.progress))
        run.log.write(run.global_step, {"stage": name, **{f"eval/{k}": v for k, v in st["start"].items()}})
    bar = tqdm(total=total_steps, initial=st["step"], desc=f"train {name}", disable=not run.progress,
               mininterval=1.0, dynamic_ncols=True)
    model.train()
    if cache:
        cache.eval_prefix()
    done = st["step"] >= total_steps
    while not done:
        batches = epoch_batches(lengths, bs, stage_seed + st["epoch"], spec.group_by_length) if single_task \
            else multitask_batches(task_rows, bs, stage_seed + st["epoch"], run.recipe.sampling.strategy,
                                   run.recipe.sampling.temperature)
        if st["micro"] == 0:
            for o in active:
                o.on_epoch_start(run, st["epoch"])
        tic, running = time.perf_counter(), {}
        while st["micro"] < len(batches) and not done:
            micro = st["micro"]
            group_start = micro - micro % accum
            group = batches[group_start:min(group_start + accum, len(batches))]  # the last may be short
            is_update = micro == group_start + len(group) - 1
            # each micro-batch counts by its examples, so accumulation equals one batch of the group
            share = len(batches[micro]) / sum(len(b) for b in group)
            ctx = StepContext(run, stage_seed, st["draw"], batches[micro], labeled, bs, rank, world)
            mine = ctx.shard(batches[micro])  # this process's part of the global batch
            ctx.batch_ids = mine
            batch = ctx.collate([train[i] for i in mine])
            with nullcontext() if is_update else acc.no_sync(ddp_model):
                with run.autocast():  # bf16 forward where the recipe's precision asks for it
                    if not shared_forward:
                        outputs = None
                    elif cache:
                        where = "labeled" if labeled else "unlabeled"
                        outputs = cache.forward(model, batch, [train[i] for i in mine], [(where, i) for i in mine],
                                                ctx.collate)
                    else:
                        outputs = ddp_model(**model_inputs(batch), output_hidden_states=hidden_states)
                    losses = {o.name: o.loss(ddp_model, batch, outputs, ctx) for o in active}
                    loss = sum(o.weight * losses[o.name] for o in active)
                acc.backward(loss * share)
            for k, v in {"loss": loss, **{f"loss/{n}": v for n, v in losses.items()}}.items():
                running[k] = running.get(k, 0.0) + float(v.detach()) * share
            st["samples"] += len(batches[micro])
            st["tokens"] += int(batch["attention_mask"].sum())
            st["micro"] += 1
            st["draw"] += 1
            if not is_update:
                continue

            if world > 1:  # DDP averages the model's gradients; an objective's own parameters by hand
                for p in extra:
                    if p.grad is not None:
                        p.grad = acc.reduce(p.grad, reduction="mean")
            if entry_masks:
                entry_masks.zero_unselected_grads()
            for s in selectors:
                s.after_backward(model)
            # the norm is needed anyway to catch inf/NaN gradients; inf as the limit means no clipping
            grad_norm = acc.clip_grad_norm_(trainable_params, spec.max_grad_norm or math.inf)
            finite = math.isfinite(running["loss"]) and bool(torch.isfinite(grad_norm))
            if finite:
                optimizer.step()
                st["bad_run"] = 0
            else:  # a non-finite loss or gradient: no update (the weights stay as they were), counted
                st["bad_steps"] = st.get("bad_steps", 0) + 1
                st["bad_run"] = st.get("bad_run", 0) + 1
                running["skipped_nonfinite"] = 1
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if entry_masks:
                entry_masks.restore_unselected()
            for s in selectors:
                s.after_step(model)
            st["step"] += 1
            run.global_step += 1
            st["train_time_s"] += time.perf_counter() - tic

            if world > 1:  # log the global batch's losses, not this process's share
                names = sorted(running)
                means = acc.reduce(torch.tensor([float(running[k]) for k in names], device=run.device), "mean")
                running = dict(zip(names, means.tolist(), strict=True))
            throughput = st["samples"] / max(st["train_time_s"], 1e-9)
            run.log.write(run.global_step, {"stage": name, "epoch": st["epoch"], "lr": scheduler.get_last_lr()[0],
                                            **running, "samples_per_s": throughput})
            bar.set_postfix(loss=f"{running['loss']:.4f}", sps=f"{throughput:.1f}", refresh=False)
            bar.update(1)
            running = {}
            if st.get("bad_run", 0) >= spec.max_bad_steps:
                checkpoint()  # the weights are the last good ones: no bad step changed them
                where = f" (checkpoint in {run.checkpoint_dir})" if run.checkpointing else ""
                raise HybridftError(f"stage {name}: {st['bad_run']} steps in a row had a non-finite loss or gradient "
                                    f"(last at step {st['step']}); stopped with the last good weights{where}. "
                                    "Lower the learning rate or check the data")
            done = st["step"] >= total_steps
            end_of_epoch = st["micro"] == len(batches)
            if (spec.eval_every and st["step"] % spec.eval_every == 0) or done or (end_of_epoch and not spec.eval_every):
                if evaluated:
                    evaluate_now()
                if spec.early_stopping and st["bad_evals"] >= spec.early_stopping.patience:
                    st["stopped_early"] = done = True
                if not run.recipe.output.checkpoint_every and not done:
                    checkpoint()
            if run.recipe.output.checkpoint_every and st["step"] % run.recipe.output.checkpoint_every == 0 and not done:
                checkpoint()
            tic = time.perf_counter()
        if st["micro"] >= len(batches):
            st["epoch"] += 1
            st["micro"] = 0
    bar.close()

    acc.wait_for_everyone()  # the best weights are written by the main process
    if spec.keep_best and best_path.is_file():
        model.load_state_dict(load_file(best_path), strict=False)
    for s in selectors:
        model = s.finish(model)
    for o in objectives:
        o.on_stage_end(run)
    run.model = model
    return {
        "name": name,
        "init": spec.init,
        "pooling": spec.pooling,
        "select": [c.model_dump() for c in spec.select],
        "objectives": [c.model_dump() for c in spec.objectives],
        "trainable_params": selection.n_trainable,
        "trainable_by_module": selection.where,
        "selectors": [s.summary() for s in selectors],
        "objective_details": {o.name: o.summary() for o in objectives if o.summary()},
        "steps": st["step"],
        "epochs_started": st["epoch"] + (1 if st["micro"] else 0),
        "train_time_s": st["train_time_s"],
        "samples_per_s": st["samples"] / max(st["train_time_s"], 1e-9),
        "tokens_per_s": st["tokens"] / max(st["train_time_s"], 1e-9),
        "best_metric": {metric: st["best"], "step": st["best_step"]},
        "keep_best": spec.keep_best,
        "stopped_early": st["stopped_early"],
        "skipped_nonfinite_steps": st.get("bad_steps", 0),
        "evaluations": st["history"],
        "start_metrics": st.get("start"),
        "prefix_cache": cache.summary() if cache else cache_note,
    }
