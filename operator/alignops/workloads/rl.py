"""The ``rl`` stage: online RL in rounds. Each round samples ``samplesPerPrompt`` responses to
``promptsPerRound`` prompts with the current policy (a rollout engine,
``alignops.workloads.rollout``), scores them (``alignops.workloads.rl_rewards``), computes
advantages and updates the policy (``alignops.workloads.rl_update``), then commits: first the
round's rollouts (``<stage_key>/round-<n>/rollouts.jsonl``, ``alignops.workloads.rl_store``), then the
checkpoint ``<stage_key>/round-<n>/checkpoint-<step>/`` (policy, tokenizer, critic under ``critic/``
for ppo, optimizer/scheduler/RNG, ``rl_state.json``).

Roles (``StageRunConfig.role``; the planner picks them from ``placement``):
- ``all`` (placement ``colocated``): one process runs every round, policy, engine and trainer in
  memory; the engine samples from the trainer's weights (``update_weights`` each round).
- ``rollout`` for round n (placement ``split``): loads round n-1's checkpoint (or the start), samples
  and scores round n, writes its rollouts. ``train`` for round n: resumes the trainer from round
  n-1's checkpoint, reads round n's rollouts, updates and commits round n's checkpoint.
Sampling is seeded by (seed, round) and the update's mini-batch order by (seed, round, epoch): both
placements, and a rerun, compute the same round from the same weights.

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
response_length_mean, _max              alignops_stage_response_length_mean, _max    tokens per response
response_clip_ratio                     alignops_stage_response_clip_ratio           share cut at maxNewTokens
tokens_per_second_generate              alignops_stage_generate_tokens_per_second    generated tokens / generate time
tokens_per_second_train                 alignops_stage_train_tokens_per_second       update tokens / train time
time_generate, time_score               alignops_stage_generate_seconds, _score_...  seconds spent sampling, scoring
time_train, time_sync                   alignops_stage_train_seconds, _sync_seconds  updating; weights to the engine
time_eval                               alignops_stage_time_eval                     held-out evaluation, seconds
logprob_gap                             alignops_stage_logprob_gap                   mean abs(engine - trainer log-prob)
grad_norm, lr, step, total_steps        alignops_stage_grad_norm, _learning_rate...  as every trained stage
======================================  ===========================================  =====================================

Status metrics: ``accuracyBefore`` (before round 1) and ``accuracyAfter`` (after the last; greedy,
held-out, ``evalSize`` prompts), ``rewardFirst`` / ``rewardLast`` (reward mean of the first and last
round), ``loss``, ``kl``, ``logprobGap``, ``responseLength``, ``rounds``, ``steps``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from alignops.api.rl import RlHyperparameters
from alignops.workloads.context import ConfigError, RunContext, StopRequested
from alignops.workloads.critic import CRITIC_DIR, build_critic, load_critic
from alignops.workloads.data import load_records
from alignops.workloads.entrypoint import StageResult
from alignops.workloads.evaluation import encode_prompt, greedy_accuracy
from alignops.workloads.modeling import autocast_dtype, pick_device
from alignops.workloads.policy import initial_model, input_checkpoint, starting_policy
from alignops.workloads.rl_batch import pack
from alignops.workloads.rl_rewards import RewardMix, RewardResources, ScoringBatch, default_terms
from alignops.workloads.rl_store import Rollout, RoundRollouts, load_rollouts, save_rollouts
from alignops.workloads.rl_update import PolicyUpdate, RlPlan, kl_controller, prepare_round
from alignops.workloads.rollout import EngineInputs, SamplingSettings, make_engine
from alignops.workloads.sft import held_out_source, parse_hyperparameters
from alignops.workloads.training import TrainLoop

RL_STATE = "rl_state.json"


# -- data -----------------------------------------------------------------------------------------
def prompt_text(record: dict, tokenizer) -> str:
    """A prompt record's text: ``prompt``, or chat ``messages`` through the tokenizer's template."""
    if "prompt" in record:
        return record["prompt"]
    if "messages" in record:
        return tokenizer.apply_chat_template(record["messages"], tokenize=False, add_generation_prompt=True)
    raise ConfigError(f"a prompt record needs `prompt` or `messages`; got keys {sorted(record)}")


def load_prompts(ctx: RunContext, hp: RlHyperparameters, tokenizer) -> tuple[list[dict], list[dict]]:
    """(training prompts, held-out prompts with answers): records ``{"prompt", "answer"}``."""
    if ctx.config.datasets is None:
        raise ConfigError("datasets.train is required for an rl stage (records with `prompt`, and `answer` for verifiers)")
    options = ctx.storage_options
    train = [{"prompt": prompt_text(r, tokenizer), "answer": r.get("answer")}
             for r in load_records(ctx.config.datasets.train, "prompts", options=options)]
    source, verifiable = held_out_source(ctx, hp.eval_size)
    held = load_records(source, "prompts", held_out=verifiable, options=options) if source is not None else []
    held = [{"prompt": prompt_text(r, tokenizer), "answer": str(r["answer"])} for r in held if r.get("answer") is not None]
    return train, held


def round_prompts(prompts: list[dict], hp: RlHyperparameters, round_: int) -> list[dict]:
    """Round n reads prompts [(n-1)P, nP) of an endless sequence of seeded permutations of the data."""
    size = len(prompts)
    out = []
    for i in range((round_ - 1) * hp.prompts_per_round, round_ * hp.prompts_per_round):
        epoch, index = divmod(i, size)
        order = torch.randperm(size, generator=torch.Generator().manual_seed(hp.seed * 100_003 + epoch))
        out.append(prompts[int(order[index])])
    return out


def sample_seed(hp: RlHyperparameters, round_: int, call: int) -> int:
    return ((hp.seed * 1_000_003 + round_) * 1_000 + call) % (2**63)


# -- sampling and scoring -------------------------------------------------------------------------
class RoundSampler:
    """Generates and scores one round with the current policy, and commits its rollouts."""

    def __init__(self, ctx: RunContext, hp: RlHyperparameters, plan: RlPlan, tokenizer, prompts: list[dict], engine,
                 rewards: RewardMix):
        self.ctx, self.hp, self.plan, self.tokenizer, self.prompts, self.engine, self.rewards = ctx, hp, plan, tokenizer, prompts, engine, rewards

    def _check_stop(self, round_: int) -> None:
        if self.ctx.stop.is_set():
            raise StopRequested(f"stopped while sampling round {round_}; the rounds before it are committed")

    def _generate(self, ids: list[list[int]], sampling: SamplingSettings, round_: int, offset: int) -> list:
        out = []
        step = self.engine.prompts_per_call
        for call, start in enumerate(range(0, len(ids), step)):
            self._check_stop(round_)
            out += self.engine.generate(ids[start : start + step], sampling, sample_seed(self.hp, round_, offset + call))
        return out

    def _score(self, records: list[dict], completions: list, group_ids: list[int]):
        batch = ScoringBatch(
            prompts=[records[g]["prompt"] for g in group_ids],
            responses=[c.text for c in completions],
            answers=[records[g]["answer"] for g in group_ids],
            lengths=torch.tensor([len(c.token_ids) for c in completions]),
            group_ids=torch.tensor(group_ids),
            max_new_tokens=self.hp.max_new_tokens,
        )
        return self.rewards(batch)

    def sample_round(self, round_: int) -> RoundRollouts:
        hp, n = self.hp, self.hp.samples_per_prompt
        records = round_prompts(self.prompts, hp, round_)
        ids = [encode_prompt(self.tokenizer, r["prompt"])[-hp.max_prompt_length :] for r in records]
        sampling = SamplingSettings(n=n, temperature=hp.temperature, top_p=hp.top_p, max_new_tokens=hp.max_new_tokens,
                                    stop=tuple(hp.stop or ()))
        started = time.perf_counter()
        groups = self._generate(ids, sampling, round_, 0)
        greedy = None
        if self.plan.greedy_baseline:  # ReMax: one greedy response per prompt is the baseline
            greedy = [g[0] for g in self._generate(ids, SamplingSettings(max_new_tokens=hp.max_new_tokens, stop=sampling.stop, greedy=True),
                                                    round_, 500)]
        time_generate = time.perf_counter() - started
        completions = [c for group in groups for c in group]
        group_ids = [g for g, group in enumerate(groups) for _ in group]
        started = time.perf_counter()
        total, parts = self._score(records, completions, group_ids)
        baseline = self._score(records, greedy, list(range(len(records))))[0] if greedy is not None else None
        time_score = time.perf_counter() - started
        rollouts = [
            Rollout(group=g, prompt=records[g]["prompt"], answer=records[g]["answer"], prompt_ids=ids[g],
                    response_ids=c.token_ids, response=c.text, finish_reason=c.finish_reason, engine_logprobs=c.logprobs,
                    rewards={name: float(values[i]) for name, values in parts.items()}, score=float(total[i]),
                    baseline_score=float(baseline[g]) if baseline is not None else None)
            for i, (g, c) in enumerate(zip(group_ids, completions))
        ]
        lengths = torch.tensor([len(c.token_ids) for c in completions], dtype=torch.float32)
        generated = float(lengths.sum()) + (sum(len(c.token_ids) for c in greedy) if greedy else 0)
        stats = {
            "reward_mean": float(total.mean()),
            "reward_std": float(total.std(unbiased=False)),
            **{f"reward_{name}": float(values.mean()) for name, values in parts.items()},
            "response_length_mean": float(lengths.mean()),
            "response_length_max": float(lengths.max()),
            "response_clip_ratio": sum(c.finish_reason == "length" for c in completions) / len(completions),
            "time_generate": time_generate,
            "time_score": time_score,
            "tokens_per_second_generate": generated / time_generate if time_generate > 0 else 0.0,
        }
        batch = RoundRollouts(round_, rollouts, stats)
        save_rollouts(self.ctx.store, self.ctx.config.stage_key, batch)
        return batch


def reward_mix(ctx: RunContext, hp: RlHyperparameters) -> RewardMix:
    rm_uri = ctx.config.inputs.reward_model
    terms = hp.rewards or default_terms(rm_uri is not None)
    needs_rm = any(t.name == "reward_model" for t in terms)
    directory = ctx.open_uri(rm_uri) if (needs_rm and rm_uri) else None
    return RewardMix(terms, RewardResources(reward_model_dir=directory, device=pick_device(), batch_size=hp.generation_batch_size))


def engine_for(ctx: RunContext, hp: RlHyperparameters, model, tokenizer, directory: Path | None):
    """The rollout engine over ``model``; engines that load from disk get ``directory`` (or a copy of
    the in-memory weights saved to scratch)."""

    def model_dir() -> Path:
        if directory is not None:
            return directory
        target = ctx.scratch / "engine-start"
        model.save_pretrained(str(target), safe_serialization=True)
        tokenizer.save_pretrained(str(target))
        return target

    extra = {"autocast": autocast_dtype(hp.precision, next(model.parameters()).device),
             "max_model_len": getattr(model.config, "max_position_embeddings", None)}
    return make_engine(hp.engine, EngineInputs(model=model, tokenizer=tokenizer, model_dir=model_dir, hyperparameters=hp, extra=extra))


# -- training -------------------------------------------------------------------------------------
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


def _unused_loss(model, indices):
    raise AssertionError("the rl stage steps its optimizer itself (PolicyUpdate)")


class Trainer:
    """The policy (resumed from the stage's last committed round, else its input), the frozen
    reference, the critic (ppo), the optimizer (a TrainLoop's, for its commit and restore), the KL
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
            self.reference = initial_model(ctx, inputs.reference or inputs.policy).model.eval().requires_grad_(False)
        self.critic = self._critic() if plan.use_critic else None
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        if self.critic is not None:
            groups.append({"params": [p for p in self.critic.parameters() if p.requires_grad], "lr": hp.critic.learning_rate})
        steps_per_round = hp.ppo_epochs * min(hp.mini_batches, hp.prompts_per_round * hp.samples_per_prompt)
        self.loop = TrainLoop(ctx, self.model, hp, 1, _unused_loss, self._save_extra, parameters=groups,
                              total_steps=hp.rounds * steps_per_round)
        if start.resume is not None:
            self.loop.restore(start.directory, start.resume)
        self.kl = kl_controller(hp, self.state.kl_coef)
        self.update = PolicyUpdate(plan, hp, self.model, self.critic, self.loop, self.loop.autocast)

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
                                      baseline, kl_coef)
        metrics = self.update.run(tensors, round_, kl_coef, lambda: self._check_stop(round_))
        time_train = time.perf_counter() - started
        if "kl" in prep:
            self.kl.update(prep["kl"], len(rollouts))
        record = {"round": round_, "step": self.loop.step, "total_steps": self.loop.total_steps,
                  "lr": self.loop.scheduler.get_last_lr()[0], **batch.stats, **prep, "kl_coef": kl_coef}
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
        self.loop.round = round_
        self.loop.commit()
        self.ctx.metrics.log(record)
        return record

    def result(self) -> StageResult:
        metrics: dict[str, float] = {"rounds": self.state.rounds_done, "steps": self.loop.step}
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


# -- the runs -------------------------------------------------------------------------------------
def run(ctx: RunContext) -> StageResult:
    hp = parse_hyperparameters(RlHyperparameters, ctx)
    plan = RlPlan.resolve(ctx.config.algorithm or "grpo", hp)
    torch.manual_seed(hp.seed)
    if ctx.config.role == "rollout":
        return rollout_run(ctx, hp, plan, ctx.config.round or 1)
    return train_run(ctx, hp, plan)


def rollout_run(ctx: RunContext, hp: RlHyperparameters, plan: RlPlan, round_: int) -> StageResult:
    """Split placement, round n's rollout: sample with round n-1's checkpoint, commit the rollouts."""
    batch = load_rollouts(ctx.store, ctx.config.stage_key, round_)
    if batch is None:
        start = starting_policy(ctx)
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
    trainer.begin(held)
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
                sampler = RoundSampler(ctx, hp, plan, trainer.tokenizer, prompts, engine, reward_mix(ctx, hp))
            started = time.perf_counter()
            sampler.engine.update_weights(trainer.model)
            time_sync = time.perf_counter() - started
            batch = sampler.sample_round(round_)
        trainer.train_round(batch, time_sync)
    return trainer.result()
