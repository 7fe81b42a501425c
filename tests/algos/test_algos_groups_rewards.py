import math

import torch
from torch.testing import assert_close

from alignops.algos import group_min_max, group_stats, kimi_length_reward


def test_group_stats():
    # groups by id: 0 -> [1, 3] (mean 2, unbiased std sqrt 2), 1 -> [2, 6] (mean 4, std 2 sqrt 2)
    st = group_stats(torch.tensor([1.0, 2.0, 3.0, 6.0]), torch.tensor([0, 1, 0, 1]))
    assert_close(st.mean, torch.tensor([2.0, 4.0, 2.0, 4.0]))
    r2 = math.sqrt(2)
    assert_close(st.std, torch.tensor([r2, 2 * r2, r2, 2 * r2]))
    assert st.count.tolist() == [2, 2, 2, 2]
    # integer rewards (verifier 0/1) are accepted and averaged as floats: [1, 0, 0, 1] -> mean 0.5
    assert_close(group_stats(torch.tensor([1, 0, 0, 1]), torch.zeros(4, dtype=torch.long)).mean, torch.full((4,), 0.5))
    # population std: 1 and 2
    assert_close(group_stats(torch.tensor([1.0, 2.0, 3.0, 6.0]), torch.tensor([0, 1, 0, 1]), unbiased=False).std,
                 torch.tensor([1.0, 2.0, 1.0, 2.0]))


def test_group_min_max():
    lo, hi = group_min_max(torch.tensor([5.0, -1.0, 3.0, 2.0]), torch.tensor([1, 0, 1, 0]))
    assert lo.tolist() == [3.0, -1.0, 3.0, -1.0] and hi.tolist() == [5.0, 2.0, 5.0, 2.0]


def test_kimi_length_reward():
    lengths = torch.tensor([10, 20, 30, 10, 20, 30, 7, 7])
    correct = torch.tensor([True, True, False, False, True, False, True, False])
    gid = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    # group 0/1: lambda = 0.5 - (len - 10) / 20 = [0.5, 0, -0.5]
    # correct -> lambda; wrong -> min(0, lambda): the short wrong answer in group 1 gets 0.
    # group 2: equal lengths -> no length signal, 0.
    out = kimi_length_reward(lengths, correct, gid)
    assert_close(out, torch.tensor([0.5, 0.0, -0.5, 0.0, 0.0, -0.5, 0.0, 0.0]))
