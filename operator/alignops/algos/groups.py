"""Per-group statistics for group-relative estimators (GRPO, RLOO, ...).

A group is the n responses sampled for one prompt; ``group_ids`` (B,) says which group each
row belongs to. Ids are arbitrary integers and group members need not be contiguous.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

__all__ = ["GroupStats", "contiguous_group_ids", "group_stats", "group_min_max"]


class GroupStats(NamedTuple):
    """Per-row statistics of the row's group, each (B,)."""

    mean: Tensor
    std: Tensor
    count: Tensor


def contiguous_group_ids(batch_size: int, group_size: int, device: Optional[torch.device] = None) -> Tensor:
    """Group ids for rewards laid out as (G, n) flattened row-major: ``[0]*n + [1]*n + ...``."""
    if group_size <= 0 or batch_size % group_size:
        raise ValueError(f"batch size {batch_size} is not a multiple of group size {group_size}")
    return torch.arange(batch_size, device=device) // group_size


def _inverse(group_ids: Tensor) -> "tuple[Tensor, int]":
    if group_ids.dim() != 1:
        raise ValueError(f"group_ids must be 1-D (B,), got shape {tuple(group_ids.shape)}")
    _, inverse = torch.unique(group_ids, return_inverse=True)
    return inverse, int(inverse.max().item()) + 1 if inverse.numel() else 0


def group_stats(values: Tensor, group_ids: Tensor, unbiased: bool = True) -> GroupStats:
    """Mean, standard deviation and size of each row's group, broadcast back to rows.

    Args:
        values: (B,) e.g. scalar rewards.
        group_ids: (B,) integer group id per row.
        unbiased: n - 1 standard deviation (torch.std default; verl and TRL GRPO) or n.
            A group of one has std 0.

    Returns:
        :class:`GroupStats` of (B,) tensors.
    """
    if values.shape != group_ids.shape:
        raise ValueError(f"values {tuple(values.shape)} and group_ids {tuple(group_ids.shape)} disagree")
    if not values.is_floating_point():  # e.g. 0/1 verifier rewards as a long tensor
        values = values.float()
    inverse, G = _inverse(group_ids)
    counts = torch.bincount(inverse, minlength=G).to(values.dtype)
    sums = torch.zeros(G, dtype=values.dtype, device=values.device).index_add(0, inverse, values)
    mean = (sums / counts)[inverse]
    sq = torch.zeros(G, dtype=values.dtype, device=values.device).index_add(0, inverse, (values - mean) ** 2)
    denom = (counts - 1).clamp(min=1) if unbiased else counts
    std = (sq / denom).sqrt()[inverse]
    return GroupStats(mean, std, counts[inverse])


def group_min_max(values: Tensor, group_ids: Tensor) -> "tuple[Tensor, Tensor]":
    """(B,) minimum and maximum of each row's group."""
    inverse, G = _inverse(group_ids)
    empty = torch.zeros(G, dtype=values.dtype, device=values.device)
    gmin = empty.scatter_reduce(0, inverse, values, reduce="amin", include_self=False)
    gmax = empty.scatter_reduce(0, inverse, values, reduce="amax", include_self=False)
    return gmin[inverse], gmax[inverse]
