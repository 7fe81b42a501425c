"""Policy and value losses for on-policy RL.

Token-level losses return a (B, T) matrix, 0 at masked positions; reduce it with
:func:`aggregate_loss`, which is where the normalisation (and its batch-split invariance) lives.
Sequence-level losses (P3O) return (B,), one figure per response, reduced as a mean over the
mini-batch's responses.

``POLICY_LOSSES`` registers the policy losses the ``rl`` stage picks by algorithm, each with
:class:`PolicyLossTraits` (what it reads, how it reduces), all called as
``fn(PolicyLossInputs) -> PolicyLossOutput``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from .kl import LOG_RATIO_CLAMP
from .logprobs import masked_mean, masked_sum
from .registry import Registry

__all__ = [
    "POLICY_LOSSES",
    "PolicyLossInputs",
    "PolicyLossOutput",
    "PolicyLossTraits",
    "apa_loss",
    "clipped_value_loss",
    "p3o_loss",
    "pair_partners",
    "ppo_clip_loss",
]


class PolicyLossOutput(NamedTuple):
    """``loss`` (B, T) per token; ``clip_fraction`` scalar (detached), the share of valid tokens
    whose ratio clip was active."""

    loss: Tensor
    clip_fraction: Tensor


def _zero_masked(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.bool(), x, torch.zeros_like(x))


def _clipped_surrogate(ratio: Tensor, advantages: Tensor, clip_low: float, clip_high: float) -> tuple[Tensor, Tensor]:
    """(``max(-A rho, -A clip(rho, 1 - clip_low, 1 + clip_high))``, where the clip is active)."""
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def ppo_clip_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: Optional[float] = None,
    dual_clip: Optional[float] = None,
) -> PolicyLossOutput:
    """PPO clipped surrogate (arXiv:1707.06347) with DAPO clip-higher and dual clip.

    ``rho = exp(clamp(logp - old_logp, -20, 20))``;
    ``loss = max(-A rho, -A clip(rho, 1 - clip_low, 1 + clip_high))``; with dual clip c > 1
    (arXiv:1912.09729) tokens with A < 0 use ``min(loss, -c A)``, bounding the loss when rho is
    huge on a bad token.

    Args:
        logp: (B, T) current policy log-probs of the sampled tokens (requires grad).
        old_logp: (B, T) behaviour policy log-probs (rollout time).
        advantages: (B, T).
        mask: (B, T) response tokens.
        clip_low: epsilon below 1.
        clip_high: epsilon above 1 (DAPO, arXiv:2503.14476, uses 0.28); None = clip_low.
        dual_clip: c > 1, or None for no dual clip (verl's default c is 3).

    Returns:
        :class:`PolicyLossOutput` (loss (B, T), clip_fraction scalar).
    """
    if clip_high is None:
        clip_high = clip_low
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    ratio = torch.exp((logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    loss, active = _clipped_surrogate(ratio, advantages, clip_low, clip_high)
    clip_fraction = masked_mean(active.to(logp.dtype), mask).detach()
    if dual_clip is not None:
        loss = torch.where(advantages < 0, torch.minimum(loss, -dual_clip * advantages), loss)
    return PolicyLossOutput(_zero_masked(loss, mask), clip_fraction)


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    clip_eps: float,
    mask: Optional[Tensor] = None,
) -> Tensor:
    """PPO clipped value loss ``0.5 * max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2)``.

    Args:
        values: (B, T) current critic values (requires grad).
        old_values: (B, T) critic values at rollout time.
        returns: (B, T) targets (GAE returns).
        clip_eps: how far V may move from V_old before its gradient is cut.
        mask: optional (B, T); masked positions are 0.

    Returns:
        (B, T) per-token loss.
    """
    clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    loss = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return loss if mask is None else _zero_masked(loss, mask)


def apa_loss(
    logp: Tensor,
    init_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    lam: float = 1.0,
) -> Tensor:
    """Advantage-Induced Policy Alignment (Zhu et al., arXiv:2306.02231).

    Squared loss ``(log pi(a|s) - log pi_init(a|s) - A / lam)^2`` on the sampled tokens: it
    regresses the policy's log-ratio to the initial model onto the scaled advantage instead of
    clipping an importance ratio.

    Args:
        logp: (B, T) current log-probs of the sampled tokens.
        init_logp: (B, T) log-probs under the initial (SFT) policy.
        advantages: (B, T).
        mask: (B, T).
        lam: the paper's lambda (> 0); larger lambda keeps the policy closer to pi_init.

    Returns:
        (B, T) per-token loss, 0 at masked positions.
    """
    if lam <= 0:
        raise ValueError(f"lam must be > 0, got {lam}")
    return _zero_masked((logp - init_logp - advantages / lam) ** 2, mask)


def pair_partners(batch_size: int, device=None) -> Tensor:
    """(B,) index of each row's pair partner when rows come in adjacent pairs: 0<->1, 2<->3, ..."""
    if batch_size % 2:
        raise ValueError(f"pairwise rows come in pairs; got {batch_size} rows")
    return torch.arange(batch_size, device=device) ^ 1


def p3o_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: Optional[float] = None,
) -> PolicyLossOutput:
    """Pairwise PPO, P3O with joint clipping (Wu et al., arXiv:2310.00212).

    Rows come in adjacent pairs (2k, 2k+1): two responses y_i, y_j to one prompt. The trajectory
    log-ratio of row i is ``l_i = sum_t m_it (logp_it - old_logp_it)``; the pair's ratio product is
    ``rho_ij = exp(clamp(l_i - l_j, -20, 20)) = [pi(y_i) pi_old(y_j)] / [pi_old(y_i) pi(y_j)]``;
    the relative advantage A_i is the row's (constant) advantage, e.g. ``(R_i - R_j) / 2`` from a
    group mean over the pair. ``loss_i = max(-A_i rho_ij, -A_i clip(rho_ij, 1 - clip_low,
    1 + clip_high))``. At ``pi = pi_old`` its gradient is ``-A_i (grad log pi(y_i) - grad log
    pi(y_j))``: the pairwise policy gradient, blind to any reward offset shared by the pair. Each
    pair is counted from both sides (i, j) and (j, i), which the mean over rows averages.

    Args:
        logp: (B, T) current log-probs of the sampled tokens (requires grad), B even.
        old_logp: (B, T) behaviour log-probs.
        advantages: (B, T) per-token advantages, constant over a row's valid tokens.
        mask: (B, T) response tokens.
        clip_low, clip_high: epsilons of the ratio clip (clip_high None = clip_low).

    Returns:
        :class:`PolicyLossOutput` with a (B,) loss per response and the share of rows clipped.
    """
    if clip_high is None:
        clip_high = clip_low
    partner = pair_partners(logp.shape[0], logp.device)
    log_ratio = masked_sum(logp - old_logp, mask, dim=-1)
    ratio = torch.exp((log_ratio - log_ratio[partner]).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    loss, active = _clipped_surrogate(ratio, masked_mean(advantages, mask, dim=-1), clip_low, clip_high)
    clip_fraction = active.to(logp.dtype).mean().detach()
    return PolicyLossOutput(loss, clip_fraction)


@dataclass(frozen=True)
class PolicyLossTraits:
    """What the update must know of a policy loss: ``sequence_level`` losses are (B,) and reduced
    as a mean over responses (not by ``lossAggregation``); ``needs_reference`` losses read
    ``ref_logp`` (so the reference model is loaded even with KL beta 0); ``pairwise`` losses need
    rows in adjacent pairs answering one prompt, kept together in every mini- and micro-batch."""

    sequence_level: bool = False
    needs_reference: bool = False
    pairwise: bool = False


@dataclass(frozen=True)
class PolicyLossInputs:
    """Everything a registered policy loss may read, (B, T) tensors; each loss documents its own.

    ``ref_logp``: log-probs under the frozen reference (APA's pi_init); ``apa_lambda``: APA's lambda."""

    logp: Tensor
    old_logp: Tensor
    advantages: Tensor
    mask: Tensor
    ref_logp: Optional[Tensor] = None
    clip_low: float = 0.2
    clip_high: Optional[float] = None
    dual_clip: Optional[float] = None
    apa_lambda: float = 1.0


POLICY_LOSSES: Registry[Callable[[PolicyLossInputs], PolicyLossOutput]] = Registry("policy loss")


@POLICY_LOSSES.register("ppo_clip", traits=PolicyLossTraits())
def _ppo_clip(inputs: PolicyLossInputs) -> PolicyLossOutput:
    """:func:`ppo_clip_loss` (ppo, grpo, rloo, reinforce_pp, remax, ...)."""
    return ppo_clip_loss(inputs.logp, inputs.old_logp, inputs.advantages, inputs.mask,
                         inputs.clip_low, inputs.clip_high, inputs.dual_clip)


@POLICY_LOSSES.register("apa", traits=PolicyLossTraits(needs_reference=True))
def _apa(inputs: PolicyLossInputs) -> PolicyLossOutput:
    """:func:`apa_loss` against the reference as pi_init; nothing is clipped (clip fraction 0)."""
    if inputs.ref_logp is None:
        raise ValueError("the apa loss needs ref_logp (log-probs under pi_init)")
    loss = apa_loss(inputs.logp, inputs.ref_logp, inputs.advantages, inputs.mask, inputs.apa_lambda)
    return PolicyLossOutput(loss, torch.zeros((), dtype=loss.dtype, device=loss.device))


@POLICY_LOSSES.register("p3o", traits=PolicyLossTraits(sequence_level=True, pairwise=True))
def _p3o(inputs: PolicyLossInputs) -> PolicyLossOutput:
    """:func:`p3o_loss` (its clip epsilons are the stage's clipLow / clipHigh)."""
    return p3o_loss(inputs.logp, inputs.old_logp, inputs.advantages, inputs.mask, inputs.clip_low, inputs.clip_high)
