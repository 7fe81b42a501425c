"""Hugging Face models and tokenizers from a local directory (a committed checkpoint's verified copy,
a checked model directory or a Hub snapshot), the tokens that end a response, the device a stage
runs on, and the autocast dtype its precision asks for.

The tokenizer is the model's own: its chat template unless the manifest gives one
(``spec.model.chatTemplate``), pad = EOS where it has no pad token, no BOS where it has none (as
Qwen's), and every end-of-sequence id the model's generation config lists (Llama 3 and Qwen chat
models end a turn with a token other than the tokenizer's EOS).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from alignops.workloads.context import ConfigError


def load_tokenizer(path: Path, trust_remote_code: bool = False, chat_template: str | None = None):
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"the tokenizer in {path} has neither a pad nor an end-of-sequence token; add one to its "
                              "special tokens (tokenizer_config.json)")
        tokenizer.pad_token = tokenizer.eos_token
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


def load_causal_lm(path: Path, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, trust_remote_code=trust_remote_code)


def load_reward_model(path: Path, trust_remote_code: bool = False):
    """A sequence classifier from a checkpoint: a causal LM's (new ``score`` head) or a reward model's;
    its head runs in float32 (``float32_head``)."""
    return float32_head(AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1, dtype=torch.float32,
                                                                           trust_remote_code=trust_remote_code))


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


def fit_tokenizer(model: torch.nn.Module, tokenizer, where: str) -> torch.nn.Module:
    """Refuse a tokenizer with ids past the model's embedding (an index error deep in a forward
    pass, or a CUDA assert, otherwise); give the model the tokenizer's pad id where it has none."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ConfigError(f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's embedding has {rows} rows; "
                          "the tokenizer files belong to another model (or resize the embedding and save again)")
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is not None and getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = tokenizer.pad_token_id
    return model


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS, then those of the model's generation
    config and config (an int or a list), without repeats."""
    ids = [tokenizer.eos_token_id]
    for config in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(config, "eos_token_id", None)
        ids += value if isinstance(value, (list, tuple)) else [value]
    return list(dict.fromkeys(i for i in ids if i is not None))


def pick_device() -> torch.device:
    """This process's device: its own GPU when a launcher started one process per GPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a stage's ``precision``: ``bf16`` on any device (the CPU too, so a CPU
    run, CI's included, sees the numerics a GPU run has), ``auto`` bf16 on a GPU that supports it and
    none (fp32) elsewhere, ``fp32`` none. Master weights and the optimizer stay float32 either way."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def place_frozen(model: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """A model that is never trained: no gradients, eval mode, on ``device``. A view of a trained
    model (its adapter off) is not a module of its own and lives where the trained model does."""
    if not isinstance(model, torch.nn.Module):
        return model
    model.requires_grad_(False)
    return model.to(device).eval()
