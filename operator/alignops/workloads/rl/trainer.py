"""The rl stage's trainer side: the policy (resumed from the last committed round), the frozen
reference, the critic (ppo), the stage's TrainLoop (its engine steps the optimizer; it commits and
restores), the KL controller; one round's update, evaluation, commit and metrics record."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from alignops.api.rl import RlHyperparameters
from alignops.workloads.context import RunContext
from alignops.workloads.rl.critic import CRITIC_DIR, CRITIC_PREFIX, build_critic, load_critic
from alignops.workloads.models.checkpointing import enable_gradient_checkpointing
from alignops.workloads.models.loading import pick_device
from alignops.workloads.models.reference import frozen_reference
from alignops.workloads.models.policy import load_model
from alignops.workloads.rl.batch import pack
from alignops.workloads.rl.rounds import RL_STATE, RlState, RoundTrainer
from alignops.workloads.rl.store import Rollout, RoundRollouts
from alignops.workloads.rl.update import PolicyUpdate, RlPlan, kl_controller, prepare_round
from alignops.workloads.training.engine import Trainable

__all__ = ["RL_STATE", "RlState", "Trainer", "logprob_gap"]


class Trainer(RoundTrainer):
    """The rl stage's ``RoundTrainer``: also the frozen reference, the critic (ppo), the KL
    controller and the policy update."""

    def __init__(self, ctx: RunContext, hp: RlHyperparameters, plan: RlPlan):
        super().__init__(ctx, hp)
        self.plan = plan
        critic = self._critic() if plan.use_critic else None
        if hp.gradient_checkpointing and critic is not None:  # the policy's is RoundTrainer's
            enable_gradient_checkpointing(critic)
        extra = [Trainable(critic, CRITIC_PREFIX, hp.critic.learning_rate)] if critic is not None else []
        steps_per_round = hp.ppo_epochs * min(hp.mini_batches, hp.prompts_per_round * hp.samples_per_prompt)
        engine = self.make_loop(hp.rounds * steps_per_round, extra).engine
        self.critic = engine.models[1] if critic is not None else None
        self.reference = None
        if plan.use_reference:  # placed as the engine places models: sharded under ZeRO-3
            self.reference = frozen_reference(ctx, self.start, untrained=False, place=engine.frozen)
        self.resume()
        self.kl = kl_controller(hp, self.state.kl_coef)
        self.update = PolicyUpdate(plan, hp, self.model, self.critic, self.loop)

    def _critic(self):
        directory = self.start.directory
        if self.start.resume is not None:
            critic = load_critic(directory / CRITIC_DIR)
        else:
            inputs = self.ctx.config.inputs
            source = inputs.reward_model or inputs.policy or self.ctx.config.base_model.location
            torch.manual_seed(self.hp.seed)  # a new head's initialisation
            critic = (load_model(self.ctx, source, load_critic, build_critic).model if source is not None
                      else build_critic(self.ctx.config.base_model.architecture, self.tokenizer))
        critic.config.pad_token_id = self.tokenizer.pad_token_id
        return critic.to(pick_device())

    def save_more(self, directory: Path) -> None:
        if self.critic is not None:  # every process takes part: the engine gathers a sharded critic
            self.loop.engine.save_pretrained(self.critic, directory / CRITIC_DIR)

    def train_round(self, batch: RoundRollouts, time_sync: float = 0.0) -> dict:
        """Update on one round's rollouts, evaluate, commit the round's checkpoint, log its record."""
        hp, round_ = self.hp, batch.round
        device = next(self.model.parameters()).device
        rollouts = batch.rollouts
        started = time.perf_counter()
        tokens = pack([r.prompt_ids for r in rollouts], [r.response_ids for r in rollouts], self.tokenizer.pad_token_id, device)
        scores = torch.tensor([r.score for r in rollouts])
        group_ids = torch.tensor([r.group for r in rollouts])
        baseline = torch.tensor([r.baseline_score for r in rollouts]) if self.plan.greedy_baseline else None
        kl_coef = self.kl.value
        tensors, prep = prepare_round(self.plan, hp, self.model, self.reference, self.critic, tokens, scores, group_ids,
                                      baseline, kl_coef, self.world, self.loop.engine.autocast)
        metrics = self.update.run(tensors, round_, kl_coef, lambda: self.check_stop(round_))
        time_train = time.perf_counter() - started
        prep.update({k: metrics.pop(k) for k in ("entropy", "kl") if k in metrics})
        if "kl" in prep:
            self.kl.update(prep["kl"], len(rollouts))
        position = self.loop.state
        record = {"round": round_, "step": position.step, "total_steps": position.total_steps,
                  "lr": self.loop.engine.learning_rate(), **batch.stats, **prep, "kl_coef": kl_coef}
        gap = logprob_gap(rollouts, tensors.old_logp, tokens.response_mask)
        if gap is not None:
            record["logprob_gap"] = gap
        train_tokens = metrics.pop("train_tokens")
        record.update(metrics, time_train=time_train, time_sync=time_sync,
                      tokens_per_second_train=train_tokens / time_train if time_train > 0 else 0.0)
        self.state.kl_coef = self.kl.value
        return self.finish_round(round_, record)


def logprob_gap(rollouts: list[Rollout], trainer_logp: torch.Tensor, mask: torch.Tensor) -> float | None:
    """Mean |engine log-prob - trainer log-prob| over the response tokens of rollouts whose engine
    reported log-probs (a broken weight sync shows up here first)."""
    total, count = 0.0, 0
    for row, r in enumerate(rollouts):
        if r.engine_logprobs is None:
            continue
        columns = mask[row].nonzero().squeeze(-1)
        engine = torch.tensor(r.engine_logprobs, dtype=torch.float32, device=trainer_logp.device)
        total += float((engine - trainer_logp[row, columns]).abs().sum())
        count += len(r.engine_logprobs)
    return total / count if count else None
