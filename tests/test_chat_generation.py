"""Chat models generate as a chat user reads them: batched prompts padded on the left with a KV cache,
stopping at the template's end-of-turn token, scored by exact match before and after training."""

import json

import pytest
import torch

from hybridft.cli import main
from hybridft.generative.chat import conversation_prompt_ids, end_of_turn_id, use_template
from hybridft.generative.generate import generate_texts
from hybridft.recipe.sections import GenerationSpec

from .conftest import write_recipe
from .test_chat import TEMPLATE
from .test_families import tiny_models


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tiny_models.build("llama", tmp_path_factory.mktemp("gen-llama"))


@pytest.fixture(scope="module")
def loaded(llama):
    from hybridft.generative.models import load_generative_model, stop_at_end_of_turn
    from hybridft.models import load_tokenizer

    tokenizer = load_tokenizer(str(llama))
    use_template(tokenizer, TEMPLATE)
    model = load_generative_model(str(llama), "causal_lm", tokenizer).eval()
    stop_at_end_of_turn(model, tokenizer)
    return model, tokenizer


def test_the_end_of_turn_token_is_found_in_the_template_and_stops_generation(loaded):
    model, tokenizer = loaded
    end = end_of_turn_id(tokenizer)
    assert end == tokenizer.convert_tokens_to_ids("[SEP]")
    assert end in model.generation_config.eos_token_id


def test_left_padded_batches_generate_what_each_prompt_generates_alone(loaded):
    model, tokenizer = loaded
    talks = [[{"role": "user", "content": text}] for text in
             ("hello", "a much longer question about the film and the plot", "why so sad")]
    prompts = conversation_prompt_ids(tokenizer, talks, 64)
    assert len({len(p) for p in prompts}) == 3  # three lengths: one batch needs padding
    spec = GenerationSpec(max_new_tokens=6)
    together = generate_texts(model, tokenizer, prompts, spec, batch_size=3, device="cpu")
    alone = [generate_texts(model, tokenizer, [p], spec, batch_size=1, device="cpu")[0] for p in prompts]
    assert together == alone


def chat_run(llama, tmp_path, rows, **generation) -> dict:
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))
    recipe = {"name": "chat", "task": "causal_lm", "model": {"name": str(llama), "max_length": 32,
                                                             "chat_template": TEMPLATE},
              "data": {"train": str(data), "validation": str(data), "columns": {"messages": "messages"}},
              "stages": [{"max_steps": 1, "batch_size": 8, "optimizer": {"lr": 1e-12}}],
              "generation": {"max_new_tokens": 4, **generation}}
    out = tmp_path / "run"
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe)), "--out", str(out), "--no-progress"]) == 0
    return json.loads((out / "report.json").read_text())


def test_exact_match_is_scored_before_and_after_training_against_the_last_answer(llama, loaded, tmp_path):
    model, tokenizer = loaded
    questions = [f"question {i}" for i in range(6)]
    talks = [[{"role": "user", "content": q}] for q in questions]
    said = generate_texts(model, tokenizer, conversation_prompt_ids(tokenizer, talks, 32), GenerationSpec(max_new_tokens=4),
                          8, "cpu")
    # the model's own greedy answers as references, half of them spoiled: exact match 1/2 (lr ~0: no change)
    rows = [[*t, {"role": "assistant", "content": f"  {a} " if i % 2 else f"{a} spoiled"}]
            for i, (t, a) in enumerate(zip(talks, said, strict=True))]
    report = chat_run(llama, tmp_path, rows, chat_metrics=["exact_match", "chrf"])
    assert report["stages"][0]["start_metrics"]["exact_match"] == pytest.approx(0.5)
    assert report["metrics"]["exact_match"] == pytest.approx(0.5)
    assert 0 < report["metrics"]["chrf"] <= 100 and "bleu" not in report["metrics"]
    assert "exact_match 0.5000 -> 0.5000" in (tmp_path / "run" / "report.md").read_text()


def test_chat_metrics_can_be_chosen_as_the_selection_metric():
    from hybridft.errors import HybridftError
    from hybridft.recipe import validate_recipe

    chat = {"task": "causal_lm", "model": {"chat_template": TEMPLATE}, "data": {"train": "x.jsonl",
            "columns": {"messages": "messages"}}, "stages": [{}], "metric": "exact_match"}
    assert validate_recipe(chat).selection_metric == "exact_match"
    with pytest.raises(HybridftError, match="not reported for causal_lm"):
        validate_recipe({"task": "causal_lm", "data": {"train": "x.txt"}, "stages": [{}], "metric": "exact_match"})


def test_generation_keeps_the_global_rng(loaded):
    model, tokenizer = loaded
    torch.manual_seed(5)
    before = torch.get_rng_state()
    generate_texts(model, tokenizer, [[5, 6, 7]], GenerationSpec(max_new_tokens=2, do_sample=True), 1, "cpu", seed=3)
    assert torch.equal(before, torch.get_rng_state())


def conversation_recipe(llama, tmp_path, **conversation) -> dict:
    data = tmp_path / "reviews.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"a {w} film \t{i % 2}\n" for i, w in
                                                  enumerate(["good", "bad", "fine", "awful", "great", "sad"])))
    fmt = {"system": "Answer positive or negative.", "user": "Review: {sentence}", "assistant": "{label}",
           "values": {"label": {"0": "negative", "1": "positive"}}, **conversation}
    return {"name": "rows-as-chat", "task": "causal_lm",
            "model": {"name": str(llama), "max_length": 48, "chat_template": TEMPLATE},
            "data": {"train": str(data), "validation": str(data), "format": "tsv", "columns": {"text": "sentence"},
                     "conversation": fmt},
            "stages": [{"max_steps": 1, "batch_size": 4}], "generation": {"max_new_tokens": 2}}


def test_rows_of_a_table_become_conversations_with_words_for_their_values(llama, tmp_path):
    from hybridft.generative.data import load_generative_data
    from hybridft.models import load_tokenizer
    from hybridft.recipe import validate_recipe
    from hybridft.tasks import IGNORE_INDEX

    recipe = validate_recipe(conversation_recipe(llama, tmp_path))
    tokenizer = load_tokenizer(str(llama))
    use_template(tokenizer, TEMPLATE)
    data = load_generative_data(recipe, tmp_path, tokenizer)
    first = data.validation[0]
    answer = tokenizer.decode([t for t, y in zip(first["input_ids"], first["labels"], strict=True) if y != IGNORE_INDEX])
    assert answer == "negative [SEP]"  # row 1: label 0, and the turn's end marker
    turns, reference = data.texts["validation"][1]
    assert reference == "positive" and [t["role"] for t in turns] == ["system", "user"]
    assert turns[1]["content"] == "Review: a bad film"


@pytest.mark.parametrize(("change", "message"), [
    ({"values": {"label": {"0": "negative"}}}, "row 2: label value '1' has no word"),
    ({"user": "Review: {review}"}, "no column 'review'"),
])
def test_a_conversation_format_that_does_not_fit_the_rows_is_one_line(change, message, llama, tmp_path, capsys):
    recipe = conversation_recipe(llama, tmp_path, **change)
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "run").exists()


def test_a_model_trained_on_rows_as_conversations_is_asked_as_it_was_trained(llama, tmp_path, capsys):
    import hybridft
    from hybridft.generative.chat import as_asked

    recipe = conversation_recipe(llama, tmp_path)
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe)), "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 0
    saved = json.loads((tmp_path / "run" / "model" / "hybridft.json").read_text())
    assert saved["conversation"] == {"system": "Answer positive or negative.", "user": "Review: {sentence}"}
    assert as_asked("a fine film", saved["conversation"]) == [
        {"role": "system", "content": "Answer positive or negative."}, {"role": "user", "content": "Review: a fine film"}]
    assert as_asked("a fine film", None) == [{"role": "user", "content": "a fine film"}]
    record = hybridft.load(tmp_path / "run" / "model").predict(["a fine film"])[0]
    assert record["input"] == "a fine film" and isinstance(record["generated"], str)


@pytest.mark.parametrize(("template", "talk", "message"), [
    ("{% for m in messages %}{{ m['content'] }", None, "the chat template: "),
    ("{{ raise_exception('roles must alternate') }}", None, "the chat template: roles must alternate"),
    (TEMPLATE, [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"}],
     "line 1: the conversation starts with the assistant's turn"),
])
def test_a_template_or_conversation_that_cannot_render_is_one_line(template, talk, message, llama, tmp_path, capsys):
    data = tmp_path / "chat.jsonl"
    talk = talk or [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    data.write_text(json.dumps({"messages": talk}) + "\n")
    recipe = {"name": "c", "task": "causal_lm", "model": {"name": str(llama), "chat_template": template},
              "data": {"train": str(data), "validation": str(data), "columns": {"messages": "messages"}},
              "stages": [{"max_steps": 1}]}
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe)), "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "run").exists()
