"""Per-token KL estimators, KL reward shaping and KL-coefficient controllers.

Estimators follow Schulman, "Approximating KL divergence" (2020): with d = log pi - log pi_ref
on tokens sampled from pi, k1 = d, k2 = d^2 / 2, k3 = exp(-d) + d - 1 estimate KL(pi || pi_ref);
k3 is unbiased and always >= 0 (GRPO's choice, arXiv:2402.03300).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .logprobs import place_on_last_token
from .registry import Registry

__all__ = [
    "KL_ESTIMATORS",
    "LOG_RATIO_CLAMP",
    "k1",
    "k2",
    "k3",
    "kl_shaped_token_rewards",
    "masked_kl",
    "FixedKLController",
    "AdaptiveKLController",
]

LOG_RATIO_CLAMP = 20.0
"""|log pi - log pi_ref| is clamped here: exp(20) ~ 5e8 is finite in fp32 and no real policy
gets there, while one garbage token (e.g. a rollout/trainer mismatch) cannot produce inf."""

KL_ESTIMATORS: Registry[Callable[[Tensor, Tensor], Tensor]] = Registry("KL estimator")


def _log_ratio(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return (logp - ref_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


@KL_ESTIMATORS.register("k1")
def k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = d = log pi - log pi_ref, per token (any shape, e.g. (B, T)). Unbiased, can be < 0."""
    return _log_ratio(logp, ref_logp)


@KL_ESTIMATORS.register("k2")
def k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = d^2 / 2, per token. Biased, low variance, >= 0; its gradient is that of the KL."""
    return 0.5 * _log_ratio(logp, ref_logp) ** 2


@KL_ESTIMATORS.register("k3")
def k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = exp(-d) + d - 1 (= ratio - 1 - log ratio with ratio = pi_ref / pi), per token.

    Unbiased and >= 0; verl's ``low_var_kl``, TRL GRPO's KL term.
    """
    d = _log_ratio(logp, ref_logp)
    return torch.exp(-d) + d - 1


def masked_kl(estimator: str, logp: Tensor, ref_logp: Tensor, mask: Tensor) -> Tensor:
    """(B, T) the named estimator's per-token KL of ``logp`` to ``ref_logp``, 0 outside ``mask``
    (padding never carries a KL, whatever garbage its log-probs hold)."""
    return torch.where(mask, KL_ESTIMATORS.get(estimator)(logp, ref_logp), torch.zeros_like(logp))


def kl_shaped_token_rewards(scores: Tensor, kl: Tensor, mask: Tensor, beta: float) -> Tensor:
    """Token rewards ``r_t = -beta * KL_t + [t = last valid token] * R`` (arXiv:1909.08593).

    Args:
        scores: (B,) outcome reward R(x, y).
        kl: (B, T) per-token KL estimate (see ``KL_ESTIMATORS``); usually detached.
        mask: (B, T) response tokens.
        beta: KL coefficient (a controller's ``value``).

    Returns:
        (B, T), 0 at masked positions.
    """
    m = mask.bool()
    penalty = torch.where(m, -beta * kl, torch.zeros_like(kl))
    return penalty + place_on_last_token(scores.to(penalty.dtype), m)


class FixedKLController:
    """A constant KL coefficient; ``update`` is a no-op so both controllers are interchangeable."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


class AdaptiveKLController:
    """Proportional controller steering the observed KL to ``target`` (Ziegler et al.,
    arXiv:1909.08593, section 2.2).

    ``e = clip(KL / target - 1, -0.2, 0.2)``; ``beta <- beta * (1 + e * n_steps / horizon)``.
    The clip bounds one update's change, so a single noisy KL estimate cannot swing beta.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError("target and horizon must be > 0")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Adjust and return the coefficient after ``n_steps`` samples with mean KL ``current_kl``."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value
