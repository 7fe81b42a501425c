"""Hugging Face checkpoints from disk (a committed checkpoint's verified local copy), the device a
stage runs on, and the autocast dtype its precision asks for."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer


def load_tokenizer(path: Path):
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: Path, dtype: torch.dtype = torch.float32):
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)


def load_reward_model(path: Path):
    """A sequence classifier from a checkpoint: a causal LM's (new ``score`` head) or a reward model's."""
    return AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1, dtype=torch.float32)


def pick_device() -> torch.device:
    """This process's device: its own GPU when a launcher started one process per GPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on a GPU that has it (precision auto or bf16); none on the CPU."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None
