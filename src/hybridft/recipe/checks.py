"""Cross-field checks of a recipe: what no single section can check alone.

Nothing here names a method: what a selector or objective supports (tasks, labels, unlabeled data,
its teachers) is declared on its spec, and checked here for every method alike. Errors are
``ValueError`` (pydantic turns them into field-path messages).
"""

from __future__ import annotations

from ..spec import STAGE_REF, StageContext
from ..tasks import GENERATIVE_TASKS, MULTI_TASK, PROPORTIONS, metrics_of


def check_stage(stage) -> None:
    """One training stage on its own: a loss to train on, names that tell its terms apart."""
    if all(o.weight == 0 for o in stage.objectives):
        raise ValueError("at least one objective needs a weight above 0")
    names = [o.key for o in stage.objectives]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"objective {sorted(dup)[0]!r} listed twice in one stage")
    if stage.data == "unlabeled":
        needs_labels = [o.name for o in stage.objectives if o.weight > 0 and o.needs_labels]
        if needs_labels:
            raise ValueError(f"objective {needs_labels[0]!r} needs labels; a stage over unlabeled data "
                             "cannot use it on its batch")


def check_recipe(recipe) -> None:
    check_stage_names(recipe)
    check_precision(recipe)
    if recipe.task == MULTI_TASK:
        check_multi_task(recipe)
    else:
        check_single_task(recipe)
    for i, stage in enumerate(recipe.stages):
        if stage.kind == "train":
            check_methods(recipe, i, stage)
        else:
            check_merged_stages(recipe, i, stage.mix)


def check_stage_names(recipe) -> None:
    """Each stage's name (``stage<i>`` for one without) names one stage: ``stage:<name>`` teachers and
    mix models, kept weights and checkpoints find a stage by it."""
    names = [recipe.stage_name(i) for i in range(len(recipe.stages))]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ValueError(f"stages.{i}: the name {name!r} is already stage {names.index(name)}'s; give each "
                             "stage its own name")


def check_merged_stages(recipe, i: int, mix) -> None:
    """A mix stage's ``stage:<name>`` models are earlier training stages; one weight per merged model."""
    if recipe.task != MULTI_TASK and mix.weights is not None and len(mix.weights) != 1 + len(mix.models):
        raise ValueError(f"stages.{i}: mix.weights needs one weight per fine-tuned model: {1 + len(mix.models)} "
                         f"(this run's and {len(mix.models)} in mix.models), got {len(mix.weights)}")
    earlier = {recipe.stage_name(j) for j in range(i) if recipe.stages[j].kind == "train"}
    for ref in mix.models:
        if ref.startswith(STAGE_REF) and ref[len(STAGE_REF):] not in earlier:
            raise ValueError(f"stages.{i}: mix.models {ref}: no training stage of that name comes before the mix "
                             f"(earlier: {', '.join(sorted(earlier)) or 'none'})")


def check_precision(recipe) -> None:
    if recipe.model.dtype == "float32":
        return
    if recipe.model.precision == "fp32":
        raise ValueError(f"model.dtype {recipe.model.dtype} runs the forward in bf16 autocast; it cannot be "
                         "combined with model.precision: fp32")
    if recipe.distributed.strategy == "fsdp":
        raise ValueError(f"model.dtype {recipe.model.dtype} is for one process or ddp: fsdp shards weights of one "
                         "dtype; use distributed.mixed_precision for a sharded run")


def check_single_task(recipe) -> None:
    if recipe.data is None:
        raise ValueError("data: Field required")
    if recipe.tasks is not None:
        raise ValueError("tasks: only for task multi_task")
    if recipe.task in GENERATIVE_TASKS:
        check_generative(recipe)
    elif recipe.model.decoder or recipe.data.packing or recipe.data.columns.messages:
        key = "model.decoder" if recipe.model.decoder else "data.packing" if recipe.data.packing else \
            "data.columns.messages"
        raise ValueError(f"{key}: only for generative tasks")
    if recipe.model.chat_template and not recipe.data.columns.messages:
        raise ValueError("model.chat_template: for data.columns.messages (chat fine-tuning)")
    valid = metrics_of(recipe.task)
    if recipe.data.columns.messages and recipe.generation.evaluate:  # chat: the generated answers' scores
        valid += tuple(recipe.generation.chat_metrics)
    if recipe.metric is not None and recipe.metric not in valid:
        raise ValueError(f"metric {recipe.metric!r} is not reported for {recipe.task}; valid: {', '.join(valid)}")
    if recipe.task == "pair_classification" and not recipe.data.columns.text_pair:
        raise ValueError("task pair_classification needs data.columns.text_pair")
    if recipe.stages[0].kind == "mix":
        raise ValueError("stages.0: a mix stage needs a trained stage before it")
    for i, stage in enumerate(recipe.stages):
        if stage.kind == "mix":
            if stage.mix.rule == "one_se" and recipe.selection_metric not in PROPORTIONS:
                raise ValueError(f"stages.{i}.mix.rule: one_se needs a proportion-like metric, not "
                                 f"{recipe.selection_metric}")
            continue
        if stage.per_task:
            raise ValueError(f"stage {stage.name or i}: per_task is for multi_task recipes")
        if stage.init == "pretrained" and i == 0:
            raise ValueError("stages.0.init: the first stage starts from the pretrained weights anyway")
        check_pooling(recipe, i, stage)


def check_methods(recipe, i: int, stage) -> None:
    """Every selector and objective of a stage, by what its spec declares."""
    ctx = StageContext(task=recipe.task, index=i, earlier=tuple(recipe.stage_name(j) for j in range(i)),
                       mix_before=any(s.kind == "mix" for s in recipe.stages[:i]))
    for method in (*stage.select, *stage.objectives):
        why = method.unsupported(recipe.task)
        if why:
            raise ValueError(f"stages.{i}: {method.role} {method.name} {why}")
        method.check_in(ctx)
    has_pool = recipe.data is not None and recipe.data.unlabeled is not None
    users = [o.name for o in stage.objectives if o.weight > 0 and o.needs_unlabeled]
    if not has_pool and (stage.data == "unlabeled" or users):
        what = f"objective {users[0]!r}" if users else "data: unlabeled"
        raise ValueError(f"stage {stage.name or i}: {what} needs data.unlabeled")


def check_pooling(recipe, i: int, stage) -> None:
    """Mean pooling is the same within a run of stages that continue one model, and never in the
    last such run: the saved model must read as plain transformers reads it."""
    if stage.pooling == "first":
        return
    if recipe.task not in ("classification", "pair_classification"):
        raise ValueError(f"stages.{i}.pooling: mean is for classification and pair_classification")
    later = recipe.stages[i + 1:]
    restart = next((j for j, s in enumerate(later) if getattr(s, "init", "continue") == "pretrained"), None)
    if restart is None:
        raise ValueError(f"stages.{i}.pooling: plain transformers reads the first token, so the saved model "
                         "cannot be mean-pooled; a later stage with init: pretrained must replace this one's "
                         "model (mean pooling is for teachers)")
    if stage.init == "continue" and i > 0 and getattr(recipe.stages[i - 1], "pooling", "first") != "mean":
        raise ValueError(f"stages.{i}.pooling: mean starts with the model it is used on: the first stage or "
                         "one with init: pretrained")
    if any(getattr(s, "pooling", "mean") != "mean" or s.kind == "mix" for s in later[:restart]):
        raise ValueError(f"stages.{i}.pooling: the stages that continue a mean-pooled model are mean-pooled "
                         "too (and are not mix stages)")


def check_generative(recipe) -> None:
    if recipe.data.packing and recipe.task != "causal_lm":
        raise ValueError("data.packing: only for causal_lm")
    if recipe.data.columns.messages and (recipe.task != "causal_lm" or recipe.data.packing or recipe.data.columns.prompt):
        raise ValueError("data.columns.messages: for causal_lm, without packing or a prompt column")
    if recipe.model.decoder and recipe.task != "seq2seq":
        raise ValueError("model.decoder: only for seq2seq")
    if recipe.metric in ("bleu", "chrf") and not recipe.generation.evaluate:
        raise ValueError(f"metric {recipe.metric} needs generation.evaluate: true")
    if recipe.data.unlabeled is not None:
        raise ValueError(f"data.unlabeled: not used by {recipe.task} (its objectives read the batch)")
    for i, stage in enumerate(recipe.stages):
        if stage.kind == "mix":
            if stage.mix.ensemble or stage.mix.learn:
                raise ValueError(f"stages.{i}.mix: ensemble and learn are for classification and tagging; "
                                 f"{recipe.task} mixes by alpha sweep (and per_layer)")
            continue
        if stage.data == "unlabeled":
            raise ValueError(f"stages.{i}.data: {recipe.task} trains on its text; data: unlabeled is not used")
        if stage.prefix_cache is not None:
            raise ValueError(f"stages.{i}.prefix_cache: for classification and tagging encoders")


def check_task_merge(recipe, i: int, mix) -> None:
    """A multi-task run's mix stage merges the tasks' own models of a per_task stage into one shared
    encoder: it comes last, after such a stage, with methods that merge several models."""
    if not any(s.kind == "train" and s.per_task for s in recipe.stages[:i]) or i != len(recipe.stages) - 1:
        raise ValueError(f"stages.{i}: a multi-task run's mix stage merges the tasks' own models of a per_task "
                         "stage into one shared encoder; it comes last, after a per_task stage")
    refined = next((k for k in ("refine", "per_layer", "ensemble", "learn") if getattr(mix, k)), None)
    if mix.models or refined:
        raise ValueError(f"stages.{i}: mix.{'models' if mix.models else refined}: a multi-task merge takes the "
                         "tasks' models of its per_task stage, with no further models or refinements")
    if "slerp" in mix.methods:
        raise ValueError(f"stages.{i}: method slerp merges M_pre with one model; a multi-task merge has one per task")
    if mix.weights is not None and len(mix.weights) != len(recipe.tasks):
        raise ValueError(f"stages.{i}: mix.weights needs one weight per task ({len(recipe.tasks)}), "
                         f"got {len(mix.weights)}")


def check_multi_task(recipe) -> None:
    if not recipe.tasks or len(recipe.tasks) < 2:
        raise ValueError("tasks: a multi_task recipe needs at least two tasks")
    if recipe.data is not None:
        raise ValueError("data: a multi_task recipe gives each task its data under tasks")
    names = [t.name for t in recipe.tasks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"tasks: the name {dup[0]!r} is used by two tasks")
    if recipe.metric not in (None, "score"):
        raise ValueError("metric: a multi_task recipe selects by score (the mean of the tasks' primary metrics)")
    for i, stage in enumerate(recipe.stages):
        if stage.kind == "mix":
            check_task_merge(recipe, i, stage.mix)
            continue
        if stage.data == "unlabeled":
            raise ValueError(f"stages.{i}: data: unlabeled is not supported in multi-task recipes yet")
        if stage.prefix_cache is not None:
            raise ValueError(f"stages.{i}.prefix_cache: not supported in multi-task recipes yet")
        if stage.init != "continue":
            raise ValueError(f"stages.{i}.init: restarting from pretrained is for single-task recipes")
        if stage.pooling != "first":
            raise ValueError(f"stages.{i}.pooling: mean is for single-task recipes")
        if i > 0 and recipe.stages[i - 1].per_task and not stage.per_task:
            raise ValueError(f"stages.{i}: after a per_task stage the tasks no longer share an encoder; "
                             "later stages must be per_task too")
