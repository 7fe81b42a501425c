"""Reward-model losses: pairwise Bradley-Terry and K-wise Plackett-Luce.

References: InstructGPT (arXiv:2203.02155), Ziegler et al. (arXiv:1909.08593);
Zhu, Jiao, Jordan, "Principled RLHF from pairwise or K-wise comparisons" (arXiv:2301.11270).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .registry import Registry

__all__ = ["REWARD_LOSSES", "RewardLossTraits", "bradley_terry", "plackett_luce"]


@dataclass(frozen=True)
class RewardLossTraits:
    """whole_rankings: the loss takes (B, K) score tables with a mask; else (better, worse, margin)
    score pairs."""

    whole_rankings: bool


REWARD_LOSSES: Registry[Callable[..., Tensor]] = Registry("reward loss")


@REWARD_LOSSES.register("bradley_terry", traits=RewardLossTraits(whole_rankings=False))
def bradley_terry(chosen: Tensor, rejected: Tensor, margin: Optional[Tensor] = None) -> Tensor:
    """Pairwise Bradley-Terry loss ``-log sigmoid(r_c - r_r - m)`` (arXiv:2203.02155).

    Args:
        chosen: (B,) reward of the preferred response.
        rejected: (B,) reward of the other response.
        margin: optional (B,) required gap (Llama 2 style); None means 0.

    Returns:
        (B,) per-pair loss; the trainer averages.
    """
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)  # logsigmoid is stable for large |diff|


@REWARD_LOSSES.register("plackett_luce", traits=RewardLossTraits(whole_rankings=True))
def plackett_luce(scores: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Plackett-Luce negative log-likelihood of a ranking (arXiv:2301.11270).

    ``loss = -sum_k log( exp s_k / sum_{j >= k, valid} exp s_j )`` over valid k. The last valid
    term is log 1 = 0; with K = 2 this is exactly Bradley-Terry.

    Args:
        scores: (B, K) rewards ordered best to worst.
        mask: (B, K) bool, True for real responses (rows may rank fewer than K); None = all.
            Masked entries are skipped wherever they sit, and their values are ignored.

    Returns:
        (B,) per-ranking loss (0 for a row with fewer than two valid entries).
    """
    B, K = scores.shape
    valid = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.bool()
    s = torch.where(valid, scores, torch.zeros_like(scores))  # NaN padding must not leak
    idx = torch.arange(K, device=scores.device)
    later = idx.unsqueeze(0) >= idx.unsqueeze(1)  # (K, K): later[k, j] = j >= k
    # Row k of the (B, K, K) table holds the candidates still in the race at step k. The
    # diagonal is always kept so no row is all -inf: that keeps logsumexp and its gradient
    # finite for invalid k, whose terms are dropped below anyway.
    keep = (later.unsqueeze(0) & valid.unsqueeze(1)) | torch.eye(K, dtype=torch.bool, device=scores.device)
    table = s.unsqueeze(1).expand(B, K, K).masked_fill(~keep, float("-inf"))
    log_probs = s - torch.logsumexp(table, dim=-1)  # (B, K)
    return -torch.where(valid, log_probs, torch.zeros_like(log_probs)).sum(-1)
