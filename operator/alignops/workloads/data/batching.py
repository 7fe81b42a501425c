"""Examples as padded tensors: right padding for training and scoring, left for generation."""

from __future__ import annotations

import torch

from alignops.algos import IGNORE_INDEX
from alignops.workloads.data.sft import SftExample, prompt_ids


def pad_batch(sequences: list[list[int]], pad_value: int) -> list[list[int]]:
    width = max(len(s) for s in sequences)
    return [s + [pad_value] * (width - len(s)) for s in sequences]


def to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on ``device``; to a GPU through pinned memory without waiting: a plain copy
    from pageable memory would block the host until the GPU's queue drains (a sync per batch)."""
    device = torch.device(device)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def sft_batch(examples: list[SftExample], pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, labels, attention_mask), each (N, L), right-padded."""
    input_ids = torch.tensor(pad_batch([e.input_ids for e in examples], pad_token_id))
    labels = torch.tensor(pad_batch([e.labels for e in examples], IGNORE_INDEX))
    attention = torch.tensor(pad_batch([[1] * len(e.input_ids) for e in examples], 0))
    return to_device(input_ids, device), to_device(labels, device), to_device(attention, device)


def encode_prompt(tokenizer, text: str) -> list[int]:
    """A prompt's ids as generation sees them, as training saw them (``sft.prompt_ids``)."""
    return prompt_ids(tokenizer, text)
