"""Model folders in and out.

A saved model is a standard transformers folder (safetensors, config with id2label, tokenizer) plus
``hybridft.json`` (task, max length, columns). Bottleneck adapters cannot be merged into the base
weights, so a model that has them also gets ``adapters.safetensors``, and its config entry in
``hybridft.json``; ``load_saved`` puts them back. Plain ``transformers`` loading of such a folder
gives the base model *without* its adapters.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from .errors import HybridftError
from .folders import MODEL_MARKER, mark, new_folder
from .generative.data import ensure_pad_token
from .generative.generate import generation_kwargs
from .models import HEAD_CLASSES, check_model_dir, load_tokenizer, quiet_transformers, torch_dtype
from .selectors.adapter import adapter_layout, wrap_with_adapter
from .selectors.lora import lora_layers, merge_lora
from .tasks import GENERATIVE_TASKS

ADAPTERS_FILE = "adapters.safetensors"


def split_adapter_state(model) -> tuple[dict, dict]:
    """(plain state dict with standard names, adapter weights) of a model that may hold adapters."""
    wrapped = tuple(f"{a['module']}." for a in adapter_layout(model))
    plain, adapters = {}, {}
    for name, tensor in model.state_dict().items():
        owner = next((w for w in wrapped if name.startswith(w)), None)
        if owner is None:
            plain[name] = tensor
        elif name.startswith(owner + "adapter."):
            adapters[name] = tensor.contiguous()
        else:
            plain[owner + name[len(owner) + len("base."):]] = tensor
    return plain, adapters


def check_finite(state: dict, what: str, hint: str = "") -> None:
    """Refuse weights holding NaN or infinite values: such a model predicts NaN for every input, so it
    is never written (every writer of a model folder goes through here, merges checked before too)."""
    import torch

    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = "NaN" if bool(torch.isnan(tensor).any()) else "infinite"
            raise HybridftError(f"{what} has {bad} values (tensor {name}){'; ' + hint if hint else ''}")


def save_folder(model, tokenizer, meta: dict, path: Path) -> None:
    """Write to a temporary folder and rename, so the folder is either complete or absent."""
    with new_folder(path, MODEL_MARKER) as tmp:
        write_model(model, tokenizer, meta, tmp)


def write_model(model, tokenizer, meta: dict, tmp: Path) -> None:
    from safetensors.torch import save_file

    if lora_layers(model):  # unmerged LoRA (merge: false) is saved merged, so the folder loads anywhere
        model = merge_lora(copy.deepcopy(model))
    plain, adapters = split_adapter_state(model)
    check_finite({**plain, **adapters}, "the model", "it was not saved (did training diverge? a lower learning "
                 "rate may help)")
    if len({t.dtype for t in plain.values() if t.is_floating_point()}) > 1:
        # bf16 frozen weights beside fp32 trained ones: one dtype in the folder, and in its config.dtype,
        # which transformers loads it in; fp32 holds both exactly
        model, plain = model.float(), {k: v.float() if v.is_floating_point() else v for k, v in plain.items()}
    model.save_pretrained(tmp, state_dict=plain, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if adapters:
        save_file(adapters, str(tmp / ADAPTERS_FILE))
        meta = {**meta, "adapters": adapter_layout(model)}
    (tmp / "hybridft.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    # each task's folder of a multi-task model is a model folder too, listing what it holds
    mark(tmp, MODEL_MARKER, wrote=sorted(p.name for p in tmp.iterdir()))


def model_meta(recipe, labels: list[str], task=None) -> dict:
    """``hybridft.json`` of a run's model (``task``: one task of a multi-task recipe)."""
    if task is not None:
        return {"task": task.task, "max_length": recipe.model.max_length, "columns": task.data.columns.model_dump(),
                "labels": labels, "multi_task": [t.name for t in recipe.tasks]}
    meta = {"task": recipe.task, "max_length": recipe.model.max_length,
            "columns": recipe.data.columns.model_dump(), "labels": labels}
    if recipe.task in GENERATIVE_TASKS:
        meta.update(max_target_length=recipe.model.max_target_length, generation=recipe.generation.model_dump(),
                    languages=recipe.data.languages.model_dump() if recipe.data.languages else None,
                    chat=bool(recipe.data.columns.messages))
        if recipe.data.conversation is not None:  # predict asks as training asked: its system turn and framing
            meta["conversation"] = recipe.data.conversation.model_dump(include={"system", "user"})
    return meta


def save_model_folder(run, path: Path) -> None:
    """The run's model; multi-task: ``<task>/`` per task (shared encoder + that task's head, a plain
    transformers folder each) and ``encoder/``, the shared encoder alone."""
    model, recipe = run.processes.unwrap(run.model), run.recipe
    if recipe.task != "multi_task":
        if recipe.task in GENERATIVE_TASKS:
            set_generation_defaults(model, recipe.generation)
        save_folder(model, run.tokenizer, model_meta(recipe, run.data.label_names), path)
        return
    with new_folder(path, MODEL_MARKER) as tmp:
        for task in recipe.tasks:
            meta = model_meta(recipe, run.data.label_names[task.name], task)
            (tmp / task.name).mkdir()
            write_model(model.task_model(task.name), run.tokenizer, meta, tmp / task.name)
        if model.shared:  # after task-specific stages each task folder has its own encoder
            encoder = merge_lora(copy.deepcopy(model.encoder)) if lora_layers(model.encoder) else model.encoder
            plain, _ = split_adapter_state(encoder)
            check_finite(plain, "the shared encoder", "it was not saved (did training diverge?)")
            encoder.save_pretrained(tmp / "encoder", state_dict=plain, safe_serialization=True)
            run.tokenizer.save_pretrained(tmp / "encoder")


def set_generation_defaults(model, spec) -> None:
    """The recipe's generation settings go into generation_config.json, so that plain
    ``model.generate()`` after ``from_pretrained`` decodes as hybridft evaluated it."""
    if getattr(model, "generation_config", None) is not None:
        for key, value in generation_kwargs(spec).items():
            setattr(model.generation_config, key, value)


GENERATIVE_ARCHITECTURES = {"ForCausalLM": "causal_lm", "LMHeadModel": "causal_lm",
                            "ForConditionalGeneration": "seq2seq", "EncoderDecoderModel": "seq2seq"}


def task_of(config, path: Path) -> str:
    """The task of a folder that hybridft did not write, from its architecture."""
    for arch in config.architectures or []:
        if arch.endswith("ForSequenceClassification"):
            return "classification"
        if arch.endswith("ForTokenClassification"):
            return "token_classification"
        for suffix, task in GENERATIVE_ARCHITECTURES.items():
            if arch.endswith(suffix):
                return task
    raise HybridftError(f"{path} holds no classification, tagging or language-model head "
                        f"({', '.join(config.architectures or ['?'])}); give a fine-tuned model folder such as a run's model/")


def check_loadable(path: Path) -> Path:
    """A folder whose model transformers builds without code of the folder's own, and whose weights
    files are whole (a truncated or empty file is named here, not in a traceback of the loader)."""
    from safetensors import SafetensorError, safe_open
    from transformers import CONFIG_MAPPING

    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise HybridftError(f"{path / 'config.json'} cannot be read: {e}") from None
    if not isinstance(config, dict):
        raise HybridftError(f"{path / 'config.json'} is not a model configuration (a JSON object)")
    if "auto_map" in config and config.get("model_type") not in CONFIG_MAPPING:
        raise HybridftError(f"{path} needs model code of its own (config.json's auto_map, model type "
                            f"{config.get('model_type')!r}); hybridft does not run code from a model folder here")
    for weights in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt"):  # reads and checks the header only
                pass
        except (SafetensorError, OSError) as e:
            reason = (str(e).splitlines() or [type(e).__name__])[0]
            raise HybridftError(f"{weights} is damaged or incomplete ({reason}); copy the folder again") from None
    return path


def load_saved(model_dir: str | Path):
    """(model in eval mode, tokenizer, hybridft.json content, label names) of a saved folder; any
    transformers classification or tagging folder works, hybridft's own adds adapters back."""
    import transformers

    path = Path(model_dir)
    if not path.is_dir():
        raise HybridftError(f"model folder not found: {model_dir}")
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        raise HybridftError(f"{path} is a run folder; its model is {path / 'model'}")
    check_loadable(check_model_dir(path))
    meta_file = path / "hybridft.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    config = transformers.AutoConfig.from_pretrained(path)
    if "task" not in meta:
        meta["task"] = task_of(config, path)
    # float32 whatever the folder holds (transformers 5 would keep a bf16 folder in bf16): hybridft's numbers
    with quiet_transformers():
        model = getattr(transformers, HEAD_CLASSES[meta["task"]]).from_pretrained(path, use_safetensors=True,
                                                                                  dtype=torch_dtype("float32"))
    restore_adapters(model, path, meta.get("adapters", []))
    check_finite(model.state_dict(), f"the model in {path}", "it cannot predict (hybridft never writes such a "
                 "model: it was written elsewhere, or damaged)")
    tokenizer = load_tokenizer(str(path))
    if meta["task"] in GENERATIVE_TASKS:
        ensure_pad_token(tokenizer)
        return model.eval(), tokenizer, meta, []
    labels = [config.id2label[i] for i in range(len(config.id2label))]
    return model.eval(), tokenizer, meta, labels


def restore_adapters(model, path: Path, layout: list[dict]) -> None:
    """Put back the bottleneck adapters ``hybridft.json`` lists, with their weights: all or an error."""
    from safetensors.torch import load_file

    stored = path / ADAPTERS_FILE
    if bool(layout) != stored.is_file():
        what = f"lists {len(layout)} adapters but {ADAPTERS_FILE} is missing" if layout else \
            f"has {ADAPTERS_FILE} but hybridft.json lists no adapters"
        raise HybridftError(f"{path} {what}: the model would predict differently without them")
    if not layout:
        return
    for a in layout:
        wrap_with_adapter(model, a["module"], a["bottleneck"], a["nonlinearity"])
    weights = load_file(str(stored))
    expected = {n for n in model.state_dict() if ".adapter." in n}
    if set(weights) != expected:
        odd = sorted(set(weights) ^ expected)[0]
        raise HybridftError(f"{path}: adapter weights do not fit the model (e.g. {odd})")
    model.load_state_dict(weights, strict=False)


def read_state_dict(folder: str | Path) -> dict:
    """All tensors of a model folder's safetensors file(s), without building the model."""
    from safetensors.torch import load_file

    path = check_loadable(check_model_dir(Path(folder)))
    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    state = {}
    for name in files:
        state.update(load_file(str(path / name)))
    return state
