"""The real chat template of the embedded decoder (SmolLM2's <|im_start|> format): the loss falls on
the assistant's words and the token that ends its turn, token by token, and generation stops there."""

import pytest

from hybridft.generative.chat import encode_chat, end_of_turn_id
from hybridft.tasks import IGNORE_INDEX

TALK = [{"role": "system", "content": "Answer with one word."}, {"role": "user", "content": "Review: a good film"},
        {"role": "assistant", "content": "positive"}, {"role": "user", "content": "Review: a dull film"},
        {"role": "assistant", "content": "negative"}]


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from hybridft.models import load_tokenizer

    return load_tokenizer(str(smollm2_dir))


def test_smollm2_masks_all_but_each_answer_and_its_end_of_turn_token(tokenizer):
    (example,), _ = encode_chat([TALK], tokenizer, max_length=256)
    pieces = [(tokenizer.decode([t]), label != IGNORE_INDEX) for t, label in
              zip(example["input_ids"], example["labels"], strict=True)]
    trained = [p for p, on in pieces if on]
    assert trained == ["positive", "<|im_end|>", "negative", "<|im_end|>"]
    assert all(label in (IGNORE_INDEX, t) for t, label in zip(example["input_ids"], example["labels"], strict=True))
    # every token of the system and user turns, and the template's markup around the answers, is masked
    masked = "".join(p for p, on in pieces if not on)
    assert masked.count("<|im_start|>") == 5 and "Review: a good film" in masked and "assistant\n" in masked


def test_smollm2_ends_a_turn_with_im_end_where_generation_stops(tokenizer):
    assert tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer)) == "<|im_end|>"


def test_a_conversation_without_a_system_turn_gets_the_template_default(tokenizer):
    (example,), _ = encode_chat([TALK[1:3]], tokenizer, max_length=256)
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.decode(example["input_ids"])
    assert tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX]) == "positive<|im_end|>"
