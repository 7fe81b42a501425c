"""Next-token log-probs and the SFT loss of a causal LM without its (batch, length, vocabulary)
logits: the base transformer's final hidden states, then the output projection fused with the
log-softmax, chunk by chunk.

On CUDA with ``liger-kernel`` installed (the ``gpu`` extra) the projection and cross-entropy run in
Liger Kernel's fused linear cross-entropy (Triton); elsewhere in ``alignops.algos.
linear_token_logprobs`` (plain PyTorch, chunked, custom backward). Entropies (rl's figures) always
take the PyTorch path, which computes them in the same pass.

A model whose logits are not exactly ``lm_head(last hidden state)`` (soft-capped, scaled) or whose
type is not known to be plain takes the ordinary ``model(...).logits`` path, so results never
depend on the path taken beyond float rounding.
"""

from __future__ import annotations

import functools

import torch

from alignops.algos import IGNORE_INDEX, entropy_from_logits, token_logprobs
from alignops.algos.linear_logprobs import DEFAULT_CHUNK_ELEMENTS, chunk_rows, linear_token_logprobs
from alignops.algos.sft import lm_loss_from_logprobs

CHUNK_ELEMENTS = DEFAULT_CHUNK_ELEMENTS  # logits per chunk of the PyTorch path (C positions x V)
# Causal LMs of transformers whose forward is ``lm_head(model(...).last_hidden_state)``, nothing after.
PLAIN_HEAD_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "mixtral", "phi3", "olmo", "olmo2"})


def split_head(model) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """(the base transformer, the output projection) of a causal LM whose logits are the plain
    projection of its last hidden state; None for any other model."""
    if getattr(getattr(model, "config", None), "model_type", None) not in PLAIN_HEAD_TYPES:
        return None
    if hasattr(model, "get_base_model"):  # a peft model: its base_model is peft's LoraModel, not the transformer
        model = model.get_base_model()
    base, head = model.base_model, model.get_output_embeddings()
    if hasattr(head.weight, "ds_id"):  # ZeRO-3 gathers a weight only inside its module's forward
        return None
    if base is model or not isinstance(head, torch.nn.Linear):
        return None
    return base, head


@functools.cache
def _liger():
    """Liger Kernel's fused linear cross-entropy, or None (not installed)."""
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError:
        return None
    return liger_fused_linear_cross_entropy


def fused_kernel(device: torch.device):
    """Liger's kernel where it runs (CUDA, installed), else None (the PyTorch chunked path)."""
    return _liger() if device.type == "cuda" and torch.cuda.is_available() else None


def _hidden(base, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def causal_token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                          temperature: float = 1.0, with_entropy: bool = False):
    """(logps (B, L-1) float32, entropy (B, L-1) or None): column t is the log-prob of
    ``labels[:, t+1]`` under ``softmax(z_t / T)``, 0 where the label is ``IGNORE_INDEX``.
    Differentiable; the entropy carries no gradient."""
    parts = split_head(model)
    if parts is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
        if temperature != 1.0:
            logits = logits / temperature
        entropy = None
        if with_entropy:
            with torch.no_grad():
                entropy = entropy_from_logits(logits.detach())
        return token_logprobs(logits, labels[:, 1:]), entropy
    base, head = parts
    hidden = _hidden(base, input_ids, attention_mask)[:, :-1]
    targets = labels[:, 1:]
    kernel = None if with_entropy else fused_kernel(hidden.device)
    if kernel is None:
        return linear_token_logprobs(hidden, head.weight, targets, head.bias, temperature=temperature,
                                     chunk_size=chunk_rows(head.weight.shape[0], CHUNK_ELEMENTS), with_entropy=with_entropy)
    flat = hidden.reshape(-1, hidden.shape[-1])
    if temperature != 1.0:
        flat = flat / temperature  # (h / T) W^T = z / T; a bias would need the same scaling
    bias = head.bias / temperature if head.bias is not None and temperature != 1.0 else head.bias
    nll = kernel(flat, head.weight, targets.reshape(-1), bias, ignore_index=IGNORE_INDEX, reduction="none",
                 accum_dtype=torch.float32)
    return (-nll.float()).view(targets.shape), None


def sft_loss(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """``alignops.algos.masked_lm_loss`` of the model's logits, computed without them."""
    parts = split_head(model)
    kernel = fused_kernel(input_ids.device) if parts is not None and weights is None else None
    if kernel is None:
        logps, _ = causal_token_logprobs(model, input_ids, attention_mask, labels)
        return lm_loss_from_logprobs(logps, labels[:, 1:] != IGNORE_INDEX, weights)
    # Liger's summed reduction computes the gradients in the forward pass: no recomputation
    base, head = parts
    hidden = _hidden(base, input_ids, attention_mask)[:, :-1]
    targets = labels[:, 1:]
    total = kernel(hidden.reshape(-1, hidden.shape[-1]), head.weight, targets.reshape(-1), head.bias,
                   ignore_index=IGNORE_INDEX, reduction="sum", accum_dtype=torch.float32)
    return total.float() / (targets != IGNORE_INDEX).sum().clamp(min=1)
