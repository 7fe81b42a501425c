"""Ranking losses over K responses per prompt.

Reference: RRHF (Yuan et al., arXiv:2304.05302).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .registry import Registry

__all__ = ["RANKING_LOSSES", "rrhf", "best_response_index"]

RANKING_LOSSES: Registry = Registry("ranking loss")


@RANKING_LOSSES.register("rrhf")
def rrhf(
    length_normalised_logps: Tensor,
    rewards: Tensor,
    mask: Optional[Tensor],
    best_nll: Tensor,
    *,
    rank_weight: float = 1.0,
) -> Tensor:
    """RRHF: hinge ranking loss on length-normalised log-probs plus SFT on the best response.

    ``loss = rank_weight * sum_{i,j valid, r_i < r_j} max(0, p_i - p_j) + best_nll``.
    Ties in reward give no ranking term.

    Args:
        length_normalised_logps: (B, K) p_i = log pi(y_i | x) / |y_i|.
        rewards: (B, K) r_i.
        mask: (B, K) bool, True for real responses; None = all valid.
        best_nll: (B,) cross-entropy of the highest-reward response (see
            :func:`best_response_index`); mean token NLL in the paper's code.
        rank_weight: weight of the ranking term (1 in the paper's equation).

    Returns:
        (B,) per-prompt loss.
    """
    p, r = length_normalised_logps, rewards
    valid = torch.ones_like(p, dtype=torch.bool) if mask is None else mask.bool()
    # pair[b, i, j]: response i is worse than j, and both are real responses.
    pair = (r.unsqueeze(-1) < r.unsqueeze(-2)) & valid.unsqueeze(-1) & valid.unsqueeze(-2)
    hinge = (p.unsqueeze(-1) - p.unsqueeze(-2)).clamp(min=0)
    rank = torch.where(pair, hinge, torch.zeros_like(hinge)).sum(dim=(-1, -2))
    return rank_weight * rank + best_nll


def best_response_index(rewards: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """(B,) index of the highest-reward valid response per row (first one on ties)."""
    if mask is not None:
        rewards = rewards.masked_fill(~mask.bool(), float("-inf"))
    return rewards.argmax(dim=-1)
