import math

import torch
from torch.testing import assert_close

from alignops.algos import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    k1,
    k2,
    k3,
    kl_shaped_token_rewards,
)

LN2 = math.log(2)


def test_estimators_hand_computed():
    logp = torch.tensor([LN2, 0.0, -LN2])
    ref = torch.zeros(3)
    # d = ln 2, 0, -ln 2
    assert_close(k1(logp, ref), torch.tensor([LN2, 0.0, -LN2]))
    assert_close(k2(logp, ref), torch.tensor([0.5 * LN2**2, 0.0, 0.5 * LN2**2]))
    # k3 = e^-d + d - 1: 1/2 + ln 2 - 1 = 0.1931; 0; 2 - ln 2 - 1 = 0.3069
    assert_close(k3(logp, ref), torch.tensor([LN2 - 0.5, 0.0, 1 - LN2]))


def test_log_ratio_is_clamped():
    logp, ref = torch.tensor([50.0, -50.0]), torch.zeros(2)
    assert_close(k1(logp, ref), torch.tensor([20.0, -20.0]))
    # d = -20: e^20 - 21, finite
    assert_close(k3(logp, ref), torch.tensor([math.exp(-20) + 19, math.exp(20) - 21]))


def test_k1_and_k3_are_exact_in_expectation():
    # Under tokens sampled from pi, E[k1] = E[k3] = KL(pi || ref). Check by exact summation.
    pi = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    ref = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    kl = (pi * (pi / ref).log()).sum()
    for est in (k1, k3):
        assert_close((pi * est(pi.log(), ref.log())).sum(), kl)
    assert (k3(torch.randn(100), torch.randn(100)) >= 0).all()


def test_kl_shaped_token_rewards():
    scores = torch.tensor([1.0, 2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    out = kl_shaped_token_rewards(scores, kl, mask, beta=0.5)
    # -0.5 * KL everywhere valid, + R on the last valid token; masked -> 0
    assert_close(out, torch.tensor([[-0.05, -0.1, -0.15 + 1.0], [-0.2, -0.25 + 2.0, 0.0]]))


def test_adaptive_kl_controller():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    # KL 12: error = 12/6 - 1 = 1, clipped to 0.2; factor 1 + 0.2 * 256 / 10000 = 1.00512
    assert math.isclose(ctl.update(12.0, 256), 0.1 * 1.00512)
    # KL 3: error -0.5 -> -0.2; factor 0.99488
    assert math.isclose(ctl.update(3.0, 256), 0.1 * 1.00512 * 0.99488)
    # KL 6.6: error 0.1 (not clipped); factor 1 + 0.1 * 100 / 10000 = 1.001
    ctl = AdaptiveKLController(1.0, target=6.0, horizon=10000)
    assert math.isclose(ctl.update(6.6, 100), 1.001)


def test_fixed_kl_controller():
    ctl = FixedKLController(0.05)
    assert ctl.update(100.0, 1000) == 0.05 and ctl.value == 0.05


def test_registry():
    assert KL_ESTIMATORS.get("k3") is k3
