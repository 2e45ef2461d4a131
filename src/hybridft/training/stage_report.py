"""A closed stage's report: what it trained, how, how long, and what its evaluations found."""

from __future__ import annotations


def stage_report(stage) -> dict:
    spec, st, selection = stage.spec, stage.state, stage.selection
    metric = stage.run.recipe.selection_metric
    return {
        "name": stage.name,
        "init": spec.init,
        "pooling": spec.pooling,
        "select": [c.model_dump() for c in spec.select],
        "objectives": [c.model_dump() for c in spec.objectives],
        "trainable_params": selection.n_trainable,
        "dtypes": stage.dtypes,
        "trainable_by_module": selection.where,
        "selectors": [s.summary() for s in selection.selectors],
        "objective_details": {o.name: o.summary() for o in stage.objectives if o.summary()},
        "steps": st.step,
        "epochs_started": st.epoch + (1 if st.micro else 0),
        "train_time_s": st.train_time_s,
        "samples_per_s": st.samples / max(st.train_time_s, 1e-9),
        "tokens_per_s": st.tokens / max(st.train_time_s, 1e-9),
        "best_metric": {metric: st.best, "step": st.best_step},
        "keep_best": spec.keep_best,
        "stopped_early": st.stopped_early,
        "skipped_nonfinite_steps": st.bad_steps,
        "evaluations": st.history,
        "start_metrics": st.start,
        "prefix_cache": stage.cache.summary() if stage.cache else stage.cache_note,
        "step_memory_mb_per_process": stage.run.processes.gather(st.step_memory_mb),
    }
