"""One round's policy (and critic) update: the trainer recomputes the behaviour ("old") and reference
log-probs of the rollouts, the KL term goes into the reward or the loss, the algorithm's advantage
estimator (``alignops.algos.ADVANTAGE_ESTIMATORS``) turns rewards into advantages, then ``ppoEpochs``
passes of ``miniBatches`` optimiser steps minimise the algorithm's policy loss
(``alignops.algos.POLICY_LOSSES``: the clipped surrogate, APA's squared loss or P3O's pairwise one;
plus the KL term and, with a critic, the clipped value loss).

Every per-token loss is reduced by ``aggregate_loss`` with the *mini-batch's* token and sequence
counts, so summing the micro-batches' losses gives exactly the whole mini-batch's loss: how a
mini-batch is cut into micro-batches (``batchSize``) never changes the gradient.

Tensor shapes: B rollouts of the round, T = L-1 next-token columns (``alignops.workloads.rl.batch``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch

from alignops.algos import (
    ADVANTAGE_ESTIMATORS,
    AdaptiveKLController,
    POLICY_LOSSES,
    AdvantageInputs,
    FixedKLController,
    PolicyLossInputs,
    aggregate_loss,
    clipped_value_loss,
    kl_shaped_token_rewards,
    masked_kl,
    masked_mean,
)
from alignops.api.rl import ADVANTAGE_ESTIMATOR_OF, KL_IN_LOSS_BY_DEFAULT, POLICY_LOSS_OF, RlHyperparameters
from alignops.workloads.distributed import SINGLE
from alignops.workloads.rl.batch import TokenBatch, response_logprobs, sharded, values_of
from alignops.seeds import MINIBATCH_EPOCH, ROUND, derive_seed
from alignops.workloads.training.loop import MicroBatchLoss, TrainLoop, read_back


@dataclass(frozen=True)
class RlPlan:
    """The stage's choices, resolved from ``algorithm`` and the hyperparameters' defaults."""

    algorithm: str
    estimator: str
    policy_loss: str  # a name of alignops.algos.POLICY_LOSSES
    kl_placement: str  # in_reward | in_loss
    kl_estimator: str  # k1 | k2 | k3
    use_reference: bool
    use_critic: bool
    greedy_baseline: bool
    # rows come in adjacent pairs answering one prompt (p3o): mini- and micro-batches keep them together
    pairwise: bool = False
    # one optimiser step per round and no KL in the reward: the policy has not moved when the step's
    # forward runs, so its detached log-probs are the old ones and no separate pass is needed (TRL
    # does the same when num_iterations = 1)
    old_from_update: bool = False

    @classmethod
    def resolve(cls, algorithm: str, hp: RlHyperparameters) -> "RlPlan":
        placement = hp.kl.placement or ("in_loss" if algorithm in KL_IN_LOSS_BY_DEFAULT else "in_reward")
        estimator = hp.kl.estimator or ("k3" if placement == "in_loss" else "k1")
        loss = POLICY_LOSS_OF[algorithm]
        traits = POLICY_LOSSES.traits(loss)
        return cls(
            algorithm=algorithm,
            estimator=ADVANTAGE_ESTIMATOR_OF[algorithm],
            policy_loss=loss,
            kl_placement=placement,
            kl_estimator=estimator,
            use_reference=hp.kl.beta > 0 or traits.needs_reference,
            use_critic=ADVANTAGE_ESTIMATOR_OF[algorithm] == "gae",
            greedy_baseline=algorithm == "remax",
            pairwise=traits.pairwise,
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
                  kl_coef: float, world=SINGLE,
                  autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                  ) -> tuple[RoundTensors, dict[str, float]]:
    """Old/reference log-probs and values (no grad; the rows shared out over the run's processes
    and gathered back), the KL term, advantages and returns.

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
            old_logp, entropy = sharded(lambda b: response_logprobs(policy, b, hp.temperature, with_entropy=True), batch, chunk, world)
            policy.train(was)
        ref_logp = sharded(lambda b: response_logprobs(reference, b, hp.temperature)[0], batch, chunk, world)[0] if reference is not None else None
        old_values = sharded(lambda b: values_of(critic, b), batch, chunk, world)[0] if critic is not None else None
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


def minibatch_order(hp: RlHyperparameters, round_: int, size: int, unit: int = 1) -> list[torch.Tensor]:
    """Row indices of every optimiser step of a round: per PPO epoch a fresh permutation (seeded by
    seed, round and epoch, so a rerun or the split placement takes the same steps) cut into
    ``miniBatches`` near-equal parts. With ``unit`` 2 (pairwise losses) the pairs of adjacent rows
    are permuted, so a pair stays adjacent, partner after partner, in every step."""
    steps = []
    offsets = torch.arange(unit)
    for epoch in range(hp.ppo_epochs):
        generator = torch.Generator().manual_seed(derive_seed(hp.seed, (ROUND, round_), (MINIBATCH_EPOCH, epoch)))
        units = torch.randperm(size // unit, generator=generator).tensor_split(hp.mini_batches)
        steps += [(part.unsqueeze(-1) * unit + offsets).reshape(-1) for part in units if len(part)]
    return steps


GLOBAL_FIGURES = ("grad_norm", "critic_grad_norm")  # the same on every process: never summed over them


class PolicyUpdate:
    """Optimiser steps over one round's rollouts through the stage's TrainLoop (the policy, and the
    critic as a second trained model whose gradient norm the engine clips on its own).

    Every process has the whole round; each takes every ``size``-th row of a mini-batch, cut into
    the same number of micro-batches on every process (a process with fewer rows repeats one with
    weight 0), since ZeRO-3 gathers weights in every forward pass."""

    def __init__(self, plan: RlPlan, hp: RlHyperparameters, policy, critic, loop: TrainLoop):
        self.plan, self.hp, self.policy, self.critic, self.loop = plan, hp, policy, critic, loop
        self.world = loop.world
        self.traits = POLICY_LOSSES.traits(plan.policy_loss)

    def micro_batches(self, rows: torch.Tensor) -> list[tuple[torch.Tensor, float]]:
        """(rows, weight) of this process's micro-batches of the mini-batch ``rows``: every size-th
        unit (a row, or a pair of rows for a pairwise loss, which stays whole) from its rank."""
        world, size = self.world, self.world.size
        unit = 2 if self.plan.pairwise else 1
        units = rows.view(-1, unit)
        count = -(-(-(-len(units) // size) * unit) // self.hp.batch_size)  # micro-batches of the largest share
        parts = list(units[world.rank :: size].reshape(-1).split(self.hp.batch_size))
        parts += [rows[:0]] * (count - len(parts))
        return [(part, float(size)) if len(part) else (rows[:unit], 0.0) for part in parts]

    def step(self, t: RoundTensors, rows: torch.Tensor, kl_coef: float) -> dict[str, float]:
        """One optimiser step on the mini-batch ``rows``; returns this process's share of its
        figures (summed over processes by ``run``) and the gradient norms (global already)."""
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

        def micro_loss(item: tuple[torch.Tensor, float]) -> MicroBatchLoss:
            micro, weight = item
            sub = t.batch.select(micro)
            mask = sub.response_mask
            width = mask.shape[1]
            with autocast():
                logp, entropy = response_logprobs(self.policy, sub, hp.temperature, with_entropy=fill)
            if fill and weight:
                t.old_logp[micro, :width] = logp.detach().float()
                t.entropy[micro, :width] = entropy.float()
            old_logp = t.old_logp[micro, :width] if weight or not fill else logp.detach().float()
            ref_logp = t.ref_logp[micro, :width] if t.ref_logp is not None else None
            pg = POLICY_LOSSES.get(plan.policy_loss)(PolicyLossInputs(
                logp, old_logp, t.advantages[micro, :width], mask, ref_logp=ref_logp,
                clip_low=hp.clip_low, clip_high=hp.clip_high, dual_clip=hp.dual_clip, apa_lambda=hp.apa_lambda))
            if self.traits.sequence_level:  # one figure per response: a mean over the mini-batch's responses
                policy_loss = pg.loss.sum() / len(rows)
            else:
                policy_loss = aggregate_loss(pg.loss, mask, hp.loss_aggregation, **norm)
            loss = policy_loss
            figures = {"policy_loss": 0.0, "kl_loss": 0.0, "value_loss": 0.0}
            if plan.kl_placement == "in_loss" and ref_logp is not None and kl_coef > 0:
                kl = masked_kl(plan.kl_estimator, logp, ref_logp, mask)
                kl_loss = aggregate_loss(kl, mask, hp.loss_aggregation, **norm)
                loss = loss + kl_coef * kl_loss
                figures["kl_loss"] = kl_loss.detach()
            losses = [loss]
            if self.critic is not None:
                with autocast():
                    values = values_of(self.critic, sub)
                value_loss = aggregate_loss(
                    clipped_value_loss(values, t.old_values[micro, :width], t.returns[micro, :width], hp.critic.value_clip, mask),
                    mask, "token_mean", num_global_tokens=n_tokens)
                losses.append(value_loss)
                figures["value_loss"] = value_loss.detach()
            # figures stay 0-dim device tensors; the round reads them back once (PolicyUpdate.run)
            tokens = mask.sum()
            figures.update(policy_loss=policy_loss.detach(), clipped_tokens=pg.clip_fraction * tokens,
                           tokens=tokens)
            return MicroBatchLoss(losses, int(sub.attention_mask.sum()) if weight else 0, figures)

        # every loss is normalised by the whole mini-batch's counts already; the weight is the
        # process count (the engines average gradients over processes), 0 for a padding repeat
        out = self.loop.optimizer_step(self.micro_batches(rows), micro_loss, lambda item: item[1])
        size = self.world.size  # figures stay on the device until the round's end (no host sync per step)
        figures = {**{k: v / size for k, v in out.metrics.items()}, "loss": out.loss / size,
                   "train_tokens": float(out.tokens)}
        figures["grad_norm"] = out.grad_norms[0]  # already global: not a share
        if len(out.grad_norms) > 1:
            figures["critic_grad_norm"] = out.grad_norms[1]
        return figures

    def run(self, t: RoundTensors, round_: int, kl_coef: float, should_stop: Callable[[], None]) -> dict[str, float]:
        """Every step of the round; ``should_stop()`` is called before each (it raises to stop)."""
        totals: dict[str, Any] = {}
        norms: dict[str, Any] = {}
        steps = minibatch_order(self.hp, round_, len(t.batch), 2 if self.plan.pairwise else 1)
        fill = t.old_logp is None
        for rows in steps:
            should_stop()
            for key, value in self.step(t, rows.to(t.advantages.device), kl_coef).items():
                into = norms if key in GLOBAL_FIGURES else totals
                into[key] = into.get(key, 0.0) + value
        totals = self.world.sum_floats(read_back(totals))  # each process held its share of every figure
        norms = read_back(norms)
        if fill and self.world.distributed:  # each row's old log-probs were filled by one process
            self.world.sum(t.old_logp)
            self.world.sum(t.entropy)
        n = max(1, len(steps))
        metrics = {
            "loss": totals["loss"] / n,
            "policy_loss": totals["policy_loss"] / n,
            "clip_fraction": totals["clipped_tokens"] / max(1.0, totals["tokens"]),
            "grad_norm": norms["grad_norm"] / n,
            "train_tokens": totals["train_tokens"],
        }
        if self.plan.kl_placement == "in_loss" and t.ref_logp is not None:
            metrics["kl_loss"] = totals["kl_loss"] / n
        if self.critic is not None:
            metrics["value_loss"] = totals["value_loss"] / n
            metrics["critic_grad_norm"] = norms["critic_grad_norm"] / n
        if self.plan.old_from_update:
            metrics.update(policy_figures(self.plan, t))
        return read_back(metrics)
