import math

import pytest
import torch
from torch.testing import assert_close

from alignops.algos import apa_loss, clipped_value_loss, ppo_clip_loss

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
