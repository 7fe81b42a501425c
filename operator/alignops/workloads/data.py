"""Datasets: JSON lines from storage or the demo generators, and the SFT tokenisation (prompt tokens
masked with -100 so that only response tokens are learnt)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from alignops.api.common import DatasetSource
from alignops.demo import generate
from alignops.storage import ObjectStore, StorageOptions, open_store
from alignops.workloads.context import ConfigError

IGNORE_INDEX = -100


class DatasetError(ConfigError, ValueError):
    """A dataset that cannot be read or has the wrong format (a configuration error)."""


def load_records(source: DatasetSource, default_format: str, held_out: bool = False,
                 options: StorageOptions | None = None) -> list[dict]:
    fmt = source.format or default_format
    if source.generator is not None:
        return generate(fmt, source.size, source.seed, held_out=held_out, max_operand=source.max_operand)
    store, key = _store_and_key(source.uri, options)
    try:
        text = store.get_bytes(key).decode()
    except FileNotFoundError as exc:
        raise DatasetError(f"dataset {source.uri} not found: {exc}") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{source.uri} line {number}: not JSON ({exc.msg})") from None
    if not records:
        raise DatasetError(f"{source.uri} has no records")
    return records


def _store_and_key(uri: str, options: StorageOptions | None) -> tuple[ObjectStore, str]:
    parent, _, name = uri.rstrip("/").rpartition("/")
    return open_store(parent, options), name


@dataclass(frozen=True)
class SftExample:
    input_ids: list[int]
    labels: list[int]
    source: str | None = None


def sft_prompt_and_response(record: dict, tokenizer) -> tuple[str, str]:
    """(prompt text, response text) of a record in either format users have: chat ``messages``
    (the last assistant turn is the response) or ``prompt``/``completion``."""
    if "messages" in record:
        messages = record["messages"]
        if not messages or messages[-1].get("role") != "assistant":
            raise DatasetError("a `messages` record must end with an assistant message")
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        return prompt, messages[-1]["content"]
    if "prompt" in record and "completion" in record:
        return record["prompt"], record["completion"]
    raise DatasetError(f"an SFT record needs `messages` or `prompt` and `completion`; got keys {sorted(record)}")


def tokenize_sft(record: dict, tokenizer, max_length: int) -> SftExample:
    prompt, response = sft_prompt_and_response(record, tokenizer)
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    response_ids = tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    input_ids = (bos + prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE_INDEX] * (len(bos) + len(prompt_ids)) + response_ids)[:max_length]
    return SftExample(input_ids=input_ids, labels=labels, source=record.get("source"))


def pad_batch(sequences: list[list[int]], pad_value: int) -> list[list[int]]:
    width = max(len(s) for s in sequences)
    return [s + [pad_value] * (width - len(s)) for s in sequences]
