"""Token log-probabilities, masked statistics and entropy.

Every function here is pure tensor math. Shapes: B = batch, T = tokens, V = vocabulary.
Masks are bool or 0/1 tensors; values at masked positions never reach a result (they may even
be NaN), which is what makes padding harmless everywhere downstream.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .registry import UnknownNameError

__all__ = [
    "IGNORE_INDEX",
    "token_logprobs",
    "next_token_logprobs",
    "sequence_logprob",
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "entropy_from_logits",
    "last_valid_index",
    "place_on_last_token",
]

IGNORE_INDEX = -100
"""Label value of tokens that carry no loss (the Hugging Face / PyTorch convention)."""

SEQUENCE_LOGPROB_MODES = ("mean", "sum")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # bf16/fp16 log-softmax loses ~2-3 digits; float64 is kept for gradient checks.
    return torch.float64 if dtype == torch.float64 else torch.float32


def token_logprobs(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Log-probability of each label under its own position's logits (no shifting).

    Args:
        logits: (B, T, V) unnormalised scores, any float dtype.
        labels: (B, T) token ids; ``ignore_index`` marks positions without a label.

    Returns:
        (B, T) ``log softmax(logits)[b, t, labels[b, t]]`` in float32 (float64 if the logits are
        float64), exactly 0 where ``labels == ignore_index``.

    Memory: works one batch row at a time as ``gather(logits) - logsumexp(logits)``, so beyond
    the logits themselves only one row's (T, V) float32 temporary is alive, never a full
    (B, T, V) log-softmax copy (the trick TRL's ``selective_log_softmax`` uses).
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    valid = labels != ignore_index
    # -100 is not a valid gather index; any in-range id works since the result is masked.
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
    dtype = _compute_dtype(logits.dtype)
    rows = []
    for row_logits, row_labels in zip(logits, safe_labels):
        row = row_logits.to(dtype)
        picked = row.gather(-1, row_labels.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(row, dim=-1))
    if not rows:  # B == 0
        return torch.zeros(labels.shape, dtype=dtype, device=logits.device)
    out = torch.stack(rows)
    return torch.where(valid, out, torch.zeros_like(out))


def next_token_logprobs(
    logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX
) -> Tuple[Tensor, Tensor]:
    """Causal-LM alignment: ``logits[:, t]`` predicts ``labels[:, t + 1]``.

    Args:
        logits: (B, T, V) from a causal LM run on ``input_ids``.
        labels: (B, T), usually ``input_ids`` with prompt/padding positions set to ``ignore_index``.

    Returns:
        ``(token_logps (B, T-1), mask (B, T-1) bool)``; token_logps is 0 where mask is False.
    """
    shifted_labels = labels[:, 1:]
    logps = token_logprobs(logits[:, :-1], shifted_labels, ignore_index)
    return logps, shifted_labels != ignore_index


def masked_sum(values: Tensor, mask: Tensor, dim: Optional[int] = None) -> Tensor:
    """Sum of ``values`` where ``mask`` is set, over ``dim`` (all elements if None)."""
    kept = torch.where(mask.bool(), values, torch.zeros_like(values))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(values: Tensor, mask: Tensor, dim: Optional[int] = None) -> Tensor:
    """Mean of ``values`` over valid entries (along ``dim``, or all of them).

    A slice with no valid entry gives 0 rather than NaN (0/0), so an empty micro-batch
    contributes nothing instead of poisoning the step.
    """
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1).to(values.dtype)


def masked_var(values: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of all valid entries (scalar).

    ``unbiased=True`` divides by n - 1 (verl and TRL ``masked_var``); False divides by n
    (OpenRLHF's REINFORCE++ normalisation). A single valid entry has variance 0.
    """
    m = mask.bool()
    mean = masked_mean(values, m)
    centered = torch.where(m, values - mean, torch.zeros_like(values))
    n = m.sum()
    denom = (n - 1) if unbiased else n
    return centered.pow(2).sum() / denom.clamp(min=1).to(values.dtype)


def masked_whiten(
    values: Tensor,
    mask: Tensor,
    shift_mean: bool = True,
    *,
    unbiased: bool = True,
    eps: float = 1e-8,
) -> Tensor:
    """Normalise ``values`` to zero mean, unit variance over the valid entries.

    Args:
        values: any shape, typically (B, T) advantages.
        mask: same shape.
        shift_mean: if False the mean is added back (only the scale is normalised), as in
            TRL/verl ``masked_whiten``.
        unbiased: n - 1 variance (verl, TRL) or n (OpenRLHF).
        eps: added to the variance before the reciprocal square root.

    Returns:
        Same shape; 0 at masked positions.
    """
    m = mask.bool()
    mean = masked_mean(values, m)
    var = masked_var(values, m, unbiased=unbiased)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(m, whitened, torch.zeros_like(whitened))


def sequence_logprob(token_logps: Tensor, mask: Tensor, mode: str = "sum") -> Tensor:
    """Reduce per-token log-probs to one number per sequence.

    Args:
        token_logps: (B, T).
        mask: (B, T) valid (response) tokens.
        mode: ``"sum"`` = log pi(y|x) (DPO, IPO, KTO); ``"mean"`` = length-normalised
            (SimPO, ORPO, RRHF). An empty sequence gives 0.

    Returns:
        (B,)
    """
    if mode == "sum":
        return masked_sum(token_logps, mask, dim=-1)
    if mode == "mean":
        return masked_mean(token_logps, mask, dim=-1)
    raise UnknownNameError("sequence log-prob mode", mode, SEQUENCE_LOGPROB_MODES)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the softmax distribution at each position.

    Args:
        logits: (B, T, V).

    Returns:
        (B, T) ``H = logsumexp(z) - sum_v softmax(z)_v z_v`` in float32 (float64 for float64
        input). Computed one batch row at a time to bound the float32 temporaries.
    """
    dtype = _compute_dtype(logits.dtype)
    rows = []
    for row_logits in logits:
        row = row_logits.to(dtype)
        probs = torch.softmax(row, dim=-1)
        # -inf logits (banned tokens) have p = 0 and must add 0, not 0 * -inf = NaN.
        p_times_z = torch.where(probs > 0, probs * row, torch.zeros_like(row))
        rows.append(torch.logsumexp(row, dim=-1) - p_times_z.sum(-1))
    if not rows:
        return torch.zeros(logits.shape[:-1], dtype=dtype, device=logits.device)
    return torch.stack(rows)


def last_valid_index(mask: Tensor) -> Tensor:
    """(B,) index of the last valid token in each row of a (B, T) mask (-1 for an empty row)."""
    m = mask.bool()
    T = m.shape[-1]
    positions = torch.arange(T, device=m.device).expand_as(m)
    return torch.where(m, positions, torch.full_like(positions, -1)).amax(dim=-1)


def place_on_last_token(values: Tensor, mask: Tensor) -> Tensor:
    """Scatter (B,) per-sequence values onto the last valid token of a (B, T) mask.

    Returns (B, T) zeros except ``values[b]`` at ``last_valid_index(mask)[b]``; an empty row
    stays all zero. This is where an outcome reward R lives in token-level RL.
    """
    last = last_valid_index(mask)
    out = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
    has_token = last >= 0
    return out.scatter(-1, last.clamp(min=0).unsqueeze(-1), torch.where(has_token, values, 0).unsqueeze(-1))
