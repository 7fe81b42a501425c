"""Offline preference-optimisation losses: DPO and its neighbours.

All losses take sequence-level log-probabilities (see :func:`sequence_logprob`) and return
per-example losses; the trainer averages them. Rewards are the implicit rewards that trainers
log (detached).

References: DPO (arXiv:2305.18290); cDPO (Mitchell, "A note on DPO with noisy preferences",
2023); IPO (arXiv:2310.12036); SimPO (arXiv:2405.14734); ORPO (arXiv:2403.07691);
KTO (arXiv:2402.01306); RPO's NLL term (Pang et al., "Iterative Reasoning Preference Optimization",
arXiv:2404.19733; TRL ``rpo_alpha``; Llama 3's DPO).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .registry import Registry

__all__ = [
    "PREFERENCE_LOSSES",
    "PreferenceLossTraits",
    "PreferenceInputs",
    "PreferenceOptions",
    "KTOInputs",
    "LossOutput",
    "dpo",
    "cdpo",
    "ipo",
    "simpo",
    "orpo",
    "kto",
    "kto_reference_point",
]


@dataclass(frozen=True)
class PreferenceInputs:
    """A batch of B (prompt, chosen, rejected) triples, reduced to per-sequence numbers.

    Attributes:
        policy_chosen_logps: (B,) summed log pi(y_c | x) over the chosen response tokens.
        policy_rejected_logps: (B,) summed log pi(y_r | x).
        ref_chosen_logps: (B,) summed log pi_ref(y_c | x); needed by dpo, cdpo, ipo.
        ref_rejected_logps: (B,) summed log pi_ref(y_r | x).
        chosen_lengths: (B,) number of chosen response tokens; needed by simpo, orpo (and ipo
            with ``ipo_length_normalize``).
        rejected_lengths: (B,) number of rejected response tokens.
        chosen_nll: (B,) ORPO's SFT term, the mean token NLL of the chosen response; if None,
            orpo uses ``-policy_chosen_logps / chosen_lengths``, which is the same quantity.
    """

    policy_chosen_logps: Tensor
    policy_rejected_logps: Tensor
    ref_chosen_logps: Optional[Tensor] = None
    ref_rejected_logps: Optional[Tensor] = None
    chosen_lengths: Optional[Tensor] = None
    rejected_lengths: Optional[Tensor] = None
    chosen_nll: Optional[Tensor] = None


@dataclass(frozen=True)
class KTOInputs:
    """A batch of B unpaired (prompt, completion, label) examples for KTO.

    Attributes:
        policy_logps: (B,) summed log pi(y | x).
        ref_logps: (B,) summed log pi_ref(y | x).
        desirable: (B,) bool, True for a desirable (thumbs-up) completion.
        kl_ref: scalar reference point z_ref, from :func:`kto_reference_point` (detached,
            clamped at 0, averaged over the global batch by the trainer).
    """

    policy_logps: Tensor
    ref_logps: Tensor
    desirable: Tensor
    kl_ref: Union[Tensor, float]


@dataclass(frozen=True)
class PreferenceOptions:
    """Hyper-parameters; each loss reads only the fields it documents.

    Attributes:
        beta: inverse temperature of the implicit reward (dpo, cdpo, ipo, simpo, kto).
            SimPO's paper uses 2.0-2.5, the others ~0.1.
        label_smoothing: cDPO's eps, the assumed probability that a label is flipped
            (cdpo only; dpo refuses a non-zero value rather than silently ignoring it).
        ipo_length_normalize: IPO on per-token average log-probs. TRL does this for
            ``loss_type="ipo"``; OpenRLHF and the IPO formula in docs/algorithms.md use sums (False).
        simpo_gamma: SimPO's target reward margin gamma.
        orpo_lambda: ORPO's weight on the odds-ratio term (TRL calls it ``beta``).
        kto_desirable_weight: KTO lambda_D.
        kto_undesirable_weight: KTO lambda_U.
        rpo_alpha: weight of the chosen response's mean token NLL added to dpo, cdpo, ipo and
            simpo (RPO, arXiv:2404.19733; TRL ``rpo_alpha``). It keeps the chosen log-prob from
            falling with the rejected one, which plain DPO allows. 0 (default) is the plain loss;
            orpo (which has its own SFT term) and kto refuse a non-zero value.
    """

    beta: float = 0.1
    label_smoothing: float = 0.0
    ipo_length_normalize: bool = False
    simpo_gamma: float = 0.5
    orpo_lambda: float = 0.1
    kto_desirable_weight: float = 1.0
    kto_undesirable_weight: float = 1.0
    rpo_alpha: float = 0.0

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.kto_desirable_weight < 0 or self.kto_undesirable_weight < 0:
            raise ValueError("KTO weights must be >= 0")
        if self.rpo_alpha < 0:
            raise ValueError(f"rpo_alpha must be >= 0, got {self.rpo_alpha}")


class LossOutput(NamedTuple):
    """``losses`` (B,) per example; rewards detached, for logging and accuracy.

    For the paired losses both reward tensors are (B,). For KTO, ``chosen_rewards`` holds the
    desirable examples' rewards and ``rejected_rewards`` the undesirable ones' (in batch order,
    so their lengths are the two class counts), as TRL reports them.
    """

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


@dataclass(frozen=True)
class PreferenceLossTraits:
    """What a stage must know of a loss to feed it, so that it never branches on a name.

    needs_reference: takes reference log-probs (a frozen reference model is loaded).
    paired: takes chosen/rejected pairs (``PreferenceInputs``); else unpaired labelled examples
        (``KTOInputs``).
    adds_nll: holds a chosen-response NLL term of its own (so ``rpo_alpha`` cannot add one).
    length_normalised: compares per-token mean log-probs, not sums (held-out accuracy follows).
    """

    needs_reference: bool
    paired: bool = True
    adds_nll: bool = False
    length_normalised: bool = False


PreferenceLoss = Callable[..., LossOutput]
PREFERENCE_LOSSES: Registry[PreferenceLoss] = Registry("preference loss")


def _require(loss: str, inputs: PreferenceInputs, *fields: str) -> None:
    missing = [f for f in fields if getattr(inputs, f) is None]
    if missing:
        raise ValueError(f"preference loss {loss!r} needs {', '.join(missing)}")


def _dpo_margin(inputs: PreferenceInputs) -> Tensor:
    """z = (log pi(y_c) - log pi(y_r)) - (log pi_ref(y_c) - log pi_ref(y_r)), shape (B,)."""
    return (inputs.policy_chosen_logps - inputs.policy_rejected_logps) - (
        inputs.ref_chosen_logps - inputs.ref_rejected_logps
    )


def _ref_rewards(inputs: PreferenceInputs, beta: float) -> "tuple[Tensor, Tensor]":
    chosen = beta * (inputs.policy_chosen_logps - inputs.ref_chosen_logps)
    rejected = beta * (inputs.policy_rejected_logps - inputs.ref_rejected_logps)
    return chosen.detach(), rejected.detach()


def _with_chosen_nll(loss: str, losses: Tensor, inputs: PreferenceInputs, options: PreferenceOptions) -> Tensor:
    """``losses + rpo_alpha * NLL(y_c)`` with NLL(y_c) = ``-log pi(y_c) / |y_c|``, the chosen
    response's mean token NLL (RPO); ``losses`` unchanged when ``rpo_alpha`` is 0."""
    if options.rpo_alpha == 0:
        return losses
    _require(loss, inputs, "chosen_lengths")
    return losses - options.rpo_alpha * inputs.policy_chosen_logps / inputs.chosen_lengths.clamp(min=1)


def _refuse_rpo(loss: str, options: PreferenceOptions, why: str) -> None:
    if options.rpo_alpha != 0:
        raise ValueError(f"{loss} takes no rpo_alpha ({why}); leave it at 0")


def _average_logps(inputs: PreferenceInputs) -> "tuple[Tensor, Tensor]":
    c = inputs.policy_chosen_logps / inputs.chosen_lengths.clamp(min=1)
    r = inputs.policy_rejected_logps / inputs.rejected_lengths.clamp(min=1)
    return c, r


@PREFERENCE_LOSSES.register("dpo", traits=PreferenceLossTraits(needs_reference=True))
def dpo(inputs: PreferenceInputs, options: PreferenceOptions = PreferenceOptions()) -> LossOutput:
    """DPO (arXiv:2305.18290): ``-log sigmoid(beta * z)``, z as in :func:`_dpo_margin`.

    Needs policy and reference log-probs of both responses. Uses ``options.beta``; with
    ``options.rpo_alpha`` > 0 adds the chosen NLL (RPO) and needs ``chosen_lengths``.
    """
    _require("dpo", inputs, "ref_chosen_logps", "ref_rejected_logps")
    if options.label_smoothing != 0:
        raise ValueError("dpo has no label smoothing; use preference loss 'cdpo'")
    losses = -F.logsigmoid(options.beta * _dpo_margin(inputs))
    return LossOutput(_with_chosen_nll("dpo", losses, inputs, options), *_ref_rewards(inputs, options.beta))


@PREFERENCE_LOSSES.register("cdpo", traits=PreferenceLossTraits(needs_reference=True))
def cdpo(inputs: PreferenceInputs, options: PreferenceOptions = PreferenceOptions()) -> LossOutput:
    """Conservative DPO: labels flipped with probability eps = ``options.label_smoothing``.

    ``-(1 - eps) log sigmoid(beta z) - eps log sigmoid(-beta z)``; eps = 0 is DPO.
    (Mitchell 2023, "A note on DPO with noisy preferences"; TRL ``label_smoothing``.)
    """
    _require("cdpo", inputs, "ref_chosen_logps", "ref_rejected_logps")
    eps = options.label_smoothing
    logits = options.beta * _dpo_margin(inputs)
    losses = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
    return LossOutput(_with_chosen_nll("cdpo", losses, inputs, options), *_ref_rewards(inputs, options.beta))


@PREFERENCE_LOSSES.register("ipo", traits=PreferenceLossTraits(needs_reference=True))
def ipo(inputs: PreferenceInputs, options: PreferenceOptions = PreferenceOptions()) -> LossOutput:
    """IPO (arXiv:2310.12036): ``(z - 1/(2 beta))^2``, regressing z to a fixed margin.

    With ``options.ipo_length_normalize`` every log-prob is first divided by its response
    length (TRL's behaviour); then the lengths are required.
    """
    _require("ipo", inputs, "ref_chosen_logps", "ref_rejected_logps")
    compared = inputs
    if options.ipo_length_normalize:
        _require("ipo", inputs, "chosen_lengths", "rejected_lengths")
        lc = inputs.chosen_lengths.clamp(min=1)
        lr = inputs.rejected_lengths.clamp(min=1)
        compared = PreferenceInputs(
            policy_chosen_logps=inputs.policy_chosen_logps / lc,
            policy_rejected_logps=inputs.policy_rejected_logps / lr,
            ref_chosen_logps=inputs.ref_chosen_logps / lc,
            ref_rejected_logps=inputs.ref_rejected_logps / lr,
        )
    losses = (_dpo_margin(compared) - 1 / (2 * options.beta)) ** 2
    return LossOutput(_with_chosen_nll("ipo", losses, inputs, options), *_ref_rewards(compared, options.beta))


@PREFERENCE_LOSSES.register("simpo", traits=PreferenceLossTraits(needs_reference=False, length_normalised=True))
def simpo(inputs: PreferenceInputs, options: PreferenceOptions = PreferenceOptions()) -> LossOutput:
    """SimPO (arXiv:2405.14734): reference-free, length-normalised.

    ``-log sigmoid(beta * (log pi(y_c)/|y_c| - log pi(y_r)/|y_r|) - gamma)`` with
    gamma = ``options.simpo_gamma``. Needs lengths; ignores reference log-probs.
    """
    _require("simpo", inputs, "chosen_lengths", "rejected_lengths")
    avg_c, avg_r = _average_logps(inputs)
    losses = _with_chosen_nll("simpo", -F.logsigmoid(options.beta * (avg_c - avg_r) - options.simpo_gamma), inputs, options)
    return LossOutput(losses, (options.beta * avg_c).detach(), (options.beta * avg_r).detach())


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends (Maechler 2012)."""
    # x -> 0 would give log(0): a response whose every token has probability ~1. Keep it finite.
    x = x.clamp(max=-1e-6)
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


@PREFERENCE_LOSSES.register("orpo", traits=PreferenceLossTraits(needs_reference=False, adds_nll=True, length_normalised=True))
def orpo(inputs: PreferenceInputs, options: PreferenceOptions = PreferenceOptions()) -> LossOutput:
    """ORPO (arXiv:2403.07691): SFT on the chosen response plus an odds-ratio penalty.

    With p = per-token average probabilities, odds(y) = p / (1 - p) and
    ``log_or = log odds(y_c) - log odds(y_r)``:
    ``loss = NLL(y_c) - lambda * log sigmoid(log_or)``, lambda = ``options.orpo_lambda``.
    Needs lengths; NLL(y_c) is ``inputs.chosen_nll`` or the mean token NLL derived from the
    log-probs. Rewards are ``lambda * average log-prob`` (TRL's logged values).
    """
    _require("orpo", inputs, "chosen_lengths", "rejected_lengths")
    _refuse_rpo("orpo", options, "its loss already holds the chosen NLL")
    avg_c, avg_r = _average_logps(inputs)
    log_odds = (avg_c - avg_r) - (_log1mexp(avg_c) - _log1mexp(avg_r))
    nll = inputs.chosen_nll if inputs.chosen_nll is not None else -avg_c
    losses = nll - options.orpo_lambda * F.logsigmoid(log_odds)
    lam = options.orpo_lambda
    return LossOutput(losses, (lam * avg_c).detach(), (lam * avg_r).detach())


def kto_reference_point(policy_kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    """KTO's reference point z_ref = max(0, mean(log pi - log pi_ref)) on mismatched pairs.

    Args:
        policy_kl_logps: (B,) summed log pi(y_j | x_i) for completions paired with *other*
            prompts (TRL shifts the completions by one within the batch).
        ref_kl_logps: (B,) the same under the reference model.

    Returns:
        Scalar, detached: KTO treats z_ref as a constant (no gradient flows through it). In
        data-parallel training average the mean across ranks before clamping, as TRL does.
    """
    return (policy_kl_logps - ref_kl_logps).mean().clamp(min=0).detach()


@PREFERENCE_LOSSES.register("kto", traits=PreferenceLossTraits(needs_reference=True, paired=False))
def kto(inputs: KTOInputs, options: PreferenceOptions = PreferenceOptions()) -> LossOutput:
    """KTO (arXiv:2402.01306) on unpaired examples (note: takes :class:`KTOInputs`).

    With r = log pi(y|x) - log pi_ref(y|x) and z = ``inputs.kl_ref``:
    desirable: ``lambda_D * (1 - sigmoid(beta (r - z)))``;
    undesirable: ``lambda_U * (1 - sigmoid(beta (z - r)))``.

    Returns:
        ``LossOutput(losses (B,), chosen_rewards (n_D,), rejected_rewards (n_U,))`` with
        rewards ``beta * r``.
    """
    if not isinstance(inputs, KTOInputs):
        raise TypeError("kto takes KTOInputs (unpaired examples), not PreferenceInputs")
    _refuse_rpo("kto", options, "its examples are unpaired")
    beta = options.beta
    logratio = inputs.policy_logps - inputs.ref_logps
    z = torch.as_tensor(inputs.kl_ref, dtype=logratio.dtype, device=logratio.device).detach()
    desirable = inputs.desirable.bool()
    desirable_losses = options.kto_desirable_weight * (1 - torch.sigmoid(beta * (logratio - z)))
    undesirable_losses = options.kto_undesirable_weight * (1 - torch.sigmoid(beta * (z - logratio)))
    losses = torch.where(desirable, desirable_losses, undesirable_losses)
    rewards = (beta * logratio).detach()
    return LossOutput(losses, rewards[desirable], rewards[~desirable])
