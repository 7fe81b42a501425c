"""The rl stage's trainer side: the policy (resumed from the last committed round), the frozen
reference, the critic (ppo), the stage's TrainLoop (its engine steps the optimizer; it commits and
restores), the KL controller; one round's update, evaluation, commit and metrics record."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from alignops.api.rl import RlHyperparameters
from alignops.workloads.context import RunContext, StopRequested
from alignops.workloads.rl.critic import CRITIC_DIR, build_critic, load_critic
from alignops.contract import StageResult
from alignops.workloads.evaluation.generation import greedy_accuracy
from alignops.workloads.models.checkpointing import enable_gradient_checkpointing
from alignops.workloads.models.loading import pick_device
from alignops.workloads.models.reference import freeze
from alignops.workloads.models.policy import initial_model, input_checkpoint, starting_policy
from alignops.workloads.rl.batch import pack
from alignops.workloads.rl.store import Rollout, RoundRollouts
from alignops.workloads.rl.update import PolicyUpdate, RlPlan, kl_controller, prepare_round
from alignops.workloads.training.loop import TrainLoop

RL_STATE = "rl_state.json"


@dataclass
class RlState:
    """What every checkpoint carries beyond the weights and the optimizer: rounds done, the KL
    coefficient, the held-out figures before round 1, and a one-line summary per round."""

    rounds_done: int = 0
    kl_coef: float | None = None
    before: dict[str, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    @classmethod
    def load(cls, directory: Path) -> "RlState":
        return cls(**json.loads((directory / RL_STATE).read_text()))

    def save(self, directory: Path) -> None:
        (directory / RL_STATE).write_text(json.dumps(asdict(self)))


class Trainer:
    """The policy (resumed from the stage's last committed round, else its input), the frozen
    reference, the critic (ppo), the TrainLoop (optimizer steps, commit and restore), the KL
    controller and the held-out prompts."""

    def __init__(self, ctx: RunContext, hp: RlHyperparameters, plan: RlPlan):
        self.ctx, self.hp, self.plan = ctx, hp, plan
        self.eval_records: list[dict] = []
        start = starting_policy(ctx)
        self.start = start
        self.model, self.tokenizer = start.model, start.tokenizer
        self.state = RlState.load(start.directory) if start.resume is not None else RlState()
        inputs = ctx.config.inputs
        self.reference = None
        if plan.use_reference:
            self.reference = freeze(initial_model(ctx, inputs.reference or inputs.policy).model)
        self.critic = self._critic() if plan.use_critic else None
        if hp.gradient_checkpointing:
            enable_gradient_checkpointing(*[m for m in (self.model, self.critic) if m is not None])
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        if self.critic is not None:
            groups.append({"params": [p for p in self.critic.parameters() if p.requires_grad], "lr": hp.critic.learning_rate})
        steps_per_round = hp.ppo_epochs * min(hp.mini_batches, hp.prompts_per_round * hp.samples_per_prompt)
        # no dataset pass: PolicyUpdate feeds the loop's optimizer_step its own micro-batches
        self.loop = TrainLoop(ctx, self.model, hp, None, self._save_extra, total_steps=hp.rounds * steps_per_round,
                              parameter_groups=groups)
        if start.resume is not None:
            self.loop.restore(start.directory, start.resume)
        self.kl = kl_controller(hp, self.state.kl_coef)
        self.update = PolicyUpdate(plan, hp, self.model, self.critic, self.loop)

    def begin(self, eval_records: list[dict]) -> None:
        """Set the held-out prompts; a fresh stage evaluates its starting policy on them."""
        self.eval_records = eval_records
        if self.start.resume is None:
            self.state.before = self.evaluate()

    def _critic(self):
        directory = self.start.directory
        if self.start.resume is not None:
            critic = load_critic(directory / CRITIC_DIR)
        else:
            inputs = self.ctx.config.inputs
            source = self.ctx.open_uri(inputs.reward_model) if inputs.reward_model else input_checkpoint(self.ctx, inputs.policy)
            torch.manual_seed(self.hp.seed)  # a new head's initialisation
            critic = load_critic(source) if source is not None else build_critic(self.ctx.config.base_model.architecture, self.tokenizer)
        critic.config.pad_token_id = self.tokenizer.pad_token_id
        return critic.to(pick_device())

    def _save_extra(self, directory: Path) -> None:
        self.tokenizer.save_pretrained(str(directory))
        if self.critic is not None:
            self.critic.save_pretrained(str(directory / CRITIC_DIR), safe_serialization=True)
        self.state.save(directory)

    def evaluate(self) -> dict[str, float]:
        if not self.eval_records:
            return {}
        return {"accuracy": greedy_accuracy(self.model, self.tokenizer, self.eval_records, self.hp.max_new_tokens)}

    def _check_stop(self, round_: int) -> None:
        if self.ctx.stop.is_set():
            raise StopRequested(f"stopped while training round {round_}; rounds 1..{self.state.rounds_done} are committed")

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
                                      baseline, kl_coef, self.loop.engine.autocast)
        metrics = self.update.run(tensors, round_, kl_coef, lambda: self._check_stop(round_))
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
        if round_ % hp.eval_every == 0 or round_ == hp.rounds:
            started = time.perf_counter()
            record.update(self.evaluate())
            record["time_eval"] = time.perf_counter() - started
        self.state.rounds_done = round_
        self.state.kl_coef = self.kl.value
        self.state.history.append({k: record[k] for k in ("round", "reward_mean", "loss", "kl", "accuracy", "logprob_gap",
                                                           "response_length_mean") if k in record})
        position.round = round_
        self.loop.commit()
        self.ctx.metrics.log(record)
        return record

    def result(self) -> StageResult:
        metrics: dict[str, float] = {"rounds": self.state.rounds_done, "steps": self.loop.state.step}
        for name, value in self.state.before.items():
            metrics[f"{name}Before"] = value
        history = self.state.history
        if history:
            last = history[-1]
            metrics.update(rewardFirst=history[0]["reward_mean"], rewardLast=last["reward_mean"], loss=last["loss"])
            for key, name in (("kl", "kl"), ("logprob_gap", "logprobGap"), ("response_length_mean", "responseLength")):
                if key in last:
                    metrics[name] = last[key]
            evaluated = [h for h in history if "accuracy" in h]
            if evaluated:
                metrics["accuracyAfter"] = evaluated[-1]["accuracy"]
        uri = self.loop.committed.uri if self.loop.committed is not None else None
        return StageResult(checkpoint_uri=uri, metrics=metrics)


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
