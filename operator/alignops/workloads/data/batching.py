"""Examples as padded tensors: right padding for training and scoring, left for generation."""

from __future__ import annotations

import torch

from alignops.algos import IGNORE_INDEX
from alignops.workloads.data.sft import SftExample, prompt_ids


def pad_batch(sequences: list[list[int]], pad_value: int) -> list[list[int]]:
    width = max(len(s) for s in sequences)
    return [s + [pad_value] * (width - len(s)) for s in sequences]


def sft_batch(examples: list[SftExample], pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, labels, attention_mask), each (N, L), right-padded."""
    input_ids = torch.tensor(pad_batch([e.input_ids for e in examples], pad_token_id), device=device)
    labels = torch.tensor(pad_batch([e.labels for e in examples], IGNORE_INDEX), device=device)
    attention = torch.tensor(pad_batch([[1] * len(e.input_ids) for e in examples], 0), device=device)
    return input_ids, labels, attention


def encode_prompt(tokenizer, text: str) -> list[int]:
    """A prompt's ids as generation sees them, as training saw them (``sft.prompt_ids``)."""
    return prompt_ids(tokenizer, text)
