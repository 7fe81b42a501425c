"""One round's samples: the rollout engine generates ``samplesPerPrompt`` responses to the round's
prompts (and, for ReMax, one greedy response each), the reward functions score them, and the round's
rollouts are committed to storage (``alignops.workloads.rl.store``)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, ContextManager

import torch

from alignops.api.rl import RlHyperparameters
from alignops.workloads.context import RunContext, StopRequested
from alignops.workloads.data.batching import encode_prompt
from alignops.workloads.models.adapter import save_plain_model
from alignops.workloads.models.loading import autocast_dtype, load_reward_model, pick_device
from alignops.workloads.models.policy import Starting, initial_model, model_directory, open_tokenizer, starting_policy
from alignops.workloads.rl.prompts import round_prompts
from alignops.workloads.rl.rewards import RewardMix, RewardResources, ScoringBatch, default_terms
from alignops.workloads.rl.store import Rollout, RoundRollouts, save_rollouts
from alignops.workloads.rl.update import RlPlan
from alignops.workloads.rollout import EngineInputs, SamplingSettings, engine_traits, make_engine
from alignops.seeds import GENERATE_CALL, PROMPT, ROUND, SAMPLE, derive_seed

SAMPLED, GREEDY = 0, 1  # the generation passes of a round (GENERATE_CALL coordinate)


def prompt_seeds(hp: RlHyperparameters, round_: int, pass_: int, count: int) -> list[int]:
    """One seed per prompt of the round: the samples of two prompts never share a noise stream
    (equal prompts included), and a rerun, the other placement or another process count draws the
    same ones."""
    return [derive_seed(hp.seed, (ROUND, round_), (GENERATE_CALL, pass_), (PROMPT, i), (SAMPLE, 0)) for i in range(count)]


class RoundSampler:
    """Generates and scores one round with the current policy, and commits its rollouts.

    ``hp`` is any hyperparameters model with the rollout settings (``RolloutSettings``); ``plan`` is
    the rl stage's (None: no greedy baseline); ``rewards`` any scorer with ``RewardMix``'s call
    signature (the stages built on these pieces pass their own: an LLM judge, a match to the SFT
    response).

    On several processes each generates every ``size``-th prompt's group (groups stay whole for the
    group advantages) with the weights gathered once for the round (``gathered``: ZeRO-3's whole
    weights), and every process gets the whole round back; the main process commits it."""

    def __init__(self, ctx: RunContext, hp: RlHyperparameters, plan: RlPlan | None, tokenizer, prompts: list[dict], engine,
                 rewards: RewardMix, gathered: Callable[[], ContextManager] = contextlib.nullcontext):
        self.ctx, self.hp, self.plan, self.tokenizer, self.prompts, self.engine, self.rewards = ctx, hp, plan, tokenizer, prompts, engine, rewards
        self.gathered = gathered
        self.world = ctx.world

    def _check_stop(self, round_: int) -> None:
        if self.world.any(self.ctx.stop.is_set()):
            raise StopRequested(f"stopped while sampling round {round_}; the rounds before it are committed")

    def _generate(self, ids: list[list[int]], sampling: SamplingSettings, round_: int, pass_: int) -> list:
        """Completions of every prompt in ``ids``; on several processes each generates its share
        (with the prompts' own seeds) and every process gets them all back."""
        world = self.world
        mine = list(range(world.rank, len(ids), world.size))
        seeds = prompt_seeds(self.hp, round_, pass_, len(ids))
        out = []
        step = self.engine.prompts_per_call
        with self.gathered():
            for start in range(0, len(mine), step):
                if not world.distributed:  # several processes agree to stop once per round instead
                    self._check_stop(round_)
                chunk = mine[start : start + step]
                out += self.engine.generate([ids[i] for i in chunk], sampling, [seeds[i] for i in chunk])
        if not world.distributed:
            return out
        merged: list = [None] * len(ids)
        for rank, part in enumerate(world.all_gather_object(out)):
            for position, completions in zip(range(rank, len(ids), world.size), part):
                merged[position] = completions
        return merged

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

    def sync_and_sample(self, model, round_: int) -> tuple[RoundRollouts, float]:
        """(round ``round_`` sampled with ``model``'s current weights, the seconds the weight sync
        took); the engine then sleeps, so the update gets the GPU memory it held."""
        started = time.perf_counter()
        with self.gathered():  # whole weights for an engine that copies them (ZeRO-3)
            self.engine.update_weights(model)
        time_sync = time.perf_counter() - started
        batch = self.sample_round(round_)
        self.engine.sleep()
        return batch, time_sync

    def sample_round(self, round_: int) -> RoundRollouts:
        hp, n = self.hp, self.hp.samples_per_prompt
        records = round_prompts(self.prompts, hp, round_)
        ids = [encode_prompt(self.tokenizer, r["prompt"])[-hp.max_prompt_length :] for r in records]
        sampling = SamplingSettings(n=n, temperature=hp.temperature, top_p=hp.top_p, max_new_tokens=hp.max_new_tokens,
                                    stop=tuple(hp.stop or ()))
        started = time.perf_counter()
        if self.world.distributed:
            self._check_stop(round_)
        groups = self._generate(ids, sampling, round_, SAMPLED)
        greedy = None
        if self.plan is not None and self.plan.greedy_baseline:  # ReMax: one greedy response per prompt is the baseline
            greedy = [g[0] for g in self._generate(ids, SamplingSettings(max_new_tokens=hp.max_new_tokens, stop=sampling.stop, greedy=True),
                                                    round_, GREEDY)]
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
        if self.world.is_main:
            save_rollouts(self.ctx.store, self.ctx.config.stage_key, batch)
        return batch


def reward_mix(ctx: RunContext, hp: RlHyperparameters, place=None) -> RewardMix:
    """The stage's reward functions; ``place`` puts a reward model where the engine puts frozen models."""
    rm_uri = ctx.config.inputs.reward_model
    terms = hp.rewards or default_terms(rm_uri is not None)
    needs_rm = any(t.name == "reward_model" for t in terms)
    directory = model_directory(ctx, rm_uri, load_reward_model) if (needs_rm and rm_uri) else None
    return RewardMix(terms, RewardResources(reward_model_dir=directory, device=pick_device(), batch_size=hp.generation_batch_size,
                                            place=place))


def rollout_policy(ctx: RunContext, hp: RlHyperparameters) -> Starting:
    """The policy a split rollout run samples with. An engine that loads from disk gets the
    checkpoint's directory and tokenizer only: no trainer copy of the model is loaded (a base model
    built from its architecture is built, then saved for the engine by ``engine_for``)."""
    if not engine_traits(hp.engine).loads_from_disk:
        return starting_policy(ctx)
    resume = ctx.latest()
    location = ctx.config.inputs.policy or ctx.config.base_model.location
    if resume is None and location is None:
        return initial_model(ctx, None)
    directory = ctx.checkpoint_dir(resume) if resume is not None else model_directory(ctx, location)
    return Starting(None, open_tokenizer(ctx, directory), resume, directory)


def engine_extra(hp: RlHyperparameters, model_config, device: torch.device) -> dict:
    """What the stage tells an engine beyond its hyperparameters: the trainer's autocast dtype (and
    the engine's weight dtype to match), the longest sequence the stage can ask for (prompt +
    response budget, within the model's context), and whether it shares the GPU with the trainer."""
    autocast = autocast_dtype(hp.precision, device)
    budget = hp.max_prompt_length + hp.max_new_tokens
    context = getattr(model_config, "max_position_embeddings", None)
    return {"autocast": autocast,
            "dtype": "bfloat16" if autocast == torch.bfloat16 else "float32",
            "max_model_len": min(budget, context) if context else budget,
            "colocated": getattr(hp, "placement", "colocated") == "colocated"}  # a generate stage samples in place


def engine_for(ctx: RunContext, hp: RlHyperparameters, model, tokenizer, directory: Path | None):
    """The rollout engine over ``model`` (None for a split rollout run of an engine that loads from
    disk); engines that load from disk get ``directory`` (or a copy of the in-memory weights saved
    to scratch)."""

    def model_dir() -> Path:
        if directory is not None:
            return directory
        target = ctx.scratch / "engine-start"
        save_plain_model(model, target)
        tokenizer.save_pretrained(str(target))
        return target

    if model is not None:
        config, device = model.config, next(model.parameters()).device
    else:
        from transformers import AutoConfig

        config, device = AutoConfig.from_pretrained(str(directory)), pick_device()
    extra = engine_extra(hp, config, device)
    return make_engine(hp.engine, EngineInputs(model=model, tokenizer=tokenizer, model_dir=model_dir, hyperparameters=hp, extra=extra))
