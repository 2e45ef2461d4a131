"""`hybridft interpolate PRE FINE --alpha A -o OUT`: mix a pretrained and a fine-tuned model; with
``--method`` (slerp, task_arithmetic, ties, dare_ties, dare_linear) and ``--model`` for further
fine-tuned models, any merge method of a mix stage, at one point of its parameters."""

from __future__ import annotations

import json
import math
from pathlib import Path

from . import architecture
from .errors import HybridftError
from .folders import MODEL_MARKER, check_output
from .merging import MergePoint, build_method, merge_states, weights_problem
from .mixing import PART_ORDER, interpolate, per_part_alpha
from .model_io import check_finite, load_saved, read_state_dict, save_folder
from .models import resolve_model


def parse_parts(text: str) -> dict[str, float]:
    """``embeddings=0.5,lower=0.3,upper=0.1,head=0`` -> {part: alpha}."""
    parts = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise HybridftError(f"--per-layer takes part=alpha pairs ({', '.join(PART_ORDER)}), got {item!r}")
        try:
            parts[key.strip()] = float(value)
        except ValueError:
            raise HybridftError(f"--per-layer: {value!r} is not a number") from None
    return parts


def pretrained_tensors(source: str) -> dict:
    """The tensors of a local folder as stored, or of a hub model as transformers builds it."""
    if Path(source).is_dir():
        return read_state_dict(source)
    import transformers

    try:
        return transformers.AutoModel.from_pretrained(source, use_safetensors=True).state_dict()
    except (OSError, ValueError) as e:
        raise HybridftError(f"cannot load the pretrained model {source}: {str(e).splitlines()[0]}") from None


def merge_point(method, alpha: float | None, scale: float | None, density: float | None) -> MergePoint:
    """The method's parameters from the flags, each required where the method takes it."""
    given = {"alpha": alpha, "scale": scale, "density": density}
    flags = {"alpha": "--alpha", "scale": "--scale", "density": "--density"}
    extra = [flags[k] for k, v in given.items() if v is not None and k not in method.searches]
    if extra:
        raise HybridftError(f"{extra[0]} is not a parameter of --method {method.name} (it takes "
                            f"{', '.join(flags[k] for k in method.searches)})")
    if scale is None and "scale" in method.searches:
        given["scale"] = 1.0
    missing = [flags[k] for k in method.searches if given[k] is None]
    if missing:
        raise HybridftError(f"--method {method.name} needs {missing[0]}")
    if given["scale"] is not None and not (math.isfinite(given["scale"]) and given["scale"] > 0):
        raise HybridftError(f"--scale must be a finite number above 0, got {given['scale']}")
    if given["alpha"] is not None and not 0 <= given["alpha"] <= 1:
        raise HybridftError(f"--alpha must be in [0, 1], got {given['alpha']}")
    if given["density"] is not None and not 0 < given["density"] <= 1:
        raise HybridftError(f"--density must be in (0, 1], got {given['density']}")
    return MergePoint(**{k: given[k] for k in method.searches})


HEADS = ("ForSequenceClassification", "ForTokenClassification")


def check_pretrained_side(pre: str, model, labels: list[str] | None) -> None:
    """A folder given as M_pre has M_fine's architecture, and if it has a task head (a fine-tuned
    model used as the pretrained side), M_fine's head and labels: else heads of different label sets
    would be averaged, entry by entry, into a model that predicts neither."""
    config_file = Path(pre) / "config.json"
    if not config_file.is_file():
        return
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("model_type") and config["model_type"] != model.config.model_type:
        raise HybridftError(f"{pre} is a {config['model_type']} model, the fine-tuned one a "
                            f"{model.config.model_type} model: they cannot be merged")
    architectures = config.get("architectures") or []
    if not (Path(pre) / "hybridft.json").is_file() and not any(a.endswith(HEADS) for a in architectures):
        return  # a bare pretrained model: its config's id2label is a default, not labels
    if architectures != (model.config.architectures or []):
        raise HybridftError(f"{pre} is a {', '.join(architectures) or '?'}, the fine-tuned model a "
                            f"{', '.join(model.config.architectures or ['?'])}: they cannot be merged")
    id2label = config.get("id2label") or {}
    pre_labels = [id2label.get(str(i)) for i in range(len(id2label))]
    if (labels or []) and pre_labels != labels:
        raise HybridftError(f"{pre} predicts labels {pre_labels[:8]}, the fine-tuned model {labels[:8]}: models "
                            "with different label sets cannot be merged")


def check_merge_args(merger, more: list[str], weights: list[float] | None, seed: int) -> None:
    """The models and numbers a recipe's mix stage would refuse, refused here too."""
    if more and not merger.several_models:
        raise HybridftError(f"--method {merger.name} merges M_pre with one fine-tuned model; --model is for the "
                            "others")
    if weights is not None and len(weights) != 1 + len(more):
        raise HybridftError(f"--weights needs one weight per fine-tuned model ({1 + len(more)}), got {len(weights)}")
    problem = weights_problem(weights)
    if problem:
        raise HybridftError(f"--weights: {problem}")
    if weights is not None and any(w <= 0 for w in weights):  # as mix.weights: 0 or less drops or subtracts a model
        raise HybridftError(f"--weights must each be above 0, got {weights}")
    if not 0 <= seed < 2**32:
        raise HybridftError(f"--seed must be a whole number from 0 to 2**32 - 1, got {seed}")


def fine_tuned_states(fine: str, more: list[str]):
    """(model, tokenizer, meta, labels, states): the first fine-tuned folder loaded, every one's tensors;
    all with the first one's labels and no adapters."""
    loaded = [load_saved(folder) for folder in [fine, *more]]
    model, tokenizer, meta, labels = loaded[0]
    for folder, (_, _, other_meta, other_labels) in zip([fine, *more], loaded, strict=True):
        if other_meta.get("adapters"):
            raise HybridftError(f"{folder} has bottleneck adapters, which have no pretrained counterpart to mix with")
        if other_labels != labels:
            raise HybridftError(f"{folder} predicts labels {(other_labels or [])[:8]}, {fine} predicts "
                                f"{(labels or [])[:8]}: models with different label sets cannot be merged")
    return model, tokenizer, meta, labels, [m.state_dict() for m, _, _, _ in loaded]


def run_interpolate(pre: str, fine: str, out: str, alpha: float | None, per_layer: str | None,
                    overwrite: bool = False, method: str = "linear", scale: float | None = None,
                    density: float | None = None, models: list[str] | None = None, weights: list[float] | None = None,
                    majority_sign: str = "total", seed: int = 0) -> dict:
    out_dir = Path(out)
    check_output(out_dir, MODEL_MARKER, overwrite)  # deletes nothing; the old folder is replaced at the end
    merger, more = build_method(method, majority_sign), list(models or [])
    if per_layer is not None and (method != "linear" or more or alpha is not None):
        raise HybridftError("--per-layer mixes two models linearly: without --alpha, --method or --model")
    point = merge_point(merger, alpha, scale, density) if per_layer is None else None
    check_merge_args(merger, more, weights, seed)
    model, tokenizer, meta, labels, states = fine_tuned_states(fine, more)
    source = resolve_model(None if pre == "embedded" else pre, Path.cwd())
    check_pretrained_side(source, model, labels)
    pre_state = pretrained_tensors(source)
    for name, state in zip([pre, fine, *more], [pre_state, *states], strict=True):
        check_finite(state, name)
    if per_layer is not None:
        mixed = interpolate(pre_state, states[0], per_part_alpha(parse_parts(per_layer), architecture.num_layers(model)))
    else:
        mixed = merge_states(pre_state, states, merger, point, weights, seed, [fine, *more])
    check_finite(mixed, f"the merge ({method}{', ' + point.label if point else ''})",
                 "it was not written: the weights or --scale are too large for these models")
    model.load_state_dict(mixed)
    record = {"pretrained": pre, "fine_tuned": str(fine), "method": method, "models": more, "weights": weights,
              "point": point.as_dict() if point else None, "alpha": alpha, "per_layer": per_layer}
    save_folder(model, tokenizer, {**meta, "mixed": record}, out_dir)
    return {"out": str(out_dir), **record}
