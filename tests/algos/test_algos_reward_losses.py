import math

import torch
from torch.testing import assert_close

from alignops.algos import REWARD_LOSSES, bradley_terry, plackett_luce

E = math.e


def test_bradley_terry_hand_computed():
    # -log sigmoid(x) = log(1 + e^-x): x = 2 -> log(1 + e^-2); x = 0 -> log 2.
    out = bradley_terry(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert_close(out, torch.tensor([math.log(1 + E**-2), math.log(2)]))


def test_bradley_terry_margin():
    # x = c - r - m: (2 - 0 - 1) = 1 and (0 - 0 - (-1)) = 1 -> log(1 + e^-1) twice.
    out = bradley_terry(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, -1.0]))
    assert_close(out, torch.full((2,), math.log(1 + E**-1)))


def test_bradley_terry_is_stable_for_large_gaps():
    out = bradley_terry(torch.tensor([-200.0, 200.0]), torch.tensor([0.0, 0.0]))
    assert_close(out, torch.tensor([200.0, 0.0]))  # log(1 + e^200) ~ 200, no inf


def test_plackett_luce_equal_scores_is_log_k_factorial():
    # K = 3, all scores 0: -(log 1/3 + log 1/2 + log 1/1) = log 6.
    assert_close(plackett_luce(torch.zeros(1, 3)), torch.tensor([math.log(6)]))


def test_plackett_luce_hand_computed():
    # scores 2 > 1 > 0: [log(e^2 + e + 1) - 2] + [log(e + 1) - 1] + 0
    expected = math.log(E**2 + E + 1) - 2 + math.log(E + 1) - 1
    assert_close(plackett_luce(torch.tensor([[2.0, 1.0, 0.0]])), torch.tensor([expected]))


def test_plackett_luce_with_two_entries_is_bradley_terry():
    torch.manual_seed(0)
    s = torch.randn(8, 2)
    assert_close(plackett_luce(s), bradley_terry(s[:, 0], s[:, 1]))


def test_plackett_luce_mask_skips_entries_wherever_they_are():
    scores = torch.tensor([[1.5, -0.5, float("nan")], [1.5, 123.0, -0.5]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, False, True]])
    out = plackett_luce(scores, mask)
    # Both rows reduce to the pair (1.5, -0.5): log(1 + e^-2).
    assert_close(out, torch.full((2,), math.log(1 + E**-2)))
    out.sum().backward()
    assert torch.isfinite(scores.grad).all()
    assert scores.grad[0, 2] == 0 and scores.grad[1, 1] == 0  # padding gets no gradient


def test_plackett_luce_single_valid_entry_is_zero():
    out = plackett_luce(torch.tensor([[3.0, 1.0]]), torch.tensor([[True, False]]))
    assert out.item() == 0.0


def test_registry_lookup():
    assert REWARD_LOSSES.get("bradley_terry") is bradley_terry
    assert REWARD_LOSSES.get("plackett_luce") is plackett_luce
