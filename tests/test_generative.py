"""causal_lm and seq2seq: tiny GPT-2, T5 and BERT-to-BERT models built here, trained through the
real loop, saved, and loaded back with plain transformers."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from hybridft.cli import main
from hybridft.errors import HybridftError
from hybridft.recipe import validate_recipe

from .conftest import write_recipe
from .helpers import make_run, train_and_load

# a toy language pair: each source word has one target word, in the same order
PAIRS = {"rot": "red", "gruen": "green", "blau": "blue", "katze": "cat", "hund": "dog", "vogel": "bird",
         "rennt": "runs", "sitzt": "sits", "der": "the", "ein": "a", "gross": "big", "klein": "small"}
WORDS = sorted(set(PAIRS) | set(PAIRS.values()))


def word_tokenizer(folder: Path, specials: dict[str, str], template: str | None):
    """A word-level fast tokenizer. ``specials`` maps roles (pad_token, eos_token, ...) to tokens;
    ``template`` (e.g. "$A </s>") adds special tokens around each text, as T5 and BERT do."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokens = list(dict.fromkeys(specials.values())) + WORDS
    vocab = {w: i for i, w in enumerate(tokens)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if template:
        used = [t for t in specials.values() if t in template]
        tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=[(t, vocab[t]) for t in used])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=64, **specials)
    fast.save_pretrained(folder)
    return fast


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """GPT-2 style: no pad token, <|endoftext|> as bos and eos, nothing added by the tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tok = word_tokenizer(folder, {"unk_token": "<unk>", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"},
                         None)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    folder = tmp_path_factory.mktemp("tiny-t5")
    tok = word_tokenizer(folder, {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}, "$A </s>")
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tok), d_model=32, d_ff=64, d_kv=16, num_layers=2, num_decoder_layers=2,
                      num_heads=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    T5ForConditionalGeneration(config).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_words(tmp_path_factory) -> Path:
    """An encoder-only BERT over the toy words: the encoder-decoder test builds both sides from it."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert-words")
    tok = word_tokenizer(folder, {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                                  "sep_token": "[SEP]"}, "[CLS] $A [SEP]")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


def toy_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        source = rng.choices(sorted(PAIRS), k=rng.randint(2, 5))
        rows.append((" ".join(source), " ".join(PAIRS[w] for w in source)))
    return rows


@pytest.fixture
def translation_jsonl(tmp_path) -> dict[str, Path]:
    paths = {}
    for split, n, seed in (("train", 160, 0), ("validation", 24, 1)):
        paths[split] = tmp_path / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in toy_pairs(n, seed)),
                                encoding="utf-8")
    return paths


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text("\n".join(t for _, t in toy_pairs(120, 2)) + "\n\n", encoding="utf-8")
    return path


def seq2seq_recipe(model_dir: Path, data: dict[str, Path], **extra) -> dict:
    recipe = {"name": "toy-mt", "task": "seq2seq", "model": {"name": str(model_dir), "max_length": 16,
                                                            "max_target_length": 12},
              "data": {"train": str(data["train"]), "validation": str(data["validation"])},
              "stages": [{"name": "mt", "optimizer": {"lr": 3e-3}, "batch_size": 16, "epochs": 4}],
              "generation": {"max_new_tokens": 8}}
    for key, value in extra.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe


def causal_recipe(model_dir: Path, train: Path, **extra) -> dict:
    recipe = {"name": "toy-lm", "task": "causal_lm", "model": {"name": str(model_dir), "max_length": 16},
              "data": {"train": str(train)},
              "stages": [{"name": "lm", "optimizer": {"lr": 3e-3}, "batch_size": 16, "epochs": 3}]}
    for key, value in extra.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe


# --- losses: the same numbers as the models' own loss ---------------------------------------------


def test_causal_task_loss_matches_the_model_own_shifted_loss(tiny_gpt2, text_file, tmp_path):
    from hybridft.objectives.task import task_loss, token_positions

    run = make_run(causal_recipe(tiny_gpt2, text_file), tmp_path / "run")
    batch = run.collator(run.data.train[:6])
    labels = batch.pop("labels")
    out = run.model(**batch)
    ours = task_loss(*token_positions(out.logits, labels, causal=True))
    theirs = run.model(**batch, labels=labels).loss
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_seq2seq_task_loss_matches_the_model_own_loss(tiny_t5, translation_jsonl, tmp_path):
    from hybridft.objectives.task import task_loss, token_positions

    run = make_run(seq2seq_recipe(tiny_t5, translation_jsonl), tmp_path / "run")
    batch = run.collator(run.data.train[:6])
    assert "decoder_input_ids" in batch  # teacher forcing: the shifted labels
    labels = batch.pop("labels")
    out = run.model(**batch)
    ours = task_loss(*token_positions(out.logits, labels, causal=False))
    theirs = run.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    assert torch.allclose(ours, theirs, atol=1e-6)


# --- data -------------------------------------------------------------------------------------------


def test_prompt_tokens_carry_no_loss_and_long_prompts_are_skipped(tiny_gpt2, tmp_path):
    from hybridft.data.prepare import resolve_path  # noqa: F401  (the module the encoder reuses)
    from hybridft.generative.data import encode_causal
    from hybridft.models import load_tokenizer
    from hybridft.recipe import Columns

    tok = load_tokenizer(str(tiny_gpt2))
    rows = [{"p": "rot hund", "r": "red dog"}, {"p": " ".join(["katze"] * 20), "r": "cat"}]
    examples, counts = encode_causal(rows, tok, Columns(prompt="p", response="r"), max_length=8, packing=False)
    assert counts["skipped_prompt_too_long"] == 1 and len(examples) == 1
    ex = examples[0]
    eos = tok.eos_token_id
    assert ex["input_ids"] == [tok.bos_token_id, *tok.convert_tokens_to_ids(["rot", "hund", "red", "dog"]), eos]
    assert ex["labels"] == [-100, -100, -100, *tok.convert_tokens_to_ids(["red", "dog"]), eos]


def test_no_pad_token_is_handled_and_reported(tiny_gpt2, text_file, tmp_path):
    run = make_run(causal_recipe(tiny_gpt2, text_file), tmp_path / "run")
    assert run.tokenizer.pad_token_id == run.tokenizer.eos_token_id
    assert "no pad token" in run.data.stats["pad_token"]


def test_packing_makes_full_blocks_without_truncation(tiny_gpt2, text_file, tmp_path):
    run = make_run(causal_recipe(tiny_gpt2, text_file, data={"packing": True}), tmp_path / "run")
    blocks = run.data.train
    assert all(len(b["input_ids"]) == 16 for b in blocks[:-1]) and len(blocks[-1]["input_ids"]) <= 16
    total = sum(len(b["input_ids"]) for b in blocks)
    unpacked = make_run(causal_recipe(tiny_gpt2, text_file), tmp_path / "run2").data.train
    assert total == sum(len(ex["input_ids"]) for ex in unpacked)  # nothing cut away


def test_empty_targets_are_skipped_and_counted(tiny_t5, translation_jsonl, tmp_path):
    with open(translation_jsonl["train"], "a", encoding="utf-8") as f:
        f.write(json.dumps({"source": "rot hund", "target": "  "}) + "\n")
        f.write(json.dumps({"source": "", "target": "red"}) + "\n")
    run = make_run(seq2seq_recipe(tiny_t5, translation_jsonl), tmp_path / "run")
    assert run.data.stats["train"]["skipped_empty_target"] == 1
    assert run.data.stats["train"]["skipped_empty_source"] == 1


def test_parallel_files_read_line_by_line_and_must_align(tmp_path):
    from hybridft.data.readers import read_table
    from hybridft.recipe import Columns, LanguagePair

    (tmp_path / "t.de").write_text("ein hund\nrot\n", encoding="utf-8")
    (tmp_path / "t.en").write_text("a dog\nred\n", encoding="utf-8")
    frame = read_table(tmp_path / "t.{lang}", "auto", "seq2seq", "train", languages=LanguagePair(source="de", target="en"),
                       columns=Columns())
    assert frame.to_dict("records") == [{"source": "ein hund", "target": "a dog"}, {"source": "rot", "target": "red"}]
    (tmp_path / "t.en").write_text("a dog\n", encoding="utf-8")
    with pytest.raises(HybridftError, match="do not align"):
        read_table(tmp_path / "t.{lang}", "auto", "seq2seq", "train", languages=LanguagePair(source="de", target="en"),
                   columns=Columns())


# --- training, saving, loading with plain transformers ---------------------------------------------


def test_causal_lm_trains_saves_and_loads_with_plain_transformers(tiny_gpt2, text_file, tmp_path):
    from transformers import AutoModelForCausalLM

    report, _ = train_and_load(causal_recipe(tiny_gpt2, text_file), tmp_path / "run")
    start = report["stages"][0]["start_metrics"]["perplexity"]
    # random word sequences over 12 words: perplexity cannot go far below 12
    assert report["metrics"]["perplexity"] < 0.6 * start, (start, report["metrics"])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")  # plain transformers
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert "Validation before training -> after" in (tmp_path / "run" / "report.md").read_text()


def test_evaluate_start_false_skips_the_evaluation_before_training(tiny_gpt2, text_file, tmp_path):
    recipe = causal_recipe(tiny_gpt2, text_file)
    recipe["stages"][0].update(epochs=1, evaluate_start=False)
    report, _ = train_and_load(recipe, tmp_path / "run")
    assert report["stages"][0]["start_metrics"] is None
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert not [entry for entry in logged if entry["step"] == 0]  # the start evaluation logs at step 0
    assert "perplexity" in report["metrics"]


def test_generation_is_reproducible_with_a_seed(tiny_gpt2, text_file, tmp_path, capsys):
    train_and_load(causal_recipe(tiny_gpt2, text_file), tmp_path / "run")
    model_dir = str(tmp_path / "run" / "model")

    def sample(seed: int) -> list[str]:
        assert main(["predict", model_dir, "--text", "rot", "--text", "der katze", "--sample", "--temperature", "2",
                     "--max-new-tokens", "6", "--seed", str(seed)]) == 0
        return [json.loads(line)["generated"] for line in capsys.readouterr().out.splitlines()]

    first = sample(1)
    assert sample(1) == first
    assert any(sample(s) != first for s in (2, 3, 4))  # sampling does depend on the seed


def test_encoder_decoder_from_two_pretrained_encoders_learns_to_translate(tiny_bert_words, translation_jsonl, tmp_path,
                                                                           capsys):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    recipe = seq2seq_recipe(tiny_bert_words, translation_jsonl, model={"decoder": str(tiny_bert_words)})
    recipe["stages"][0].update(epochs=30, optimizer={"lr": 3e-3})
    report, _ = train_and_load(recipe, tmp_path / "run")
    start = report["stages"][0]["start_metrics"]
    assert report["metrics"]["bleu"] > 40 > start["bleu"], (start, report["metrics"])  # a word-for-word toy language
    assert report["samples"]["validation"]
    # plain transformers: the saved folder is an EncoderDecoderModel whose generate() decodes as hybridft does
    folder = tmp_path / "run" / "model"
    model, tok = AutoModelForSeq2SeqLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == "EncoderDecoderModel"
    sources = [s for s, _ in toy_pairs(5, 9)]
    plain = [tok.decode(model.generate(**tok([s], return_tensors="pt"))[0], skip_special_tokens=True) for s in sources]
    assert main(["predict", str(folder), *[x for s in sources for x in ("--text", s)]]) == 0
    ours = [json.loads(line)["generated"] for line in capsys.readouterr().out.splitlines()]
    assert ours == [p.strip() for p in plain]
    # hybridft eval on the validation file gives the numbers the run reported for it
    assert main(["eval", str(folder), str(translation_jsonl["validation"])]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["bleu"] == pytest.approx(report["metrics"]["bleu"]) and metrics["examples"] == 24
    assert metrics["perplexity"] == pytest.approx(report["metrics"]["perplexity"], rel=1e-5)


def test_new_cross_attention_with_one_selector_pretrained_parts_with_another(tiny_bert_words, translation_jsonl,
                                                                             tmp_path):
    """The hybrid case: LoRA on the pretrained attention, the new cross-attention trained whole."""
    from hybridft.training.loop import build_selection

    recipe = seq2seq_recipe(tiny_bert_words, translation_jsonl, model={"decoder": str(tiny_bert_words)})
    recipe["stages"][0]["select"] = [{"name": "lora", "r": 2, "head": False},
                                     {"name": "layers", "top_k": 0, "head": False, "patterns": ["crossattention"]}]
    run = make_run(recipe, tmp_path / "run")
    selection = build_selection(run, run.recipe.stages[0], "s")
    trained = [n for n, p in selection.model.named_parameters() if p.requires_grad]
    assert any("crossattention" in n and "lora_" not in n for n in trained)
    assert any(n.startswith("encoder.") and "lora_" in n for n in trained)
    assert not any(n.startswith("encoder.") and "lora_" not in n for n in trained)  # the encoder itself frozen


def test_t5_with_frozen_encoder_trains_only_the_decoder(tiny_t5, translation_jsonl, tmp_path):
    from safetensors.torch import load_file

    recipe = seq2seq_recipe(tiny_t5, translation_jsonl)
    recipe["stages"][0]["select"] = [{"name": "layers", "top_k": 0, "head": True, "patterns": [r"^decoder\."]}]
    recipe["stages"][0]["epochs"] = 1
    before = load_file(tiny_t5 / "model.safetensors")
    _, after = train_and_load(recipe, tmp_path / "run")
    assert torch.equal(before["encoder.block.0.layer.0.SelfAttention.q.weight"],
                       after["encoder.block.0.layer.0.SelfAttention.q.weight"])
    assert not torch.equal(before["decoder.block.0.layer.1.EncDecAttention.q.weight"],
                           after["decoder.block.0.layer.1.EncDecAttention.q.weight"])


def test_token_distillation_and_l2sp_run_on_a_causal_lm(tiny_gpt2, text_file, tmp_path):
    recipe = causal_recipe(tiny_gpt2, text_file)
    recipe["stages"].append({"name": "distill", "optimizer": {"lr": 1e-3}, "batch_size": 16, "epochs": 1,
                             "select": [{"name": "lora", "target_modules": ["c_attn"], "r": 2}],
                             "objectives": [{"name": "task"}, {"name": "distill", "teacher": "previous", "weight": 0.5},
                                            {"name": "regularize", "kind": "l2_sp", "weight": 0.01}]})
    report, _ = train_and_load(recipe, tmp_path / "run")
    stage = report["stages"][1]
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/distill_previous" in r for r in logged)
    # L2-SP reaches the LoRA layers (their merged weights' distance to the pretrained ones), so after the
    # first update (B starts at zero) the term is not zero
    assert [r["loss/regularize"] > 0 for r in logged if "loss/regularize" in r][1:] == [True] * (stage["steps"] - 1)
    assert stage["objective_details"]["regularize"]["lora_layers"] == 2
    assert stage["trainable_params"] < report["stages"][0]["trainable_params"]


def test_token_distillation_of_a_model_from_itself_is_zero(tiny_gpt2, text_file, tmp_path):
    from hybridft.objectives.base import StepContext
    from hybridft.registry import OBJECTIVES

    recipe = causal_recipe(tiny_gpt2, text_file)
    recipe["stages"].append({"objectives": [{"name": "distill", "teacher": "previous"}]})
    run = make_run(recipe, tmp_path / "run")
    objective = OBJECTIVES.build(run.recipe.stages[1].objectives[0])
    objective.on_stage_start(run)
    run.model.eval()
    batch = {k: v for k, v in run.collator(run.data.train[:4]).items()}
    outputs = run.model(**{k: v for k, v in batch.items() if k != "labels"})
    loss = objective.loss(run.model, batch, outputs, StepContext(run, 0, 0, [0, 1, 2, 3], True, 4))
    assert abs(float(loss.detach())) < 1e-6


# --- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    ({"stages": [{"objectives": [{"name": "pseudo_label"}]}]}, "not supported for causal_lm"),
    ({"stages": [{"objectives": [{"name": "distill", "teacher": "previous", "noise": 0.1}]}]},
     "noise is for classification and tagging"),
    ({"data": {"packing": True}, "task": "seq2seq"}, "only for causal_lm"),
    ({"metric": "bleu"}, "not reported for causal_lm"),
])
def test_bad_generative_recipes_are_refused(change, message, tmp_path):
    recipe = causal_recipe(tmp_path, tmp_path / "x.txt")
    for key, value in change.items():
        recipe[key] = {**recipe[key], **value} if isinstance(value, dict) and key in recipe else value
    with pytest.raises(HybridftError, match=message):
        validate_recipe(recipe)


def test_seq2seq_on_an_encoder_only_model_asks_for_a_decoder(tiny_bert_words, translation_jsonl, tmp_path, capsys):
    path = write_recipe(tmp_path / "r.yaml", seq2seq_recipe(tiny_bert_words, translation_jsonl))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "set model.decoder" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_mix_stage_importance_and_adapters_work_on_language_models(tiny_gpt2, tiny_bert_words, text_file, tmp_path):
    recipe = causal_recipe(tiny_gpt2, text_file)
    recipe["stages"][0]["select"] = [{"name": "importance", "density": 0.2, "batches": 2}]
    recipe["mix"] = {"alphas": [0.0, 0.5, 1.0]}
    report, _ = train_and_load(recipe, tmp_path / "gpt2")
    curve = {p["alpha"]: p["perplexity"] for p in report["mix"]["curve"]}
    assert curve[0.0] < curve[1.0]  # the fine-tuned end beats the pretrained (random) one
    assert report["mix"]["chosen_alpha"] == min(curve, key=curve.get)  # lower perplexity is better
    assert report["stages"][0]["trainable_params"] < 0.5 * report["params"]["total"]

    bert_lm = causal_recipe(tiny_bert_words, text_file)  # an encoder turned decoder, with adapters
    bert_lm["stages"][0]["select"] = [{"name": "adapter", "reduction_factor": 4}]
    report, _ = train_and_load(bert_lm, tmp_path / "bert")
    assert report["metrics"]["perplexity"] < report["stages"][0]["start_metrics"]["perplexity"]
