import torch
from torch.testing import assert_close

from alignops.algos import best_response_index, rrhf


def test_rrhf_hand_computed():
    p = torch.tensor([[-1.0, -2.0, -0.5]])
    r = torch.tensor([[1.0, 2.0, 0.0]])
    nll = torch.tensor([0.7])
    # Pairs (worse i, better j) with r_i < r_j:
    #   (0, 1): max(0, -1 - -2) = 1
    #   (2, 0): max(0, -0.5 - -1) = 0.5
    #   (2, 1): max(0, -0.5 - -2) = 1.5
    # rank = 3, plus best_nll 0.7
    assert_close(rrhf(p, r, None, nll), torch.tensor([3.7]))
    assert_close(rrhf(p, r, None, nll, rank_weight=2.0), torch.tensor([6.7]))


def test_rrhf_mask_and_ties():
    p = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -2.0, -0.5]])
    r = torch.tensor([[1.0, 2.0, 0.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    # row 0: only pair (0, 1) remains -> 1; row 1: all tied -> no ranking term.
    assert_close(rrhf(p, r, mask, torch.zeros(2)), torch.tensor([1.0, 0.0]))


def test_rrhf_correct_order_has_no_rank_loss():
    p = torch.tensor([[-0.1, -0.2, -0.3]])
    r = torch.tensor([[3.0, 2.0, 1.0]])  # policy already ranks like the reward
    assert_close(rrhf(p, r, None, torch.zeros(1)), torch.zeros(1))


def test_best_response_index():
    r = torch.tensor([[1.0, 2.0, 0.0], [1.0, 5.0, 0.0]])
    assert best_response_index(r).tolist() == [1, 1]
    assert best_response_index(r, torch.tensor([[True] * 3, [True, False, True]])).tolist() == [1, 0]
