"""Conversations through chat templates: every assistant turn is learnt and nothing else, with the
demo tokenizer's template, a Qwen-style ChatML template (found by prefix rendering) and the same
template with ``{% generation %}`` markers (``return_assistant_tokens_mask``), which must agree."""

from __future__ import annotations

import pytest

from alignops.algos import IGNORE_INDEX
from alignops.workloads.data.chat import Chat
from alignops.workloads.data.comparisons import comparison
from alignops.workloads.data.records import DatasetError
from alignops.workloads.data.sft import tokenize_sft
from data.conftest import qwen_tokenizer

TALK = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"}]


def _learnt(example) -> list[int]:
    return [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX]


def _chars(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def test_demo_template_learns_every_assistant_turn(demo_tokenizer):
    tok = demo_tokenizer
    example = tokenize_sft({"messages": TALK}, tok, max_length=200)
    whole = "<|user|>hi\n<|assistant|>yo\n<|user|>1+1\n<|assistant|>2\n"
    # bos + the rendered conversation + eos (the demo template writes no end-of-turn token)
    assert example.input_ids == [tok.bos_token_id, *_chars(tok, whole), tok.eos_token_id]
    # both assistant turns as the template writes them ("yo\n", "2\n") and the closing eos
    assert _learnt(example) == _chars(tok, "yo\n") + _chars(tok, "2\n") + [tok.eos_token_id]
    # the labels sit on the tokens themselves: "y" of "yo" is at 1 (bos) + len(text before it)
    at = 1 + len("<|user|>hi\n<|assistant|>")
    assert example.labels[at - 1] == IGNORE_INDEX and example.labels[at] == tok.convert_tokens_to_ids("y")


@pytest.mark.parametrize("marked", [False, True], ids=["prefix-rendering", "generation-markers"])
def test_qwen_template_learns_content_and_im_end_of_each_turn(marked):
    tok = qwen_tokenizer(marked)
    example = tokenize_sft({"messages": TALK}, tok, max_length=400)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.bos_token_id is None and tok.eos_token_id == im_end
    # no bos; every assistant turn's content and its <|im_end|>; the "\n" after it is the template's
    assert example.input_ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert _learnt(example) == _chars(tok, "yo") + [im_end] + _chars(tok, "2") + [im_end]
    assert example.input_ids[-1] == _chars(tok, "\n")[0]  # nothing appended: the template closed the turn


def test_markers_and_prefix_rendering_give_the_same_tokens_and_labels():
    plain = tokenize_sft({"messages": TALK}, qwen_tokenizer(False), max_length=400)
    marked = tokenize_sft({"messages": TALK}, qwen_tokenizer(True), max_length=400)
    assert (plain.input_ids, plain.labels) == (marked.input_ids, marked.labels)


@pytest.mark.parametrize("marked", [False, True])
def test_conversational_prompt_completion_learns_the_completion_turns_only(marked):
    tok = qwen_tokenizer(marked)
    example = tokenize_sft({"prompt": TALK[:3], "completion": TALK[3:]}, tok, max_length=400)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert _learnt(example) == _chars(tok, "2") + [im_end]  # "yo" is in the prompt: context
    assert example.input_ids == tokenize_sft({"messages": TALK}, tok, max_length=400).input_ids


def test_a_template_that_rewrites_earlier_turns_is_refused(demo_tokenizer):
    tok = demo_tokenizer
    # drops earlier assistant turns' content once another turn follows (as reasoning templates do)
    tok.chat_template = ("{% for m in messages %}<|{{ m.role }}|>{% if m.role != 'assistant' or loop.last %}"
                         "{{ m.content }}{% endif %}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    with pytest.raises(DatasetError, match="generation %} markers"):
        tokenize_sft({"messages": TALK}, tok, max_length=200)


def test_conversational_pairs_with_an_implicit_prompt():
    tok = qwen_tokenizer()
    record = {"chosen": TALK[:3] + [{"role": "assistant", "content": "2"}],
              "rejected": TALK[:3] + [{"role": "assistant", "content": "3"}]}
    c = comparison(record, Chat(tok))
    chat = Chat(tok)
    # the prompt is the shared turns with the generation prompt; responses are what each turn adds
    assert c.prompt == chat.prompt(TALK[:3]) and c.prompt.endswith("<|im_start|>assistant\n")
    assert c.responses == ("2<|im_end|>\n", "3<|im_end|>\n") and c.chat


def test_standard_pairs_with_an_implicit_prompt():
    # TRL's extract_prompt: the common characters, backing off the space before the answers
    c = comparison({"chosen": "The sky is blue.", "rejected": "The sky is green."})
    assert (c.prompt, c.responses) == ("The sky is", (" blue.", " green."))
    with pytest.raises(DatasetError, match="share no beginning"):
        comparison({"chosen": "blue", "rejected": "green"})
