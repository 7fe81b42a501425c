import dataclasses
import math

import pytest
import torch
from torch.testing import assert_close

from alignops.algos import (
    PREFERENCE_LOSSES,
    KTOInputs,
    PreferenceInputs,
    PreferenceOptions,
    cdpo,
    dpo,
    ipo,
    kto,
    kto_reference_point,
    orpo,
    simpo,
)

t = lambda *xs: torch.tensor(xs, dtype=torch.float64)  # noqa: E731
sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731


def _pair(pc, pr, rc, rr, **kw):
    return PreferenceInputs(t(pc), t(pr), t(rc), t(rr), **kw)


# One example with z = (pc - pr) - (rc - rr) = (-1 + 3) - (-2 + 2) = 2.
Z2 = _pair(-1.0, -3.0, -2.0, -2.0)


def test_dpo_zero_margin_is_log2_for_any_beta():
    x = _pair(-1.0, -2.0, -1.0, -2.0)  # z = 1 - 1 = 0
    for beta in (0.01, 0.1, 5.0):
        assert_close(dpo(x, PreferenceOptions(beta=beta)).losses, t(math.log(2)))


def test_dpo_hand_computed():
    out = dpo(Z2, PreferenceOptions(beta=0.5))
    # -log sigmoid(0.5 * 2) = log(1 + e^-1)
    assert_close(out.losses, t(math.log(1 + math.exp(-1))))
    # rewards beta * (policy - ref): 0.5 * (-1 + 2) = 0.5 and 0.5 * (-3 + 2) = -0.5
    assert_close(out.chosen_rewards, t(0.5))
    assert_close(out.rejected_rewards, t(-0.5))


def test_dpo_gradient():
    # d/d pc of -log sigmoid(beta z) = -beta * sigmoid(-beta z); at z = 0, beta = 0.1: -0.05.
    pc = torch.tensor([-1.0], dtype=torch.float64, requires_grad=True)
    x = PreferenceInputs(pc, t(-2.0), t(-1.0), t(-2.0))
    dpo(x, PreferenceOptions(beta=0.1)).losses.sum().backward()
    assert_close(pc.grad, t(-0.05))


def test_cdpo_hand_computed():
    out = cdpo(Z2, PreferenceOptions(beta=0.5, label_smoothing=0.1))
    # 0.9 * -log sigmoid(1) + 0.1 * -log sigmoid(-1)
    expected = 0.9 * math.log(1 + math.exp(-1)) + 0.1 * math.log(1 + math.exp(1))
    assert_close(out.losses, t(expected))


def test_cdpo_with_zero_eps_is_dpo_and_dpo_refuses_smoothing():
    torch.manual_seed(1)
    x = PreferenceInputs(*(torch.randn(16) * 5 for _ in range(4)))
    opts = PreferenceOptions(beta=0.3)
    assert_close(cdpo(x, opts).losses, dpo(x, opts).losses)
    with pytest.raises(ValueError, match="cdpo"):
        dpo(x, PreferenceOptions(label_smoothing=0.1))


def test_ipo_hand_computed():
    # (z - 1/(2 beta))^2: beta = 0.5 -> (2 - 1)^2 = 1; beta = 0.25 -> (2 - 2)^2 = 0.
    assert_close(ipo(Z2, PreferenceOptions(beta=0.5)).losses, t(1.0))
    assert_close(ipo(Z2, PreferenceOptions(beta=0.25)).losses, t(0.0))


def test_ipo_length_normalised_option():
    x = _pair(-2.0, -3.0, -4.0, -1.0, chosen_lengths=t(2), rejected_lengths=t(1))
    # Sums: z = (-2 + 3) - (-4 + 1) = 4 -> (4 - 1)^2 = 9.
    assert_close(ipo(x, PreferenceOptions(beta=0.5)).losses, t(9.0))
    # Averages (TRL): pc = -1, rc = -2, pr = -3, rr = -1 -> z = 2 + 1 = 3 -> (3 - 1)^2 = 4.
    assert_close(ipo(x, PreferenceOptions(beta=0.5, ipo_length_normalize=True)).losses, t(4.0))



def test_rpo_adds_the_chosen_mean_nll():
    # Z2 with a 4-token chosen response: NLL(y_c) = -(-1) / 4 = 0.25; rpo_alpha = 2 adds 0.5.
    x = dataclasses.replace(Z2, chosen_lengths=t(4), rejected_lengths=t(2))
    plain = math.log(1 + math.exp(-1))  # dpo at beta 0.5 (test_dpo_hand_computed)
    out = dpo(x, PreferenceOptions(beta=0.5, rpo_alpha=2.0))
    assert_close(out.losses, t(plain + 0.5))
    # the implicit rewards are DPO's, untouched by the NLL term
    assert_close(out.chosen_rewards, t(0.5))
    # ipo at beta 0.5 is (2 - 1)^2 = 1 (test_ipo_hand_computed): 1 + 0.5; cdpo and simpo add the same 0.5
    assert_close(ipo(x, PreferenceOptions(beta=0.5, rpo_alpha=2.0)).losses, t(1.5))
    # length-normalised IPO compares per-token means, pc = -1/4, pr = -3/2, rc = -1/2, rr = -1:
    # z = (-1/4 + 3/2) - (-1/2 + 1) = 3/4 -> (3/4 - 1)^2 = 1/16; the NLL term is the same 0.5
    normalised = PreferenceOptions(beta=0.5, ipo_length_normalize=True, rpo_alpha=2.0)
    assert_close(ipo(x, normalised).losses, t(1 / 16 + 0.5))
    # cdpo at beta 0.5, eps 0.1 (test_cdpo_hand_computed): 0.9 log(1 + e^-1) + 0.1 log(1 + e), + 0.5
    smoothed = 0.9 * math.log(1 + math.exp(-1)) + 0.1 * math.log(1 + math.exp(1))
    assert_close(cdpo(x, PreferenceOptions(beta=0.5, label_smoothing=0.1, rpo_alpha=2.0)).losses, t(smoothed + 0.5))
    # simpo at its defaults beta 0.1, gamma 0.5: averages -1/4 and -3/2, 0.1 * 5/4 - 0.5 = -0.375:
    # -log sigmoid(-0.375) = log(1 + e^0.375), + 0.5
    assert_close(simpo(x, PreferenceOptions(rpo_alpha=2.0)).losses, t(math.log(1 + math.exp(0.375)) + 0.5))


def test_rpo_gradient_lifts_the_chosen_log_prob():
    # at z = 0, beta = 0.1: DPO's d/d pc = -0.05 (test_dpo_gradient); the NLL adds -alpha / |y_c| = -1 / 2
    pc = torch.tensor([-1.0], dtype=torch.float64, requires_grad=True)
    x = PreferenceInputs(pc, t(-2.0), t(-1.0), t(-2.0), chosen_lengths=t(2), rejected_lengths=t(2))
    dpo(x, PreferenceOptions(beta=0.1, rpo_alpha=1.0)).losses.sum().backward()
    assert_close(pc.grad, t(-0.55))


def test_rpo_needs_lengths_and_is_refused_where_meaningless():
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo(Z2, PreferenceOptions(rpo_alpha=1.0))
    x = dataclasses.replace(Z2, chosen_lengths=t(1), rejected_lengths=t(1))
    with pytest.raises(ValueError, match="orpo takes no rpo_alpha"):
        orpo(x, PreferenceOptions(rpo_alpha=1.0))
    with pytest.raises(ValueError, match="kto takes no rpo_alpha"):
        kto(KTOInputs(t(-1.0), t(-1.0), torch.tensor([True]), 0.0), PreferenceOptions(rpo_alpha=1.0))
    with pytest.raises(ValueError, match="rpo_alpha must be >= 0"):
        PreferenceOptions(rpo_alpha=-1.0)

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dpo_family_matches_direct_formula(seed):
    torch.manual_seed(seed)
    pc, pr, rc, rr = (torch.randn(32, dtype=torch.float64) * 3 - 20 for _ in range(4))
    beta, eps = 0.1 + seed, 0.05 * (seed + 1)
    z = (pc - pr) - (rc - rr)
    x = PreferenceInputs(pc, pr, rc, rr)
    # Textbook forms, written independently of the implementation (log of sigmoid, not logsigmoid).
    assert_close(dpo(x, PreferenceOptions(beta=beta)).losses, -torch.log(torch.sigmoid(beta * z)))
    assert_close(
        cdpo(x, PreferenceOptions(beta=beta, label_smoothing=eps)).losses,
        -(1 - eps) * torch.log(torch.sigmoid(beta * z)) - eps * torch.log(torch.sigmoid(-beta * z)),
    )
    assert_close(ipo(x, PreferenceOptions(beta=beta)).losses, (z - 1 / (2 * beta)) ** 2)


def test_simpo_hand_computed_and_reference_free():
    # averages: chosen -4/2 = -2, rejected -9/3 = -3; beta = 2, gamma = 0.5:
    # -log sigmoid(2 * 1 - 0.5) = log(1 + e^-1.5)
    x = PreferenceInputs(t(-4.0), t(-9.0), chosen_lengths=t(2), rejected_lengths=t(3))
    out = simpo(x, PreferenceOptions(beta=2.0, simpo_gamma=0.5))
    assert_close(out.losses, t(math.log(1 + math.exp(-1.5))))
    assert_close(out.chosen_rewards, t(-4.0))   # beta * avg = 2 * -2
    assert_close(out.rejected_rewards, t(-6.0))  # 2 * -3


def test_orpo_hand_computed():
    # Chosen: 2 tokens, sum log-prob 2 ln(1/2) -> average p = 1/2, odds 1.
    # Rejected: 1 token, p = 1/3 -> odds (1/3)/(2/3) = 1/2. log odds ratio = ln 2.
    # log sigmoid(ln 2) = ln(2/3). NLL default = -avg = ln 2.
    # loss = ln 2 - 0.1 * ln(2/3) = ln 2 + 0.1 ln 1.5
    x = PreferenceInputs(t(2 * math.log(0.5)), t(math.log(1 / 3)), chosen_lengths=t(2), rejected_lengths=t(1))
    out = orpo(x, PreferenceOptions(orpo_lambda=0.1))
    assert_close(out.losses, t(math.log(2) + 0.1 * math.log(1.5)))
    # An explicit NLL replaces the derived one: 1.0 + 0.1 ln 1.5
    x2 = dataclasses.replace(x, chosen_nll=t(1.0))
    assert_close(orpo(x2, PreferenceOptions(orpo_lambda=0.1)).losses, t(1.0 + 0.1 * math.log(1.5)))


def test_orpo_is_finite_near_probability_one():
    pc = torch.tensor([-1e-9], dtype=torch.float64, requires_grad=True)
    x = PreferenceInputs(pc, t(-5.0), chosen_lengths=t(1), rejected_lengths=t(1))
    orpo(x).losses.sum().backward()
    assert torch.isfinite(pc.grad).all()


def test_kto_hand_computed():
    # logratio r = -1 - (-2) = 1 for both; z_ref = 0.5; beta = 1.
    # desirable: lambda_D (1 - sigmoid(1 - 0.5)); undesirable: lambda_U (1 - sigmoid(0.5 - 1)) = sigmoid(0.5)
    x = KTOInputs(t(-1.0, -1.0), t(-2.0, -2.0), torch.tensor([True, False]), kl_ref=0.5)
    out = kto(x, PreferenceOptions(beta=1.0, kto_desirable_weight=2.0, kto_undesirable_weight=1.0))
    assert_close(out.losses, t(2 * (1 - sigmoid(0.5)), sigmoid(0.5)))
    assert_close(out.chosen_rewards, t(1.0))
    assert_close(out.rejected_rewards, t(1.0))


def test_kto_reference_point():
    # mean(policy - ref) = mean([1, -2]) = -0.5 -> clamped to 0; mean([0.5, 1.5]) = 1.
    assert kto_reference_point(t(-1.0, -3.0), t(-2.0, -1.0)).item() == 0.0
    pol = torch.tensor([0.5, 1.5], requires_grad=True)
    z = kto_reference_point(pol, torch.zeros(2))
    assert z.item() == 1.0 and not z.requires_grad  # a constant in the KTO loss


def test_input_validation():
    no_ref = PreferenceInputs(t(-1.0), t(-2.0))
    with pytest.raises(ValueError, match="ref_chosen_logps, ref_rejected_logps"):
        dpo(no_ref)
    with pytest.raises(ValueError, match="chosen_lengths"):
        simpo(no_ref)
    with pytest.raises(TypeError):
        kto(Z2)
    with pytest.raises(ValueError):
        PreferenceOptions(beta=0)
    with pytest.raises(ValueError):
        PreferenceOptions(label_smoothing=0.5)


def test_registry_holds_every_loss():
    assert PREFERENCE_LOSSES.names() == ("cdpo", "dpo", "ipo", "kto", "orpo", "simpo")
    assert PREFERENCE_LOSSES.get("simpo") is simpo
