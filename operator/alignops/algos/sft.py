"""Supervised fine-tuning loss (responses only), with OpenChat's C-RLFT weighting.

References: InstructGPT SFT (arXiv:2203.02155); OpenChat C-RLFT (arXiv:2309.11235).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from .logprobs import IGNORE_INDEX, next_token_logprobs

__all__ = ["masked_lm_loss", "lm_loss_from_logprobs"]


def masked_lm_loss(
    logits: Tensor,
    labels: Tensor,
    weights: Optional[Tensor] = None,
    *,
    num_tokens: Union[int, float, Tensor, None] = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Next-token cross-entropy averaged over the labelled (response) tokens of the batch.

    ``logits[:, t]`` predicts ``labels[:, t + 1]``; the shift happens here, so pass the model's
    logits and labels aligned with ``input_ids``, prompt and padding set to ``ignore_index``.

    Args:
        logits: (B, T, V).
        labels: (B, T) with ``ignore_index`` on positions that carry no loss.
        weights: optional (B,) per-example weights (C-RLFT, arXiv:2309.11235: each data
            source's class reward, e.g. 1.0 for expert data and 0.1 for sub-optimal data), or
            (B, T) per-token weights aligned with ``labels`` (packed rows of several examples). The
            loss becomes ``sum_{b,t} w_b * nll_{b,t} / num_tokens``: weights scale an example's
            contribution and are NOT renormalised (the C-RLFT objective is E[w * log pi]), so
            all-ones weights give exactly the unweighted loss.
        num_tokens: the normaliser; defaults to this batch's labelled-token count. Pass the
            global count when the batch is one of several micro-batches/ranks so that summing
            the shard losses gives the whole-batch loss.
        ignore_index: label value meaning "no loss here".

    Returns:
        Scalar loss (0 when there is no labelled token).
    """
    token_logps, mask = next_token_logprobs(logits, labels, ignore_index)
    return lm_loss_from_logprobs(token_logps, mask, weights, num_tokens=num_tokens)


def lm_loss_from_logprobs(
    token_logps: Tensor,
    mask: Tensor,
    weights: Optional[Tensor] = None,
    *,
    num_tokens: Union[int, float, Tensor, None] = None,
) -> Tensor:
    """``masked_lm_loss`` from next-token log-probs already gathered (the fused/chunked path).

    Args:
        token_logps: (B, T) log-probs of each labelled next token, 0 where ``mask`` is False.
        mask: (B, T) labelled positions.
        weights, num_tokens: as in ``masked_lm_loss``.

    Returns:
        Scalar ``-sum_{b,t} w_b * logp_{b,t} / num_tokens`` (0 when there is no labelled token).
    """
    nll = -token_logps
    if weights is not None:
        if weights.dim() == 2 and weights.shape[0] == token_logps.shape[0] and weights.shape[1] == token_logps.shape[1] + 1:
            nll = nll * weights[:, 1:].to(nll.dtype)  # per token, aligned with the labels (packed rows)
        elif weights.shape == (token_logps.shape[0],):
            nll = nll * weights.to(nll.dtype).unsqueeze(-1)
        else:
            raise ValueError(f"weights must have shape ({token_logps.shape[0]},) or ({token_logps.shape[0]}, "
                             f"{token_logps.shape[1] + 1}) (aligned with the labels), got {tuple(weights.shape)}")
    if num_tokens is None:
        num_tokens = mask.sum()
    denom = torch.as_tensor(num_tokens, dtype=nll.dtype, device=nll.device).clamp(min=1)
    return torch.where(mask.bool(), nll, torch.zeros_like(nll)).sum() / denom
