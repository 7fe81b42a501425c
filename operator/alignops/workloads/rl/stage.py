"""The ``rl`` stage: online RL in rounds. Each round samples ``samplesPerPrompt`` responses to
``promptsPerRound`` prompts with the current policy (a rollout engine,
``alignops.workloads.rollout``), scores them (``alignops.workloads.rl.rewards``), computes
advantages and updates the policy (``alignops.workloads.rl.update``), then commits: first the
round's rollouts (``<stage_key>/round-<n>/rollouts.jsonl``, ``alignops.workloads.rl.store``), then the
checkpoint ``<stage_key>/round-<n>/checkpoint-<step>/`` (policy, tokenizer, critic under ``critic/``
for ppo, optimizer/scheduler/RNG, ``rl_state.json``).

Roles (``StageRunConfig.role``; the planner picks them from ``placement``):
- ``all`` (placement ``colocated``): one process runs every round, policy, engine and trainer in
  memory; the engine samples from the trainer's weights (``update_weights`` each round).
- ``rollout`` for round n (placement ``split``): loads round n-1's checkpoint (or the start), samples
  and scores round n, writes its rollouts. ``train`` for round n: resumes the trainer from round
  n-1's checkpoint, reads round n's rollouts, updates and commits round n's checkpoint.
Sampling is seeded per prompt by (seed, round, prompt index) and the update's mini-batch order by
(seed, round, epoch): both placements, and a rerun, compute the same round from the same weights.
Colocated with vLLM, the engine sleeps (gives its GPU memory back) while the policy updates.

Resume: a rerun starts after the last committed round (a round whose rollouts were committed is
not sampled again). SIGTERM: the run stops at the next safe point (between generation calls or
optimiser steps) and exits 143; the committed rounds are its checkpoint, the round in flight is
redone from its start (its rollouts too, unless they were committed).

Metrics: one record per round in ``metrics.jsonl`` (the rollout run of a split round logs its
generation figures with ``phase: rollout``); each key becomes the Prometheus gauge of
``alignops.metrics.names`` with labels ``aj_namespace``, ``aj_name``, ``stage``, ``round``:

======================================  ===========================================  =====================================
record key                              Prometheus series                            meaning
======================================  ===========================================  =====================================
reward_mean, reward_std                 alignops_stage_reward_mean, _reward_std      R over the round's responses
reward_<function>                       alignops_stage_reward_<function>             mean unweighted reward per function
accuracy                                alignops_stage_accuracy                      held-out greedy accuracy (demo task)
kl                                      alignops_stage_kl                            mean per-token KL estimate to the ref
kl_coef                                 alignops_stage_kl_coef                       beta used in the round
loss                                    alignops_stage_loss                          total loss, mean over the steps
policy_loss                             alignops_stage_policy_loss                   clipped surrogate, mean over steps
kl_loss                                 alignops_stage_kl_loss                       KL term (placement in_loss)
value_loss                              alignops_stage_value_loss                    clipped value loss (ppo)
clip_fraction                           alignops_stage_clip_fraction                 share of tokens with an active clip
entropy                                 alignops_stage_entropy                       policy entropy on its samples
response_length_mean                    alignops_stage_response_length_mean          mean tokens per response
response_length_max                     alignops_stage_response_length_max           longest response, tokens
response_clip_ratio                     alignops_stage_response_clip_ratio           share cut at maxNewTokens
tokens_per_second_generate              alignops_stage_generate_tokens_per_second    generated tokens / generate time
tokens_per_second_train                 alignops_stage_train_tokens_per_second       update tokens / train time
time_generate, time_score               alignops_stage_generate_seconds, _score_...  seconds spent sampling, scoring
time_train, time_sync                   alignops_stage_train_seconds, _sync_seconds  updating; weights to the engine
time_eval                               alignops_stage_time_eval                     held-out evaluation, seconds
logprob_gap                             alignops_stage_logprob_gap                   mean abs(engine - trainer log-prob)
advantage_mean                          alignops_stage_advantage_mean                mean advantage over response tokens
critic_grad_norm                        alignops_stage_critic_grad_norm              critic gradient norm (ppo)
grad_norm, lr, step, total_steps        alignops_stage_grad_norm, _learning_rate...  as every trained stage
======================================  ===========================================  =====================================

Status metrics: ``accuracyBefore`` (before round 1) and ``accuracyAfter`` (after the last; greedy,
held-out, ``evalSize`` prompts), ``rewardFirst`` / ``rewardLast`` (reward mean of the first and last
round), ``loss``, ``kl``, ``logprobGap``, ``responseLength``, ``rounds``, ``steps``.

Modules of ``alignops.workloads.rl``: ``prompts``, ``sampling`` (generate and score a round),
``store`` (rollouts in storage), ``trainer`` (policy, reference, critic, the TrainLoop; one round's
update and commit), ``update`` (the update's math around ``alignops.algos``), ``batch`` (tensors),
``rewards``, ``critic``; engines in ``alignops.workloads.rollout``.
"""

from __future__ import annotations


import torch

from alignops.api.rl import RlHyperparameters
from alignops.workloads.context import RunContext
from alignops.contract import StageResult
from alignops.workloads.rl.prompts import held_out_task, load_prompts
from alignops.workloads.rl.sampling import RoundSampler, engine_for, reward_mix, rollout_policy
from alignops.workloads.rl.store import load_rollouts
from alignops.workloads.rl.trainer import RlState, Trainer
from alignops.workloads.rl.update import RlPlan
from alignops.workloads.stages.base import parse_hyperparameters


class RlStage:
    """Rounds of sample -> score -> update -> commit; its role picks what one run does."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.hp = parse_hyperparameters(RlHyperparameters, ctx)
        self.plan = RlPlan.resolve(ctx.config.algorithm or "grpo", self.hp)

    def run(self) -> StageResult:
        torch.manual_seed(self.hp.seed)
        if self.ctx.config.role == "rollout":
            return rollout_run(self.ctx, self.hp, self.plan, self.ctx.config.round or 1)
        return train_run(self.ctx, self.hp, self.plan)


STAGE = RlStage


def rollout_run(ctx: RunContext, hp: RlHyperparameters, plan: RlPlan, round_: int) -> StageResult:
    """Split placement, round n's rollout: sample with round n-1's checkpoint, commit the rollouts."""
    batch = load_rollouts(ctx.store, ctx.config.stage_key, round_)
    if batch is None:
        start = rollout_policy(ctx, hp)
        done = RlState.load(start.directory).rounds_done if start.resume is not None else 0
        if done != round_ - 1:
            raise RuntimeError(f"round {round_}'s rollout needs round {round_ - 1}'s checkpoint; the last committed round is {done}")
        prompts, _ = load_prompts(ctx, hp, start.tokenizer)
        engine = engine_for(ctx, hp, start.model, start.tokenizer, start.directory)
        batch = RoundSampler(ctx, hp, plan, start.tokenizer, prompts, engine, reward_mix(ctx, hp)).sample_round(round_)
        ctx.metrics.log({"round": round_, "phase": "rollout",
                         **{k: batch.stats[k] for k in ("time_generate", "time_score", "tokens_per_second_generate")}})
    metrics = {"rewardLast": batch.stats["reward_mean"]}
    if round_ == 1:
        metrics["rewardFirst"] = batch.stats["reward_mean"]
    return StageResult(checkpoint_uri=None, metrics=metrics)


def train_run(ctx: RunContext, hp: RlHyperparameters, plan: RlPlan) -> StageResult:
    """Colocated (role all): every remaining round. Split (role train): round n from its rollouts."""
    config = ctx.config
    first, last = (config.round or 1, config.round or 1) if config.role == "train" else (None, hp.rounds)
    trainer = Trainer(ctx, hp, plan)
    prompts, held = load_prompts(ctx, hp, trainer.tokenizer)
    trainer.begin(held, held_out_task(ctx, hp).is_correct)
    done = trainer.state.rounds_done
    if first is None:
        first = done + 1
    elif done >= first:  # an earlier attempt committed this round already
        return trainer.result()
    elif done != first - 1:
        raise RuntimeError(f"round {first}'s training needs round {first - 1}'s checkpoint; the last committed round is {done}")
    sampler = None
    for round_ in range(first, last + 1):
        batch = load_rollouts(ctx.store, config.stage_key, round_)
        time_sync = 0.0
        if batch is None:
            if config.role == "train":
                raise RuntimeError(f"round {round_} has no committed rollouts: its rollout run must succeed first")
            if sampler is None:
                engine = engine_for(ctx, hp, trainer.model, trainer.tokenizer, trainer.start.directory)
                sampler = RoundSampler(ctx, hp, plan, trainer.tokenizer, prompts, engine, reward_mix(ctx, hp, trainer.loop.engine.frozen),
                                       gathered=trainer.loop.engine.gathered)
            batch, time_sync = sampler.sync_and_sample(trainer.model, round_)
        trainer.train_round(batch, time_sync)
    return trainer.result()
