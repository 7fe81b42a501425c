"""Per-token policy and value losses for on-policy RL.

Every loss returns a (B, T) matrix, 0 at masked positions; reduce it with
:func:`aggregate_loss`, which is where the normalisation (and its batch-split invariance) lives.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .kl import LOG_RATIO_CLAMP
from .logprobs import masked_mean

__all__ = ["PolicyLossOutput", "ppo_clip_loss", "clipped_value_loss", "apa_loss"]


class PolicyLossOutput(NamedTuple):
    """``loss`` (B, T) per token; ``clip_fraction`` scalar (detached), the share of valid tokens
    whose ratio clip was active."""

    loss: Tensor
    clip_fraction: Tensor


def _zero_masked(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.bool(), x, torch.zeros_like(x))


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
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    clip_fraction = masked_mean((clipped > unclipped).to(logp.dtype), mask).detach()
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
