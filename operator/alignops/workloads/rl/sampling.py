"""One round's samples: the rollout engine generates ``samplesPerPrompt`` responses to the round's
prompts (and, for ReMax, one greedy response each), the reward functions score them, and the round's
rollouts are committed to storage (``alignops.workloads.rl.store``)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from alignops.api.rl import RlHyperparameters
from alignops.workloads.context import RunContext, StopRequested
from alignops.workloads.data.batching import encode_prompt
from alignops.workloads.models.loading import autocast_dtype, pick_device
from alignops.workloads.rl.prompts import round_prompts
from alignops.workloads.rl.rewards import RewardMix, RewardResources, ScoringBatch, default_terms
from alignops.workloads.rl.store import Rollout, RoundRollouts, save_rollouts
from alignops.workloads.rl.update import RlPlan
from alignops.workloads.rollout import EngineInputs, SamplingSettings, make_engine
from alignops.seeds import GENERATE_CALL, ROUND, derive_seed


def sample_seed(hp: RlHyperparameters, round_: int, call: int) -> int:
    return derive_seed(hp.seed, (ROUND, round_), (GENERATE_CALL, call))


class RoundSampler:
    """Generates and scores one round with the current policy, and commits its rollouts.

    ``hp`` is any hyperparameters model with the rollout settings (``RolloutSettings``); ``plan`` is
    the rl stage's (None: no greedy baseline); ``rewards`` any scorer with ``RewardMix``'s call
    signature (the stages built on these pieces pass their own: an LLM judge, a match to the SFT
    response)."""

    def __init__(self, ctx: RunContext, hp: RlHyperparameters, plan: RlPlan | None, tokenizer, prompts: list[dict], engine,
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
        if self.plan is not None and self.plan.greedy_baseline:  # ReMax: one greedy response per prompt is the baseline
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
