"""The SFT tokenisation every stage shares: ``bos + prompt + response + eos`` with the prompt's
labels masked (``IGNORE_INDEX``), so only response tokens are learnt or scored."""

from __future__ import annotations

from dataclasses import dataclass

from alignops.algos import IGNORE_INDEX
from alignops.workloads.data.records import DatasetError


@dataclass(frozen=True)
class SftExample:
    input_ids: list[int]
    labels: list[int]
    source: str | None = None
    empty_response: bool = False  # the record's response text was empty (only eos is learnt)

    @property
    def learns(self) -> bool:
        """Whether any response token survived truncation to maxLength."""
        return any(label != IGNORE_INDEX for label in self.labels)


def response_tokens(examples: list[SftExample]) -> int:
    """Labelled (response) tokens of the examples, counted on the host: what a scored batch's
    ``lengths`` sum to, without reading a device tensor back."""
    return sum(sum(label != IGNORE_INDEX for label in e.labels) for e in examples)


def sft_prompt_and_response(record: dict, tokenizer) -> tuple[str, str]:
    """(prompt text, response text) of a record in either format users have: chat ``messages``
    (the last assistant turn is the response) or ``prompt``/``completion``."""
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise DatasetError("field `messages` must be a list of {role, content} objects")
        for m in messages:
            text_field(m, "content", "messages[].content")
        if not messages or messages[-1].get("role") != "assistant":
            raise DatasetError("a `messages` record must end with an assistant message")
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        return prompt, messages[-1]["content"]
    if "prompt" in record and "completion" in record:
        return text_field(record, "prompt"), text_field(record, "completion")
    raise DatasetError(f"an SFT record needs `messages` or `prompt` and `completion`; got keys {sorted(record)}")


def text_field(record: dict, name: str, label: str | None = None) -> str:
    """``record[name]``, which must be a string (a number or a list is a data error, not a crash)."""
    value = record[name]
    if not isinstance(value, str):
        raise DatasetError(f"field `{label or name}` must be a string, got {type(value).__name__} {str(value)[:40]!r}")
    return value


def tokenize_sft(record: dict, tokenizer, max_length: int) -> SftExample:
    prompt, response = sft_prompt_and_response(record, tokenizer)
    return _tokenize(prompt, response, tokenizer, max_length, record.get("source"))


def tokenize_response(prompt: str, response: str, tokenizer, max_length: int) -> SftExample:
    """One (prompt, response) pair of a comparison, tokenised as the SFT stage tokenises it."""
    return _tokenize(prompt, response, tokenizer, max_length, None)


def _tokenize(prompt: str, response: str, tokenizer, max_length: int, source: str | None) -> SftExample:
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    response_ids = tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    input_ids = (bos + prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE_INDEX] * (len(bos) + len(prompt_ids)) + response_ids)[:max_length]
    return SftExample(input_ids=input_ids, labels=labels, source=source, empty_response=not response)


def reward_example(prompt: str, response: str, tokenizer, max_length: int) -> SftExample:
    """The SFT tokenisation for a reward model; when pad and eos are one token (many HF tokenizers)
    the eos is dropped, or the head would read the token before it (it takes the last non-pad)."""
    example = tokenize_response(prompt, response, tokenizer, max_length)
    if tokenizer.pad_token_id == tokenizer.eos_token_id and example.input_ids[-1] == tokenizer.eos_token_id:
        example = SftExample(example.input_ids[:-1], example.labels[:-1])
    return example
