"""Reward shaping that is not a KL term.

Reference: Kimi k1.5 (arXiv:2501.12599), section 2.3.3 "length penalty".
"""

from __future__ import annotations

import torch
from torch import Tensor

from .groups import group_min_max

__all__ = ["kimi_length_reward"]


def kimi_length_reward(lengths: Tensor, correct: Tensor, group_ids: Tensor) -> Tensor:
    """Kimi k1.5 length reward, computed within each prompt's group of responses.

    ``lambda_i = 0.5 - (len_i - min_len) / (max_len - min_len)``; a correct response gets
    ``lambda_i``, a wrong one ``min(0, lambda_i)`` (short wrong answers are not rewarded).
    When every response in a group has the same length the term is 0 (no length signal).

    Args:
        lengths: (B,) response lengths in tokens.
        correct: (B,) bool.
        group_ids: (B,) group (prompt) id per row.

    Returns:
        (B,) float reward, in [-0.5, 0.5]; add it (weighted) to the task reward.
    """
    lengths = lengths.to(torch.float32) if not lengths.is_floating_point() else lengths
    lo, hi = group_min_max(lengths, group_ids)
    span = hi - lo
    lam = torch.where(span > 0, 0.5 - (lengths - lo) / span.clamp(min=1e-12), torch.zeros_like(lengths))
    return torch.where(correct.bool(), lam, lam.clamp(max=0))
