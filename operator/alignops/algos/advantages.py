"""Advantage estimators for policy-gradient RL, all with one calling convention.

``ADVANTAGE_ESTIMATORS.get(name)(AdvantageInputs(...)) -> AdvantageOutput(advantages, returns)``,
both (B, T) and 0 at masked positions.

Conventions shared by every estimator:
* ``scores`` (B,) is the outcome reward R(x, y). If absent it is the masked sum of
  ``token_level_rewards`` (verl's convention; note this includes any KL shaping).
* ``token_level_rewards`` (B, T) are per-token rewards *including* R on the last valid token,
  e.g. from :func:`kl_shaped_token_rewards`. If absent, R is placed on the last valid token.
* Token recursions (GAE, discounted returns) skip masked positions, so padding or masked tokens
  anywhere in a row (left/right padding, tool-output tokens) do not change any result.
* Outcome-only estimators broadcast one advantage per sequence to its valid tokens and return it
  as ``returns`` too (there is no critic to regress).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from .groups import group_stats
from .logprobs import masked_sum, masked_whiten, place_on_last_token
from .registry import Registry

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AdvantageInputs",
    "AdvantageOutput",
    "discounted_returns",
    "gae",
    "grpo",
    "dr_grpo",
    "rloo",
    "reinforce_pp",
    "reinforce_pp_baseline",
    "remax",
]


@dataclass(frozen=True)
class AdvantageInputs:
    """Everything any estimator may need; each documents which fields it reads.

    Attributes:
        response_mask: (B, T) valid response tokens.
        scores: (B,) outcome reward R.
        token_level_rewards: (B, T) per-token rewards including R on the last token.
        group_ids: (B,) integer prompt/group id (see ``contiguous_group_ids``).
        values: (B, T) critic values V(s_t) (gae).
        baseline_scores: (B,) reward of the greedy response (remax).
        gamma: discount.
        lam: GAE lambda.
        eps: added to the group std in grpo (verl 1e-6, TRL 1e-4).
        unbiased_std: n - 1 (verl, TRL) or n in group std and in whitening.
        whiten: gae only: whiten advantages over valid tokens (verl, TRL PPO do).
    """

    response_mask: Tensor
    scores: Optional[Tensor] = None
    token_level_rewards: Optional[Tensor] = None
    group_ids: Optional[Tensor] = None
    values: Optional[Tensor] = None
    baseline_scores: Optional[Tensor] = None
    gamma: float = 1.0
    lam: float = 1.0
    eps: float = 1e-6
    unbiased_std: bool = True
    whiten: bool = True


class AdvantageOutput(NamedTuple):
    """``advantages`` and ``returns``, both (B, T), 0 at masked positions."""

    advantages: Tensor
    returns: Tensor


AdvantageEstimator = Callable[[AdvantageInputs], AdvantageOutput]
ADVANTAGE_ESTIMATORS: Registry[AdvantageEstimator] = Registry("advantage estimator")


def _need(name: str, inputs: AdvantageInputs, *fields: str) -> None:
    missing = [f for f in fields if getattr(inputs, f) is None]
    if missing:
        raise ValueError(f"advantage estimator {name!r} needs {', '.join(missing)}")


def _scores(name: str, inputs: AdvantageInputs) -> Tensor:
    if inputs.scores is not None:
        return inputs.scores
    if inputs.token_level_rewards is not None:
        return masked_sum(inputs.token_level_rewards, inputs.response_mask, dim=-1)
    raise ValueError(f"advantage estimator {name!r} needs scores or token_level_rewards")


def _token_rewards(name: str, inputs: AdvantageInputs) -> Tensor:
    if inputs.token_level_rewards is not None:
        return inputs.token_level_rewards
    if inputs.scores is not None:
        return place_on_last_token(inputs.scores, inputs.response_mask)
    raise ValueError(f"advantage estimator {name!r} needs token_level_rewards or scores")


def _broadcast(per_seq: Tensor, mask: Tensor) -> AdvantageOutput:
    m = mask.bool()
    expanded = per_seq.unsqueeze(-1).expand(m.shape)
    adv = torch.where(m, expanded, torch.zeros_like(expanded))
    return AdvantageOutput(adv, adv)


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """``G_t = sum_{k >= t, valid} gamma^(#valid tokens between) r_k``, skipping masked tokens.

    Args:
        rewards: (B, T).
        mask: (B, T).
        gamma: discount.

    Returns:
        (B, T), 0 at masked positions.
    """
    m = mask.bool()
    running = torch.zeros_like(rewards[:, 0])
    out = torch.zeros_like(rewards)
    for t in reversed(range(rewards.shape[1])):
        candidate = rewards[:, t] + gamma * running
        # A masked token neither adds reward nor spends a discount step.
        running = torch.where(m[:, t], candidate, running)
        out[:, t] = torch.where(m[:, t], candidate, torch.zeros_like(candidate))
    return out


@ADVANTAGE_ESTIMATORS.register("gae")
def gae(inputs: AdvantageInputs) -> AdvantageOutput:
    """Generalised advantage estimation (Schulman et al., arXiv:1506.02438) for PPO.

    ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lam A_{t+1}`` where t+1 is
    the next *valid* token and V = A = 0 after the last one. ``returns = A + V`` (the critic's
    target) is taken before whitening; then A is whitened over valid tokens if ``whiten``.

    Reads: token_level_rewards (or scores), values, response_mask, gamma, lam, whiten,
    unbiased_std.
    """
    _need("gae", inputs, "values")
    m = inputs.response_mask.bool()
    rewards = _token_rewards("gae", inputs)
    values = inputs.values.to(rewards.dtype)
    gamma, lam = inputs.gamma, inputs.lam
    next_value = torch.zeros_like(rewards[:, 0])
    next_adv = torch.zeros_like(rewards[:, 0])
    adv = torch.zeros_like(rewards)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a_t = delta + gamma * lam * next_adv
        # Masked tokens are transparent: carry the next valid token's value and advantage over.
        next_value = torch.where(m[:, t], values[:, t], next_value)
        next_adv = torch.where(m[:, t], a_t, next_adv)
        adv[:, t] = torch.where(m[:, t], a_t, torch.zeros_like(a_t))
    returns = torch.where(m, adv + values, torch.zeros_like(adv))
    if inputs.whiten:
        adv = masked_whiten(adv, m, unbiased=inputs.unbiased_std)
    return AdvantageOutput(adv, returns)


def _group(name: str, inputs: AdvantageInputs):
    _need(name, inputs, "group_ids")
    scores = _scores(name, inputs)
    return scores, group_stats(scores, inputs.group_ids, unbiased=inputs.unbiased_std)


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo(inputs: AdvantageInputs) -> AdvantageOutput:
    """GRPO outcome advantage (DeepSeekMath, arXiv:2402.03300).

    ``A_i = (R_i - mean_g) / (std_g + eps)`` broadcast to every valid token of response i.
    std is unbiased (n - 1) by default, as ``torch.std`` in verl and TRL; set
    ``unbiased_std=False`` for the population std. A group of one response has no baseline
    and gets A = 0 (verl instead uses mean 0, std 1, i.e. A = R).

    Reads: scores, group_ids, response_mask, eps, unbiased_std.
    """
    scores, st = _group("grpo", inputs)
    adv = (scores - st.mean) / (st.std + inputs.eps)
    return _broadcast(torch.where(st.count > 1, adv, torch.zeros_like(adv)), inputs.response_mask)


@ADVANTAGE_ESTIMATORS.register("dr_grpo")
def dr_grpo(inputs: AdvantageInputs) -> AdvantageOutput:
    """Dr. GRPO (arXiv:2503.20783): ``A_i = R_i - mean_g``, no division by the group std
    (which up-weights too-easy/too-hard prompts). Pair with the ``seq_mean_token_sum_norm``
    aggregation. Groups of one get A = 0.

    Reads: scores, group_ids, response_mask.
    """
    scores, st = _group("dr_grpo", inputs)
    return _broadcast(scores - st.mean, inputs.response_mask)


@ADVANTAGE_ESTIMATORS.register("rloo")
def rloo(inputs: AdvantageInputs) -> AdvantageOutput:
    """REINFORCE leave-one-out (Ahmadian et al., arXiv:2402.14740).

    ``A_i = R_i - mean_{j != i} R_j = n / (n - 1) * (R_i - mean_g)``; groups of one get 0.

    Reads: scores, group_ids, response_mask.
    """
    scores, st = _group("rloo", inputs)
    n = st.count
    adv = torch.where(n > 1, n / (n - 1).clamp(min=1) * (scores - st.mean), torch.zeros_like(scores))
    return _broadcast(adv, inputs.response_mask)


@ADVANTAGE_ESTIMATORS.register("reinforce_pp")
def reinforce_pp(inputs: AdvantageInputs) -> AdvantageOutput:
    """REINFORCE++ (arXiv:2501.03262): discounted returns of the KL-shaped token rewards,
    whitened over all valid tokens of the batch (no critic, no group baseline).

    ``returns`` are the un-whitened G_t. Whitening is over this call's batch: call it on the
    global batch. Reads: token_level_rewards (or scores), response_mask, gamma, unbiased_std.
    """
    m = inputs.response_mask.bool()
    returns = discounted_returns(_token_rewards("reinforce_pp", inputs), m, inputs.gamma)
    return AdvantageOutput(masked_whiten(returns, m, unbiased=inputs.unbiased_std), returns)


@ADVANTAGE_ESTIMATORS.register("reinforce_pp_baseline")
def reinforce_pp_baseline(inputs: AdvantageInputs) -> AdvantageOutput:
    """REINFORCE++-baseline (arXiv:2501.03262): subtract the group mean of R from the outcome
    reward first (on the last token, so KL shaping is untouched), then discounted returns and
    global whitening as :func:`reinforce_pp`.

    Reads: scores (or token_level_rewards), token_level_rewards (optional), group_ids,
    response_mask, gamma, unbiased_std.
    """
    scores, st = _group("reinforce_pp_baseline", inputs)
    m = inputs.response_mask.bool()
    rewards = _token_rewards("reinforce_pp_baseline", inputs) - place_on_last_token(st.mean, m)
    returns = discounted_returns(rewards, m, inputs.gamma)
    return AdvantageOutput(masked_whiten(returns, m, unbiased=inputs.unbiased_std), returns)


@ADVANTAGE_ESTIMATORS.register("remax")
def remax(inputs: AdvantageInputs) -> AdvantageOutput:
    """ReMax (arXiv:2310.10505): ``A_t = G_t - R(x, y_greedy)``, the greedy response's reward
    as the baseline. ``returns`` = G_t. No whitening.

    Reads: token_level_rewards (or scores), baseline_scores, response_mask, gamma.
    """
    _need("remax", inputs, "baseline_scores")
    m = inputs.response_mask.bool()
    returns = discounted_returns(_token_rewards("remax", inputs), m, inputs.gamma)
    baseline = inputs.baseline_scores.to(returns.dtype).unsqueeze(-1)
    adv = torch.where(m, returns - baseline, torch.zeros_like(returns))
    return AdvantageOutput(adv, returns)
