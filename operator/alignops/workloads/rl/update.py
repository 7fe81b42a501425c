"""One round's policy (and critic) update: the trainer recomputes the behaviour ("old") and reference
log-probs of the rollouts, the KL term goes into the reward or the loss, the algorithm's advantage
estimator (``alignops.algos.ADVANTAGE_ESTIMATORS``) turns rewards into advantages, then ``ppoEpochs``
passes of ``miniBatches`` optimiser steps minimise the clipped surrogate (plus the KL term and, for
PPO, the clipped value loss).

Every per-token loss is reduced by ``aggregate_loss`` with the *mini-batch's* token and sequence
counts, so summing the micro-batches' losses gives exactly the whole mini-batch's loss: how a
mini-batch is cut into micro-batches (``batchSize``) never changes the gradient.

Tensor shapes: B rollouts of the round, T = L-1 next-token columns (``alignops.workloads.rl.batch``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch

from alignops.algos import (
    ADVANTAGE_ESTIMATORS,
    AdaptiveKLController,
    AdvantageInputs,
    FixedKLController,
    aggregate_loss,
    clipped_value_loss,
    kl_shaped_token_rewards,
    masked_kl,
    masked_mean,
    ppo_clip_loss,
)
from alignops.api.rl import ADVANTAGE_ESTIMATOR_OF, KL_IN_LOSS_BY_DEFAULT, RlHyperparameters
from alignops.workloads.rl.batch import TokenBatch, chunked, response_logprobs, values_of
from alignops.seeds import MINIBATCH_EPOCH, ROUND, derive_seed
from alignops.workloads.training.loop import MicroBatchLoss, TrainLoop, read_back


@dataclass(frozen=True)
class RlPlan:
    """The stage's choices, resolved from ``algorithm`` and the hyperparameters' defaults."""

    algorithm: str
    estimator: str
    kl_placement: str  # in_reward | in_loss
    kl_estimator: str  # k1 | k2 | k3
    use_reference: bool
    use_critic: bool
    greedy_baseline: bool
    # one optimiser step per round and no KL in the reward: the policy has not moved when the step's
    # forward runs, so its detached log-probs are the old ones and no separate pass is needed (TRL
    # does the same when num_iterations = 1)
    old_from_update: bool = False

    @classmethod
    def resolve(cls, algorithm: str, hp: RlHyperparameters) -> "RlPlan":
        placement = hp.kl.placement or ("in_loss" if algorithm in KL_IN_LOSS_BY_DEFAULT else "in_reward")
        estimator = hp.kl.estimator or ("k3" if placement == "in_loss" else "k1")
        return cls(
            algorithm=algorithm,
            estimator=ADVANTAGE_ESTIMATOR_OF[algorithm],
            kl_placement=placement,
            kl_estimator=estimator,
            use_reference=hp.kl.beta > 0,
            use_critic=algorithm == "ppo",
            greedy_baseline=algorithm == "remax",
            old_from_update=hp.ppo_epochs * hp.mini_batches == 1 and not (placement == "in_reward" and hp.kl.beta > 0),
        )


def kl_controller(hp: RlHyperparameters, value: float | None = None):
    """Fixed or adaptive (Ziegler et al.) KL coefficient; ``value`` restores a resumed one."""
    beta = hp.kl.beta if value is None else value
    if hp.kl.target is not None:
        return AdaptiveKLController(beta, hp.kl.target, hp.kl.horizon)
    return FixedKLController(beta)


@dataclass
class RoundTensors:
    """The round's fixed inputs of the update, all (B, T) except scores (B,)."""

    batch: TokenBatch
    old_logp: torch.Tensor | None  # None until the update's forward fills it (RlPlan.old_from_update)
    ref_logp: torch.Tensor | None
    old_values: torch.Tensor | None
    advantages: torch.Tensor
    returns: torch.Tensor
    entropy: torch.Tensor | None = None


def policy_figures(plan: RlPlan, t: RoundTensors) -> dict[str, float]:
    """Entropy of the policy on its samples and the KL estimate to the reference (token means)."""
    mask = t.batch.response_mask
    figures = {"entropy": float(masked_mean(t.entropy, mask))}
    if t.ref_logp is not None:
        kl = masked_kl(plan.kl_estimator, t.old_logp, t.ref_logp, mask)
        figures["kl"] = float(masked_mean(kl, mask))
    return figures


@torch.no_grad()
def prepare_round(plan: RlPlan, hp: RlHyperparameters, policy, reference, critic, batch: TokenBatch,
                  scores: torch.Tensor, group_ids: torch.Tensor, baseline_scores: torch.Tensor | None,
                  kl_coef: float, autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                  ) -> tuple[RoundTensors, dict[str, float]]:
    """Old/reference log-probs and values (no grad), the KL term, advantages and returns.

    Args:
        scores: (B,) R(x, y) of each rollout; group_ids: (B,) its prompt; baseline_scores: (B,)
            the greedy response's R (remax) or None; kl_coef: the current beta.
        autocast: the update's autocast (``engine.autocast``): the old and reference log-probs must
            be computed with the numerics of the update's forward, or under bf16 the importance
            ratio starts away from 1 (and clips) on a policy that has not moved.
    """
    mask = batch.response_mask
    chunk = hp.batch_size
    old_logp = entropy = None
    with autocast():
        if not plan.old_from_update:
            was = policy.training
            policy.eval()
            old_logp, entropy = chunked(lambda b: response_logprobs(policy, b, hp.temperature, with_entropy=True), batch, chunk)
            policy.train(was)
        ref_logp = chunked(lambda b: response_logprobs(reference, b, hp.temperature)[0], batch, chunk)[0] if reference is not None else None
        old_values = chunked(lambda b: values_of(critic, b), batch, chunk)[0] if critic is not None else None
    scores = scores.to(mask.device, torch.float32)
    metrics: dict[str, float] = {}
    kl = None
    if ref_logp is not None and old_logp is not None:
        kl = masked_kl(plan.kl_estimator, old_logp, ref_logp, mask)
    token_rewards = None
    if kl is not None and plan.kl_placement == "in_reward" and kl_coef > 0:
        token_rewards = kl_shaped_token_rewards(scores, kl, mask, kl_coef)
    inputs = AdvantageInputs(
        response_mask=mask,
        # with KL in the reward, outcome estimators score a response by its shaped rewards' sum (verl)
        scores=None if token_rewards is not None else scores,
        token_level_rewards=token_rewards,
        group_ids=group_ids.to(mask.device),
        values=old_values,
        baseline_scores=baseline_scores.to(mask.device, torch.float32) if baseline_scores is not None else None,
        gamma=hp.gamma,
        lam=hp.lam,
    )
    advantages, returns = ADVANTAGE_ESTIMATORS.get(plan.estimator)(inputs)
    metrics["advantage_mean"] = float(masked_mean(advantages, mask))
    tensors = RoundTensors(batch, old_logp, ref_logp, old_values, advantages, returns, entropy)
    if old_logp is not None:
        metrics.update(policy_figures(plan, tensors))
    return tensors, metrics


def minibatch_order(hp: RlHyperparameters, round_: int, size: int) -> list[torch.Tensor]:
    """Row indices of every optimiser step of a round: per PPO epoch a fresh permutation (seeded by
    seed, round and epoch, so a rerun or the split placement takes the same steps) cut into
    ``miniBatches`` near-equal parts."""
    steps = []
    for epoch in range(hp.ppo_epochs):
        generator = torch.Generator().manual_seed(derive_seed(hp.seed, (ROUND, round_), (MINIBATCH_EPOCH, epoch)))
        steps += [part for part in torch.randperm(size, generator=generator).tensor_split(hp.mini_batches) if len(part)]
    return steps


class PolicyUpdate:
    """Optimiser steps over one round's rollouts through the stage's TrainLoop (param group 0: the
    policy; group 1: the critic, whose gradient norm the engine clips on its own)."""

    def __init__(self, plan: RlPlan, hp: RlHyperparameters, policy, critic, loop: TrainLoop):
        self.plan, self.hp, self.policy, self.critic, self.loop = plan, hp, policy, critic, loop

    def step(self, t: RoundTensors, rows: torch.Tensor, kl_coef: float) -> dict[str, float]:
        """One optimiser step on the mini-batch ``rows``; returns its summed figures."""
        hp, plan = self.hp, self.plan
        autocast = self.loop.engine.autocast
        self.policy.train()
        if self.critic is not None:
            self.critic.train()
        n_tokens = t.batch.response_mask[rows].sum()
        norm = dict(num_global_tokens=n_tokens, num_global_seqs=len(rows), max_len=hp.max_new_tokens)
        fill = t.old_logp is None  # the round's only step: this forward's log-probs are the old ones
        if fill:
            t.old_logp = torch.zeros(t.batch.response_mask.shape, device=t.advantages.device)
            t.entropy = torch.zeros_like(t.old_logp)

        def micro_loss(micro: torch.Tensor) -> MicroBatchLoss:
            sub = t.batch.select(micro)
            mask = sub.response_mask
            width = mask.shape[1]
            with autocast():
                logp, entropy = response_logprobs(self.policy, sub, hp.temperature, with_entropy=fill)
            if fill:
                t.old_logp[micro, :width] = logp.detach().float()
                t.entropy[micro, :width] = entropy.float()
            pg = ppo_clip_loss(logp, t.old_logp[micro, :width], t.advantages[micro, :width], mask,
                               hp.clip_low, hp.clip_high, hp.dual_clip)
            policy_loss = aggregate_loss(pg.loss, mask, hp.loss_aggregation, **norm)
            loss = policy_loss
            figures = {"policy_loss": 0.0, "kl_loss": 0.0, "value_loss": 0.0}
            if plan.kl_placement == "in_loss" and t.ref_logp is not None and kl_coef > 0:
                kl = masked_kl(plan.kl_estimator, logp, t.ref_logp[micro, :width], mask)
                kl_loss = aggregate_loss(kl, mask, hp.loss_aggregation, **norm)
                loss = loss + kl_coef * kl_loss
                figures["kl_loss"] = kl_loss.detach()
            if self.critic is not None:
                with autocast():
                    values = values_of(self.critic, sub)
                value_loss = aggregate_loss(
                    clipped_value_loss(values, t.old_values[micro, :width], t.returns[micro, :width], hp.critic.value_clip, mask),
                    mask, "token_mean", num_global_tokens=n_tokens)
                loss = loss + value_loss
                figures["value_loss"] = value_loss.detach()
            # figures stay 0-dim device tensors; the round reads them back once (PolicyUpdate.run)
            tokens = mask.sum()
            figures.update(policy_loss=policy_loss.detach(), clipped_tokens=pg.clip_fraction * tokens,
                           tokens=tokens)
            return MicroBatchLoss(loss, int(sub.attention_mask.sum()), figures)

        # every loss is normalised by the whole mini-batch's counts already: no accumulation divisor
        out = self.loop.optimizer_step(rows.split(hp.batch_size), micro_loss)
        figures = {**out.metrics, "loss": out.loss, "train_tokens": float(out.tokens), "grad_norm": out.grad_norms[0]}
        if len(out.grad_norms) > 1:
            figures["critic_grad_norm"] = out.grad_norms[1]
        return figures

    def run(self, t: RoundTensors, round_: int, kl_coef: float, should_stop: Callable[[], None]) -> dict[str, float]:
        """Every step of the round; ``should_stop()`` is called before each (it raises to stop)."""
        totals: dict[str, float] = {}
        steps = minibatch_order(self.hp, round_, len(t.batch))
        for rows in steps:
            should_stop()
            for key, value in self.step(t, rows.to(t.advantages.device), kl_coef).items():
                totals[key] = totals.get(key, 0.0) + value
        n = max(1, len(steps))
        metrics = {
            "loss": totals["loss"] / n,
            "policy_loss": totals["policy_loss"] / n,
            "clip_fraction": totals["clipped_tokens"] / max(1.0, float(totals["tokens"])),
            "grad_norm": totals["grad_norm"] / n,
            "train_tokens": totals["train_tokens"],
        }
        if self.plan.kl_placement == "in_loss" and t.ref_logp is not None:
            metrics["kl_loss"] = totals["kl_loss"] / n
        if self.critic is not None:
            metrics["value_loss"] = totals["value_loss"] / n
            metrics["critic_grad_norm"] = totals["critic_grad_norm"] / n
        if self.plan.old_from_update:
            metrics.update(policy_figures(self.plan, t))
        return read_back(metrics)
