import math

import pytest
import torch
from torch.testing import assert_close

from alignops.algos import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    contiguous_group_ids,
    discounted_returns,
    dr_grpo,
    gae,
    grpo,
    reinforce_pp,
    reinforce_pp_baseline,
    remax,
    rloo,
)

R1001 = torch.tensor([1.0, 0.0, 0.0, 1.0])
ONE_GROUP = torch.zeros(4, dtype=torch.long)


def _outcome(scores, mask=None, group_ids=None, **kw):
    mask = torch.ones(len(scores), 2, dtype=torch.bool) if mask is None else mask
    gid = ONE_GROUP[: len(scores)] if group_ids is None else group_ids
    return AdvantageInputs(response_mask=mask, scores=scores, group_ids=gid, **kw)


def test_grpo_unbiased_std_by_default():
    # mean 0.5; unbiased var = 4 * 0.25 / 3 = 1/3 -> std 0.57735 (torch.std, as verl and TRL);
    # A = +-0.5 / (0.57735 + 1e-6) = +-0.866 (= sqrt(3)/2 up to eps).
    adv, ret = grpo(_outcome(R1001))
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    assert_close(adv[:, 0], torch.tensor([a, -a, -a, a]))
    assert_close(adv[:, 1], adv[:, 0])  # broadcast to every valid token
    assert_close(ret, adv)


def test_grpo_biased_std_and_eps_options():
    # biased std = 0.5 -> A = +-0.5 / (0.5 + 1e-6) ~ +-1
    adv, _ = grpo(_outcome(R1001, unbiased_std=False))
    b = 0.5 / (0.5 + 1e-6)
    assert_close(adv[:, 0], torch.tensor([b, -b, -b, b]))
    # TRL's eps 1e-4
    adv, _ = grpo(_outcome(R1001, eps=1e-4))
    c = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    assert_close(adv[:, 0], torch.tensor([c, -c, -c, c]))


def test_grpo_interleaved_groups_mask_and_singletons():
    # groups {0: [1, 3], 1: [2, 6], 2: [5]}; group 0: mean 2, std sqrt(2) -> -+1/sqrt2;
    # group 1: mean 4, std 2 sqrt2 -> -+1/sqrt2; the singleton has no baseline -> 0.
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0, 5.0])
    gid = torch.tensor([7, 3, 7, 3, 11])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 1], [1, 1, 1]]).bool()
    adv, _ = grpo(AdvantageInputs(response_mask=mask, scores=scores, group_ids=gid, eps=0.0))
    s = 1 / math.sqrt(2)
    expected = torch.tensor([[-s, -s, 0], [-s, 0, 0], [s, s, s], [0, s, s], [0, 0, 0]])
    assert_close(adv, expected)


def test_contiguous_group_ids():
    assert contiguous_group_ids(6, 3).tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError):
        contiguous_group_ids(5, 2)


def test_dr_grpo_has_no_std():
    adv, _ = dr_grpo(_outcome(R1001))
    assert_close(adv[:, 0], torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_rloo_leave_one_out():
    # r_i - mean of the other three: 1 - 1/3 = 2/3, 0 - 2/3 = -2/3.
    adv, _ = rloo(_outcome(R1001))
    assert_close(adv[:, 0], torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]))
    # = n/(n-1) (r - mean) on another group: [3, 0]: 2 * (3 - 1.5) = 3 and -3.
    adv, _ = rloo(_outcome(torch.tensor([3.0, 0.0])))
    assert_close(adv[:, 0], torch.tensor([3.0, -3.0]))


def test_discounted_returns_skip_masked_tokens():
    r = torch.tensor([[-0.1, 99.0, -0.1, 1.0]])
    m = torch.tensor([[1, 0, 1, 1]])
    # gamma 0.5 over the valid tokens -0.1, -0.1, 1.0: G = [-0.1 + 0.5 * 0.4, -0.1 + 0.5, 1] = [0.1, 0.4, 1]
    assert_close(discounted_returns(r, m, 0.5), torch.tensor([[0.1, 0.0, 0.4, 1.0]]))


def test_reinforce_pp_hand_computed():
    r = torch.tensor([[-0.1, -0.1, 1.0], [0.0, 0.5, 7.0]])
    m = torch.tensor([[1, 1, 1], [1, 1, 0]]).bool()
    adv, ret = reinforce_pp(AdvantageInputs(response_mask=m, token_level_rewards=r))
    # gamma 1: G = [0.8, 0.9, 1.0] and [0.5, 0.5]
    assert_close(ret, torch.tensor([[0.8, 0.9, 1.0], [0.5, 0.5, 0.0]]))
    # valid G mean 3.7/5 = 0.74; squared deviations sum 0.212 -> unbiased var 0.053
    sd = math.sqrt(0.053 + 1e-8)
    expected = torch.tensor([[0.06, 0.16, 0.26], [-0.24, -0.24, 0.0]]) / sd
    assert_close(adv, expected)


def test_reinforce_pp_baseline_subtracts_group_mean_first():
    # Outcome only, T = 2: R - mean = [.5, -.5, -.5, .5] on the last token, G copies it to
    # both tokens; 8 values of +-0.5, mean 0, unbiased var 8 * 0.25 / 7 = 2/7.
    adv, ret = reinforce_pp_baseline(_outcome(R1001))
    assert_close(ret[:, 0], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    a = 0.5 / math.sqrt(2 / 7 + 1e-8)
    assert_close(adv, torch.tensor([[a, a], [-a, -a], [-a, -a], [a, a]]))


def test_reinforce_pp_baseline_keeps_kl_shaping():
    # scores [1, 0] (mean 0.5); token rewards hold KL terms plus R on the last token.
    tok = torch.tensor([[-0.1, 0.9], [-0.2, -0.2]])
    x = AdvantageInputs(response_mask=torch.ones(2, 2, dtype=torch.bool), scores=torch.tensor([1.0, 0.0]),
                        token_level_rewards=tok, group_ids=torch.tensor([0, 0]))
    _, ret = reinforce_pp_baseline(x)
    # rewards after baseline: [-0.1, 0.4], [-0.2, -0.7] -> G = [0.3, 0.4], [-0.9, -0.7]
    assert_close(ret, torch.tensor([[0.3, 0.4], [-0.9, -0.7]]))


def test_remax_greedy_baseline():
    x = AdvantageInputs(response_mask=torch.tensor([[1, 1], [1, 0]]).bool(), scores=torch.tensor([1.0, 0.0]),
                        baseline_scores=torch.tensor([0.5, 0.25]))
    adv, ret = remax(x)
    # G = R on every valid token; A = G - R_greedy
    assert_close(ret, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert_close(adv, torch.tensor([[0.5, 0.5], [-0.25, 0.0]]))


def test_gae_hand_computed():
    m = torch.ones(1, 2, dtype=torch.bool)
    r = torch.tensor([[0.0, 1.0]])
    v = torch.tensor([[0.5, 0.6]])
    # gamma = lam = 1: t1: delta = 1 + 0 - 0.6 = 0.4 = A1; t0: delta = 0 + 0.6 - 0.5 = 0.1,
    # A0 = 0.1 + 0.4 = 0.5; returns = A + V = [1.0, 1.0]
    adv, ret = gae(AdvantageInputs(response_mask=m, token_level_rewards=r, values=v, whiten=False))
    assert_close(adv, torch.tensor([[0.5, 0.4]]))
    assert_close(ret, torch.tensor([[1.0, 1.0]]))
    # gamma 0.9, lam 0.5: t1 as before 0.4; t0: delta = 0.9 * 0.6 - 0.5 = 0.04,
    # A0 = 0.04 + 0.45 * 0.4 = 0.22; returns [0.72, 1.0]
    adv, ret = gae(AdvantageInputs(response_mask=m, token_level_rewards=r, values=v, gamma=0.9, lam=0.5, whiten=False))
    assert_close(adv, torch.tensor([[0.22, 0.4]]))
    assert_close(ret, torch.tensor([[0.72, 1.0]]))
    # whitened: two values 0.22, 0.4 -> -+1/sqrt(2) (mean 0.31, unbiased var 0.0162)
    adv, _ = gae(AdvantageInputs(response_mask=m, token_level_rewards=r, values=v, gamma=0.9, lam=0.5))
    s = 0.09 / math.sqrt(0.0162 + 1e-8)
    assert_close(adv, torch.tensor([[-s, s]]))


def _random_inputs(seed, B=4, T=5):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, T, generator=g) < 0.75
    mask[:, 0] = True  # every row has a token
    return AdvantageInputs(
        response_mask=mask,
        scores=torch.randn(B, generator=g),
        token_level_rewards=torch.randn(B, T, generator=g) * mask,
        group_ids=torch.tensor([0, 0, 1, 1])[:B],
        values=torch.randn(B, T, generator=g),
        baseline_scores=torch.randn(B, generator=g),
        gamma=0.9,
        lam=0.8,
    )


def _pad(x: AdvantageInputs, seed: int) -> "tuple[AdvantageInputs, torch.Tensor]":
    """Insert masked columns with garbage rewards/values at random places (left, middle, right)."""
    g = torch.Generator().manual_seed(1000 + seed)
    B, T = x.response_mask.shape
    extra = 4
    keep = torch.zeros(T + extra, dtype=torch.bool)
    keep[torch.randperm(T + extra, generator=g)[:T].sort().values] = True

    def spread(t, fill):
        out = fill.clone()
        out[:, keep] = t
        return out

    garbage = torch.randn(B, T + extra, generator=g) * 100
    padded = AdvantageInputs(
        response_mask=spread(x.response_mask, torch.zeros(B, T + extra, dtype=torch.bool)),
        scores=x.scores,
        token_level_rewards=spread(x.token_level_rewards, garbage),
        group_ids=x.group_ids,
        values=spread(x.values, garbage.flip(0)),
        baseline_scores=x.baseline_scores,
        gamma=x.gamma,
        lam=x.lam,
    )
    return padded, keep


@pytest.mark.parametrize("name", ADVANTAGE_ESTIMATORS.names())
@pytest.mark.parametrize("seed", range(3))
def test_masked_tokens_do_not_change_results(name, seed):
    fn = ADVANTAGE_ESTIMATORS.get(name)
    x = _random_inputs(seed)
    adv, ret = fn(x)
    padded, keep = _pad(x, seed)
    adv_p, ret_p = fn(padded)
    assert_close(adv_p[:, keep], adv)
    assert_close(ret_p[:, keep], ret)
    assert (adv_p[:, ~keep] == 0).all() and (ret_p[:, ~keep] == 0).all()
    assert (adv[~x.response_mask] == 0).all()


def test_scores_default_to_summed_token_rewards():
    tok = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.5, -0.5], [0.0, 1.0]])
    x = AdvantageInputs(response_mask=torch.ones(4, 2, dtype=torch.bool), token_level_rewards=tok, group_ids=ONE_GROUP)
    assert_close(dr_grpo(x).advantages[:, 0], torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_missing_inputs_are_named():
    m = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="'gae' needs values"):
        gae(AdvantageInputs(response_mask=m, scores=torch.zeros(2)))
    with pytest.raises(ValueError, match="'grpo' needs group_ids"):
        grpo(AdvantageInputs(response_mask=m, scores=torch.zeros(2)))
    with pytest.raises(ValueError, match="'remax' needs baseline_scores"):
        remax(AdvantageInputs(response_mask=m, scores=torch.zeros(2)))
