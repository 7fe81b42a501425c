"""Which sampled responses a self-training round learns from: the selection rules of rejection
sampling (RAFT top-k, ReST thresholds) and the best-against-worst pairs of online DPO.

Inputs are a round's rewards (B,) and ``group_ids`` (B,), the prompt each response answers (as in
``alignops.algos.groups``: arbitrary ids, members need not be contiguous). Ties always go to the
response sampled first (the lower row), so a selection is a pure function of the round's samples.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["raft_keep", "rest_keep", "best_worst_pairs"]


def _check(rewards: Tensor, group_ids: Tensor) -> None:
    if rewards.dim() != 1 or rewards.shape != group_ids.shape:
        raise ValueError(f"rewards and group_ids must be 1-D and of one length, got {tuple(rewards.shape)} and {tuple(group_ids.shape)}")


def _groups(group_ids: Tensor) -> dict[int, list[int]]:
    """group id -> its rows, in row order."""
    members: dict[int, list[int]] = {}
    for row, g in enumerate(group_ids.tolist()):
        members.setdefault(g, []).append(row)
    return members


def raft_keep(rewards: Tensor, group_ids: Tensor, k: int, min_reward: float | None = None) -> Tensor:
    """RAFT (Dong et al. 2023, arXiv:2304.06767): per prompt, the ``k`` responses with the highest
    reward (ties: sampled first), of those with reward >= ``min_reward`` when it is given.

    Returns a (B,) bool mask of the kept rows."""
    _check(rewards, group_ids)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    keep = torch.zeros(rewards.shape, dtype=torch.bool)
    values = rewards.tolist()
    for rows in _groups(group_ids).values():
        eligible = [r for r in rows if min_reward is None or values[r] >= min_reward]
        # stable sort on -reward: equal rewards keep row order
        for r in sorted(eligible, key=lambda r: -values[r])[:k]:
            keep[r] = True
    return keep.to(rewards.device)


def rest_keep(rewards: Tensor, threshold: float) -> Tensor:
    """ReST (Gulcehre et al. 2023, arXiv:2308.08998), one Improve step: the responses of the Grow set
    with reward >= ``threshold`` (the filter F(x, y; tau) = 1[R(x, y) >= tau]). Returns a (B,) bool mask."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B,), got shape {tuple(rewards.shape)}")
    return rewards >= threshold


def best_worst_pairs(rewards: Tensor, group_ids: Tensor) -> tuple[list[tuple[int, int]], int]:
    """Per prompt, (the highest-reward row, the lowest-reward row) as (chosen, rejected): the pair
    iterative DPO takes from n scored samples (RLHFlow's recipe; with n = 2 it is OAIF's pair).
    Ties: the first-sampled best, the last-sampled worst. A prompt whose responses all have one
    reward gives no pair. Returns (pairs in group order of first appearance, prompts without a pair)."""
    _check(rewards, group_ids)
    values = rewards.tolist()
    pairs, ties = [], 0
    for rows in _groups(group_ids).values():
        best = max(rows, key=lambda r: (values[r], -r))
        worst = min(rows, key=lambda r: (values[r], -r))
        if values[best] == values[worst]:
            ties += 1
            continue
        pairs.append((best, worst))
    return pairs, ties
