"""The selection rules of the self-training stages, on hand-computed cases: RAFT's top-k per prompt,
ReST's threshold per Improve step, and online DPO's best-against-worst pairs."""

import pytest
import torch

from alignops.algos import best_worst_pairs, raft_keep, rest_keep

# Two prompts (groups 7 and 3), responses interleaved to show that members need not be contiguous:
#   row:    0    1    2    3    4    5    6
#   group:  7    3    7    7    3    3    7
#   reward: 0.2  1.0  0.9  0.9  0.0  1.0  0.5
REWARDS = torch.tensor([0.2, 1.0, 0.9, 0.9, 0.0, 1.0, 0.5])
GROUPS = torch.tensor([7, 3, 7, 7, 3, 3, 7])


def rows(mask: torch.Tensor) -> list[int]:
    return mask.nonzero().flatten().tolist()


def test_raft_keeps_the_best_k_of_each_prompt_ties_to_the_first_sampled():
    # group 7 sorted by reward: rows 2 (0.9), 3 (0.9, sampled later), 6 (0.5), 0 (0.2)
    # group 3 sorted by reward: rows 1 (1.0), 5 (1.0, later), 4 (0.0)
    assert rows(raft_keep(REWARDS, GROUPS, k=1)) == [1, 2]
    assert rows(raft_keep(REWARDS, GROUPS, k=2)) == [1, 2, 3, 5]
    assert rows(raft_keep(REWARDS, GROUPS, k=3)) == [1, 2, 3, 4, 5, 6]
    # k larger than a group keeps all of it
    assert rows(raft_keep(REWARDS, GROUPS, k=10)) == list(range(7))


def test_raft_min_reward_drops_low_responses_before_the_top_k():
    # >= 0.95: only rows 1 and 5 of group 3 qualify; group 7 keeps nothing
    assert rows(raft_keep(REWARDS, GROUPS, k=1, min_reward=0.95)) == [1]
    assert rows(raft_keep(REWARDS, GROUPS, k=4, min_reward=0.95)) == [1, 5]
    # >= 0.5: group 7 has rows 2, 3, 6 eligible; k=2 keeps 2 and 3; group 3 keeps 1 and 5
    assert rows(raft_keep(REWARDS, GROUPS, k=2, min_reward=0.5)) == [1, 2, 3, 5]


def test_rest_keeps_what_reaches_each_rising_threshold():
    # Improve steps with thresholds 0.5, 0.9, 1.0 on the same Grow set: each a subset of the last
    kept = [rows(rest_keep(REWARDS, tau)) for tau in (0.5, 0.9, 1.0)]
    assert kept == [[1, 2, 3, 5, 6], [1, 2, 3, 5], [1, 5]]
    assert rows(rest_keep(REWARDS, 1.5)) == []


def test_best_worst_pairs_and_ties():
    # group 7 (first seen): best row 2 (0.9, first of the tie with 3), worst row 0 (0.2)
    # group 3: best row 1 (1.0, first of the tie with 5), worst row 4 (0.0)
    pairs, ties = best_worst_pairs(REWARDS, GROUPS)
    assert pairs == [(2, 0), (1, 4)] and ties == 0
    # a prompt whose responses all score the same gives no pair; equal worsts: the last sampled
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 1, 1, 1, 1])
    pairs, ties = best_worst_pairs(rewards, groups)
    assert pairs == [(3, 5)] and ties == 1


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="one length"):
        raft_keep(REWARDS, GROUPS[:3], k=1)
    with pytest.raises(ValueError, match="k must be"):
        raft_keep(REWARDS, GROUPS, k=0)
