import math

import pytest
import torch
from torch.testing import assert_close

from alignops.algos import POLICY_LOSSES, PolicyLossInputs, apa_loss, clipped_value_loss, p3o_loss, pair_partners, ppo_clip_loss

L15, L05 = math.log(1.5), math.log(0.5)


def _tokens(ratios, advs):
    logp = torch.tensor([[math.log(r) for r in ratios]], requires_grad=True)
    return logp, torch.zeros_like(logp), torch.tensor([advs]), torch.ones(1, len(ratios), dtype=torch.bool)


def test_ppo_clip_hand_computed():
    logp, old, adv, mask = _tokens([1.5, 0.5, 1.5, 0.5], [1.0, 1.0, -1.0, -1.0])
    loss, clipfrac = ppo_clip_loss(logp, old, adv, mask, 0.2)
    # A=+1, rho 1.5: max(-1.5, -1.2) = -1.2 (clipped)   A=+1, rho 0.5: max(-0.5, -0.8) = -0.5
    # A=-1, rho 1.5: max( 1.5,  1.2) =  1.5             A=-1, rho 0.5: max( 0.5,  0.8) =  0.8 (clipped)
    assert_close(loss, torch.tensor([[-1.2, -0.5, 1.5, 0.8]]))
    assert_close(clipfrac, torch.tensor(0.5))
    # Clipped tokens get no gradient; unclipped get d(-A rho)/dlogp = -A rho.
    loss.sum().backward()
    assert_close(logp.grad, torch.tensor([[0.0, -0.5, 1.5, 0.0]]))


def test_ppo_clip_higher():
    logp, old, adv, mask = _tokens([1.5, 0.5], [1.0, -1.0])
    loss, clipfrac = ppo_clip_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.6)
    # upper bound 1.6 no longer clips rho 1.5 -> -1.5; lower bound 0.8 still clips the A<0 token -> 0.8
    assert_close(loss, torch.tensor([[-1.5, 0.8]]))
    assert_close(clipfrac, torch.tensor(0.5))


def test_ppo_dual_clip():
    logp, old, adv, mask = _tokens([10.0, 10.0], [-1.0, 1.0])
    plain, _ = ppo_clip_loss(logp, old, adv, mask, 0.2)
    dual, _ = ppo_clip_loss(logp, old, adv, mask, 0.2, dual_clip=3.0)
    # A=-1, rho 10: max(10, 1.2) = 10, dual clip caps it at -c A = 3. A=+1: max(-10, -1.2) = -1.2 unchanged.
    assert_close(plain, torch.tensor([[10.0, -1.2]]))
    assert_close(dual, torch.tensor([[3.0, -1.2]]))
    with pytest.raises(ValueError):
        ppo_clip_loss(logp, old, adv, mask, 0.2, dual_clip=1.0)


def test_ppo_mask_and_log_ratio_clamp():
    logp = torch.tensor([[100.0, 0.0, 5.0]])
    old = torch.zeros(1, 3)
    adv = torch.tensor([[-1.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, False]])
    loss, clipfrac = ppo_clip_loss(logp, old, adv, mask)
    # log-ratio 100 is clamped to 20: loss = -A * e^20 (finite); the masked token is 0.
    assert_close(loss, torch.tensor([[math.exp(20), -1.0, 0.0]]))
    # Token 0: clipped branch (1.2) < unclipped -> not clipped; token 1 rho = 1: not clipped.
    assert clipfrac.item() == 0.0


def test_clipped_value_loss_hand_computed():
    v = torch.tensor([[1.0, 1.0, 4.0]])
    v_old = torch.tensor([[0.0, 0.9, 0.0]])
    ret = torch.tensor([[2.0, 0.0, 0.0]])
    out = clipped_value_loss(v, v_old, ret, 0.2, mask=torch.tensor([[1, 1, 0]]))
    # token 0: clip(1.0, -0.2, 0.2) = 0.2: 0.5 * max((1-2)^2, (0.2-2)^2) = 0.5 * 3.24 = 1.62
    # token 1: clip(1.0, 0.7, 1.1) = 1.0: 0.5 * 1 = 0.5; token 2 masked
    assert_close(out, torch.tensor([[1.62, 0.5, 0.0]]))


def test_apa_loss_hand_computed():
    logp = torch.tensor([[-1.0, -1.0]])
    init = torch.tensor([[-1.5, -1.5]])
    adv = torch.tensor([[1.0, 2.0]])
    m = torch.ones(1, 2, dtype=torch.bool)
    # log-ratio 0.5: lam 2 -> (0.5 - 1/2)^2 = 0 and (0.5 - 2/2)^2 = 0.25
    assert_close(apa_loss(logp, init, adv, m, lam=2.0), torch.tensor([[0.0, 0.25]]))
    # lam 1 -> (0.5 - 1)^2 = 0.25, (0.5 - 2)^2 = 2.25
    assert_close(apa_loss(logp, init, adv, m), torch.tensor([[0.25, 2.25]]))


def test_p3o_loss_hand_computed_clipped():
    # one pair, two tokens each (row 1's second token is padding: masked)
    logp = torch.tensor([[0.1, 0.1], [0.0, 7.0]], requires_grad=True)
    old = torch.tensor([[0.0, 0.0], [0.1, 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    adv = torch.tensor([[0.5, 0.5], [-0.5, 0.0]])  # (R_0 - R_1) / 2 = 0.5 and its mirror
    loss, clipfrac = p3o_loss(logp, old, adv, mask, 0.2)
    # l_0 = 0.1 + 0.1 = 0.2; l_1 = -0.1 (the masked 7.0 is ignored); rho_01 = e^0.3 = 1.3499, rho_10 = e^-0.3 = 0.7408
    # row 0: max(-0.5 * 1.3499, -0.5 * 1.2) = max(-0.6749, -0.6) = -0.6 (clipped above)
    # row 1: max(0.5 * 0.7408, 0.5 * 0.8) = max(0.3704, 0.4) = 0.4 (clipped below)
    assert_close(loss, torch.tensor([-0.6, 0.4]))
    assert_close(clipfrac, torch.tensor(1.0))
    loss.sum().backward()  # both clipped: no gradient
    assert_close(logp.grad, torch.zeros(2, 2))


def test_p3o_loss_hand_computed_gradient_is_the_pairwise_policy_gradient():
    logp = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.05, 0.0], [0.0, 0.0]], requires_grad=True)
    old = torch.zeros(4, 2)
    mask = torch.ones(4, 2, dtype=torch.bool)
    adv = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [0.0, 0.0], [0.0, 0.0]])
    loss, clipfrac = p3o_loss(logp, old, adv, mask, 0.2)
    # pair (0, 1) at pi = pi_old: rho = 1, loss_0 = -1 * 1 = -1, loss_1 = +1; pair (2, 3): A = 0 -> 0
    assert_close(loss, torch.tensor([-1.0, 1.0, 0.0, 0.0]))
    assert clipfrac.item() == 0.0
    loss.sum().backward()
    # loss_0 = -A_0 exp(l_0 - l_1): d/dlogp_0t = -1, d/dlogp_1t = +1
    # loss_1 = -A_1 exp(l_1 - l_0) = exp(l_1 - l_0): d/dlogp_1t = +1, d/dlogp_0t = -1
    # summed per token: row 0 -2, row 1 +2 (pair (2, 3) has A = 0: no gradient)
    assert_close(logp.grad, torch.tensor([[-2.0, -2.0], [2.0, 2.0], [0.0, 0.0], [0.0, 0.0]]))


def test_p3o_pairs_and_registry_traits():
    assert pair_partners(4).tolist() == [1, 0, 3, 2]
    with pytest.raises(ValueError):
        pair_partners(3)
    assert POLICY_LOSSES.traits("p3o").pairwise and POLICY_LOSSES.traits("p3o").sequence_level
    assert POLICY_LOSSES.traits("apa").needs_reference and not POLICY_LOSSES.traits("ppo_clip").sequence_level
    logp, old, adv, mask = _tokens([1.5, 0.5], [1.0, -1.0])
    # the registered ppo_clip is ppo_clip_loss; apa reads the reference's log-probs as pi_init
    assert_close(POLICY_LOSSES.get("ppo_clip")(PolicyLossInputs(logp, old, adv, mask)).loss, ppo_clip_loss(logp, old, adv, mask).loss)
    apa = POLICY_LOSSES.get("apa")(PolicyLossInputs(logp, old, adv, mask, ref_logp=old, apa_lambda=2.0))
    # (log 1.5 - 0 - 1/2)^2 and (log 0.5 + 1/2)^2
    assert_close(apa.loss, torch.tensor([[(L15 - 0.5) ** 2, (L05 + 0.5) ** 2]]))
    with pytest.raises(ValueError):
        POLICY_LOSSES.get("apa")(PolicyLossInputs(logp, old, adv, mask))
