"""Chat fine-tuning: conversations rendered with a chat template, the loss on the assistant's turns."""

import json

import pytest

from hybridft.cli import main
from hybridft.errors import HybridftError
from hybridft.generative.chat import encode_chat, use_template
from hybridft.tasks import IGNORE_INDEX

from .conftest import write_recipe
from .test_families import tiny_models

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} [SEP] {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|> {% endif %}")
TALK = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "good morning"}, {"role": "user", "content": "and now"},
        {"role": "assistant", "content": "good night"}]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tiny_models.build("llama", tmp_path_factory.mktemp("chat-llama"))


@pytest.fixture
def tokenizer(llama):
    from hybridft.models import load_tokenizer

    tok = load_tokenizer(str(llama))
    use_template(tok, TEMPLATE)
    return tok


def test_only_the_assistant_turns_carry_labels_and_every_user_turn_is_masked(tokenizer):
    (example,), counts = encode_chat([TALK], tokenizer, max_length=128)
    labelled = [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(labelled) == "good morning [SEP] good night [SEP]"  # each answer and its end marker
    masked = tokenizer.decode([t for t, label in zip(example["input_ids"], example["labels"], strict=True)
                               if label == IGNORE_INDEX])
    assert "be brief" in masked and "hello there" in masked and "and now" in masked and "good" not in masked
    assert all(label in (IGNORE_INDEX, t) for t, label in zip(example["input_ids"], example["labels"], strict=True))
    assert counts == {"truncated": 0, "skipped_no_assistant": 0, "skipped_prompt_too_long": 0}


def test_rows_without_an_answer_are_skipped_and_counted(tokenizer):
    no_answer = TALK[:2]
    examples, counts = encode_chat([TALK, no_answer], tokenizer, max_length=128)
    assert len(examples) == 1 and counts["skipped_no_assistant"] == 1
    examples, counts = encode_chat([TALK], tokenizer, max_length=6)  # the first answer lies beyond 6 tokens
    assert examples == [] and counts["skipped_prompt_too_long"] == 1


def test_a_tokenizer_without_a_template_needs_one_from_the_recipe(llama):
    from hybridft.models import load_tokenizer

    with pytest.raises(HybridftError, match="the tokenizer has no chat template; give one in model.chat_template"):
        use_template(load_tokenizer(str(llama)), None)


def test_chat_fine_tuning_through_the_cli_then_predict_answers(llama, tmp_path, capsys):
    data = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": f"answer {i % 3}"}]} for i in range(40)]
    rows.append({"messages": [{"role": "user", "content": "left unanswered"}]})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "chat.jinja").write_text(TEMPLATE)
    recipe = {"name": "chat", "task": "causal_lm", "model": {"name": str(llama), "max_length": 32,
                                                             "chat_template": "chat.jinja"},
              "data": {"train": str(data), "columns": {"messages": "messages"}},
              "stages": [{"max_steps": 3, "batch_size": 8, "optimizer": {"lr": 1e-3},
                          "select": [{"name": "lora", "r": 2}]}], "generation": {"max_new_tokens": 3}}
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["data"]["skipped_no_assistant"]["train"] + report["data"]["skipped_no_assistant"]["validation"] == 1
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run" / "model"), "--text", "question 7", "--no-progress"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["input"] == "question 7" and isinstance(record["generated"], str)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "run" / "model").chat_template == TEMPLATE  # saved with it


def test_chat_columns_are_checked_by_validate(llama, tmp_path):
    from hybridft.recipe import validate_recipe

    base = {"task": "classification", "model": {"name": str(llama)},
            "data": {"train": "x.jsonl", "columns": {"messages": "messages"}}, "stages": [{}]}
    with pytest.raises(HybridftError, match="data.columns.messages: only for generative tasks"):
        validate_recipe(base)
    with pytest.raises(HybridftError, match="model.chat_template: for data.columns.messages"):
        validate_recipe({"task": "causal_lm", "model": {"chat_template": TEMPLATE}, "data": {"train": "x.txt"},
                         "stages": [{}]})


@pytest.mark.integration
def test_the_shipped_chat_and_decoder_recipes_run_on_real_data(llama, tmp_path):
    """recipes/chat-sft.yaml (SST-2 rows made into conversations) and recipes/decoder-classification.yaml
    with a tiny Llama in model.name instead of the embedded SmolLM2, shortened by overrides."""
    from pathlib import Path

    from .conftest import SHARED_DATA

    if not (SHARED_DATA / "sst2" / "train.tsv").is_file():
        pytest.skip("../shared/data is absent")
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "t.jinja").write_text(TEMPLATE)
    chat = main(["run", str(root / "recipes" / "chat-sft.yaml"), "--out", str(tmp_path / "sft"), "--no-progress",
                 f"model.name={llama}", f"model.chat_template={tmp_path / 't.jinja'}", "stages.0.max_steps=2",
                 "data.max_train_samples=32", "data.max_eval_samples=8"])
    assert chat == 0
    report = json.loads((tmp_path / "sft" / "report.json").read_text())
    assert report["metrics"]["perplexity"] > 1 and 0 <= report["metrics"]["exact_match"] <= 1
    assert "exact_match" in report["stages"][0]["start_metrics"]  # zero-shot, before training
    classify = main(["run", str(root / "recipes" / "decoder-classification.yaml"), "--out", str(tmp_path / "cls"),
                     "--no-progress", f"model.name={llama}", "data.max_train_samples=64", "data.max_eval_samples=32",
                     "stages.0.max_steps=2"])
    assert classify == 0
