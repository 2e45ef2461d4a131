"""A task-specific stage after multi-task training (MT-DNN): every task trains its own copy of the
model on its data alone, so the tasks stop sharing the encoder from here on.

Such a stage is not checkpointed inside: a resumed run starts it again from its beginning."""

from __future__ import annotations

from ..multitask.data import MultiTaskCollator
from ..multitask.model import MultiTaskModel, unshared
from .loop import run_stage


def run_per_task_stage(run, index: int, spec) -> list[dict]:
    model = unshared(run.processes.unwrap(run.model))
    trained, reports = {}, []
    for i, name in enumerate(run.data.names):
        alone = MultiTaskModel({name: model.task_model(name)}, share=False)
        sub = run.sub_run(model=alone, data=run.data.subset(i), collator=MultiTaskCollator([run.collator.collators[i]]),
                          hooks=run.hooks)
        reports.append(run_stage(sub, index, spec.model_copy(update={"name": f"{spec.name or f'stage{index}'}:{name}"})))
        trained[name] = sub.model.task_model(name)
        run.global_step = sub.global_step
    run.model = MultiTaskModel(trained, share=False)
    return reports
