"""Reduce a (B, T) per-token loss matrix to the scalar that is back-propagated.

The normalisers are explicit so that a batch split across ranks / micro-batches gives the same
gradient as the whole batch: aggregate each shard with the *global* ``num_global_tokens`` /
``num_global_seqs`` and sum (all-reduce) the shard results. Left to default, they are this
batch's own counts, which is only right when the batch is the whole step.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import Tensor

from .logprobs import masked_mean, masked_sum
from .registry import Registry

__all__ = ["AGGREGATION_MODES", "aggregate_loss"]

Number = Union[int, float, Tensor]
AGGREGATION_MODES: Registry[Callable[..., Tensor]] = Registry("loss aggregation mode")


def _as(x: Number, like: Tensor) -> Tensor:
    return torch.as_tensor(x, dtype=like.dtype, device=like.device)


@AGGREGATION_MODES.register("token_mean")
def _token_mean(loss_mat, mask, num_tokens, num_seqs, max_len):
    # Every valid token of the global batch weighs the same (DAPO, verl "token-mean").
    denom = mask.bool().sum() if num_tokens is None else num_tokens
    return masked_sum(loss_mat, mask) / _as(denom, loss_mat).clamp(min=1)


@AGGREGATION_MODES.register("seq_mean_token_mean")
def _seq_mean_token_mean(loss_mat, mask, num_tokens, num_seqs, max_len):
    # Original GRPO: mean over each sequence's tokens, then mean over sequences.
    denom = loss_mat.shape[0] if num_seqs is None else num_seqs
    return masked_mean(loss_mat, mask, dim=-1).sum() / _as(denom, loss_mat).clamp(min=1)


@AGGREGATION_MODES.register("seq_mean_token_sum")
def _seq_mean_token_sum(loss_mat, mask, num_tokens, num_seqs, max_len):
    denom = loss_mat.shape[0] if num_seqs is None else num_seqs
    return masked_sum(loss_mat, mask) / _as(denom, loss_mat).clamp(min=1)


@AGGREGATION_MODES.register("seq_mean_token_sum_norm")
def _seq_mean_token_sum_norm(loss_mat, mask, num_tokens, num_seqs, max_len):
    # Dr. GRPO: a constant length normaliser removes the 1/|o_i| length bias.
    if max_len is None:
        raise ValueError("loss aggregation mode 'seq_mean_token_sum_norm' needs max_len")
    denom = loss_mat.shape[0] if num_seqs is None else num_seqs
    return masked_sum(loss_mat, mask) / (_as(denom, loss_mat).clamp(min=1) * _as(max_len, loss_mat))


def aggregate_loss(
    loss_mat: Tensor,
    mask: Tensor,
    mode: str,
    *,
    num_global_tokens: Optional[Number] = None,
    num_global_seqs: Optional[Number] = None,
    max_len: Optional[Number] = None,
) -> Tensor:
    """Aggregate a per-token loss into a scalar.

    Modes (n_i = valid tokens of sequence i, N = ``num_global_tokens``,
    S = ``num_global_seqs``, L = ``max_len``):

    * ``token_mean``: ``sum_{i,t} l_it / N``.
    * ``seq_mean_token_mean``: ``sum_i (sum_t l_it / n_i) / S`` (a sequence without valid
      tokens contributes 0).
    * ``seq_mean_token_sum``: ``sum_{i,t} l_it / S``.
    * ``seq_mean_token_sum_norm``: ``sum_{i,t} l_it / (S * L)`` (Dr. GRPO, arXiv:2503.20783).
      L is required and should stay constant over training (e.g. the generation limit). verl's
      mode of the same name divides by L only (no 1/S), i.e. S times our value.

    Args:
        loss_mat: (B, T) per-token loss.
        mask: (B, T) valid tokens.
        mode: one of ``AGGREGATION_MODES.names()``; unknown -> ``UnknownNameError``.
        num_global_tokens: N; default this batch's valid-token count.
        num_global_seqs: S; default B (rows of this batch, empty ones included).
        max_len: L, for ``seq_mean_token_sum_norm``.

    Returns:
        Scalar tensor.
    """
    fn = AGGREGATION_MODES.get(mode)
    return fn(loss_mat, mask, num_global_tokens, num_global_seqs, max_len)
