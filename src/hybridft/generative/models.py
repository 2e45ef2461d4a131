"""Generative models: a causal LM, a seq2seq model, or an encoder-decoder built from two pretrained
models (``model.decoder``), e.g. the embedded MiniLM on both sides with new cross-attention.

An encoder-only checkpoint (BERT, MiniLM) becomes a causal LM with ``is_decoder=True``: causal
self-attention and an LM head tied to its word embeddings (the head's transform is new).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import HybridftError
from ..models import note_ignored_code, quiet_transformers, remote_code_hint, resolve_model, torch_dtype
from .chat import end_of_turn_id
from .data import bos_id, eos_id


def decoder_source(decoder: str | None, base_dir: Path) -> str | None:
    if decoder is None:
        return None
    return resolve_model(None if decoder == "embedded" else decoder, base_dir)


def _configs(source: str, task: str, decoder: str | None, trust_remote_code: bool):
    """(config to build from, whether it is a two-model encoder-decoder)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    if task == "causal_lm":
        if hasattr(config, "is_decoder"):
            config.is_decoder = True  # BERT-style models need it for causal attention; others ignore it
        return config, False
    if decoder is not None:
        dec = transformers.AutoConfig.from_pretrained(decoder, trust_remote_code=trust_remote_code)
        dec.is_decoder, dec.add_cross_attention = True, True
        return transformers.EncoderDecoderConfig.from_encoder_decoder_configs(config, dec), True
    if not getattr(config, "is_encoder_decoder", False):
        raise HybridftError(f"{source} is not an encoder-decoder model; set model.decoder (e.g. 'embedded') to build "
                            "one from two pretrained models")
    return config, False


def set_special_ids(model, tokenizer) -> None:
    """Start, end and pad ids where generate() and the loss look for them."""
    config = model.config
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": eos_id(tokenizer)}
    if config.is_encoder_decoder and getattr(config, "decoder_start_token_id", None) is None:
        ids["decoder_start_token_id"] = bos_id(tokenizer)
    for key, value in ids.items():
        setattr(config, key, value)
        if getattr(model, "generation_config", None) is not None:
            setattr(model.generation_config, key, value)
    if getattr(config, "decoder", None) is not None:  # EncoderDecoderModel keeps a config per side
        config.decoder.pad_token_id = tokenizer.pad_token_id


def stop_at_end_of_turn(model, tokenizer) -> None:
    """A chat model stops generating where its template closes the assistant's turn (SmolLM2's
    ``<|im_end|>``), beside its end-of-text token; saved in generation_config.json for every loader."""
    end = end_of_turn_id(tokenizer)
    if end is None or getattr(model, "generation_config", None) is None:
        return
    current = model.generation_config.eos_token_id
    stops = [current] if isinstance(current, int) else list(current or [])
    model.generation_config.eos_token_id = stops + [end] if end not in stops else stops


def load_generative_model(source: str, task: str, tokenizer, decoder: str | None = None,
                          trust_remote_code: bool = False, dtype: str = "float32"):
    """The language model, its weights in ``dtype`` whatever the checkpoint was saved in."""
    import transformers

    try:
        config, two_models = _configs(source, task, decoder, trust_remote_code)
        with quiet_transformers():
            if two_models:
                model = transformers.EncoderDecoderModel.from_encoder_decoder_pretrained(
                    source, decoder, encoder_use_safetensors=True, decoder_use_safetensors=True,
                    encoder_dtype=torch_dtype(dtype), decoder_dtype=torch_dtype(dtype))
            else:
                auto = transformers.AutoModelForCausalLM if task == "causal_lm" else transformers.AutoModelForSeq2SeqLM
                model = auto.from_pretrained(source, config=config, use_safetensors=True, dtype=torch_dtype(dtype),
                                             trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise HybridftError(f"cannot load {task} model {source}: {str(e).splitlines()[0]}"
                            f"{remote_code_hint(source, trust_remote_code)}") from None
    note_ignored_code(source, trust_remote_code, type(model).__name__)
    set_special_ids(model, tokenizer)
    return model


def generative_skeleton(source: str, task: str, decoder: str | None = None, trust_remote_code: bool = False):
    """The model's modules on the meta device (no weights read), for checking selections."""
    import torch
    import transformers

    config, two_models = _configs(source, task, decoder, trust_remote_code)
    with torch.device("meta"):
        if two_models:
            return transformers.EncoderDecoderModel(config=config)
        auto = transformers.AutoModelForCausalLM if task == "causal_lm" else transformers.AutoModelForSeq2SeqLM
        return auto.from_config(config, trust_remote_code=trust_remote_code)
