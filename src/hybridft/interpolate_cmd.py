"""`hybridft interpolate PRE FINE --alpha A -o OUT`: mix a pretrained and a fine-tuned model."""

from __future__ import annotations

from pathlib import Path

from . import architecture
from .errors import HybridftError
from .folders import MODEL_MARKER, check_output
from .mixing import PART_ORDER, interpolate, per_part_alpha
from .model_io import load_saved, read_state_dict, save_folder
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


def run_interpolate(pre: str, fine: str, out: str, alpha: float | None, per_layer: str | None,
                    overwrite: bool = False) -> dict:
    out_dir = Path(out)
    check_output(out_dir, MODEL_MARKER, overwrite)  # deletes nothing; the old folder is replaced at the end
    if (alpha is None) == (per_layer is None):
        raise HybridftError("give --alpha or --per-layer")
    model, tokenizer, meta, _ = load_saved(fine)
    if meta.get("adapters"):
        raise HybridftError(f"{fine} has bottleneck adapters, which have no pretrained counterpart to mix with")
    pre_state = pretrained_tensors(resolve_model(None if pre == "embedded" else pre, Path.cwd()))
    mix = alpha if per_layer is None else per_part_alpha(parse_parts(per_layer), architecture.num_layers(model))
    mixed = interpolate(pre_state, model.state_dict(), mix)
    model.load_state_dict(mixed)
    save_folder(model, tokenizer, {**meta, "mixed": {"pretrained": pre, "fine_tuned": str(fine), "alpha": alpha,
                                                    "per_layer": per_layer}}, out_dir)
    return {"out": str(out_dir), "alpha": alpha, "per_layer": per_layer}
