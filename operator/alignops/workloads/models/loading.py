"""Hugging Face checkpoints from disk (a committed checkpoint's verified local copy), the device a
stage runs on, and the autocast dtype its precision asks for."""

from __future__ import annotations

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
    """A sequence classifier from a checkpoint: a causal LM's (new ``score`` head) or a reward model's;
    its head runs in float32 (``float32_head``)."""
    return float32_head(AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1, dtype=torch.float32))


class Float32Head(torch.nn.Linear):
    """A scalar head that computes in float32 under autocast. A reward (or value) is read as a number
    and the losses use differences of two of them (r_chosen - r_rejected, V - returns): in bf16 each
    output carries a relative error of 2^-9, so a gap much smaller than the rewards themselves, which
    is where every reward model starts, is rounding noise. The transformer under it stays in autocast."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            bias = None if self.bias is None else self.bias.float()
            return torch.nn.functional.linear(hidden.float(), self.weight.float(), bias)


def float32_head(model):
    """``model`` with its ``score`` head (a sequence or token classifier's) computing in float32; the
    same parameters and checkpoint keys (only the module's class changes)."""
    head = getattr(model, "score", None)
    if type(head) is torch.nn.Linear:
        head.__class__ = Float32Head
    return model


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a stage's ``precision``: ``bf16`` on any device (the CPU too, so a CPU
    run, CI's included, sees the numerics a GPU run has), ``auto`` bf16 on a GPU that supports it and
    none (fp32) elsewhere, ``fp32`` none. Master weights and the optimizer stay float32 either way."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None
