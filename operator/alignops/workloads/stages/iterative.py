"""The common shape of the stages that train in rounds on the policy's own samples
(``rejection_sampling``, ``online_dpo``, ``spin``), built on the rl stage's pieces.

A round: the rollout engine samples ``samplesPerPrompt`` responses to the round's
``promptsPerRound`` prompts with the current policy and the stage's scorer scores them
(``RoundSampler``: the reward functions, an LLM judge, or a match to the SFT response); the round's
rollouts are committed (``round-<n>/rollouts.jsonl``, then ``rollout_stats.json``); the stage turns
them into one or more training sets and takes ``stepsPerRound`` optimiser steps on each through the
stage's ``TrainLoop`` (``optimizer_step``: the engine seam every trained stage uses); the round's
checkpoint is committed (``round-<n>/checkpoint-<step>/`` with ``rl_state.json``) and its record
logged. A rerun resumes after the last committed round and reuses a round's committed rollouts; on
SIGTERM the run stops between generation calls or optimiser steps and exits 143, the round in
flight is redone.

Data order within a round: training set i of round n is read in seeded passes (``DataOrder``,
seeded by (seed, round, i)), ``min(batchSize, |set|)`` examples per micro-batch and
``gradientAccumulationSteps`` micro-batches per step, so a rerun takes the same steps.
"""

from __future__ import annotations

import time
from typing import Callable, ClassVar

import torch
from pydantic import BaseModel

from alignops.algos import IGNORE_INDEX
from alignops.contract import StageResult
from alignops.seeds import ROUND, TRAINING_SET, derive_seed
from alignops.workloads.context import RunContext
from alignops.workloads.data.sft import SftExample
from alignops.workloads.rl.prompts import held_out_task, load_prompts
from alignops.workloads.rl.rounds import RoundTrainer
from alignops.workloads.rl.sampling import RoundSampler, engine_for, reward_mix
from alignops.workloads.rl.store import Rollout, RoundRollouts, load_rollouts
from alignops.workloads.stages.base import parse_hyperparameters
from alignops.workloads.training.loop import MicroBatchLoss, read_back
from alignops.workloads.training.order import DataOrder

LossFn = Callable[[torch.nn.Module, list[int]], MicroBatchLoss]


def token_example(prompt_ids: list[int], response_ids: list[int], max_length: int | None = None) -> SftExample:
    """Prompt and response tokens as a training example, the prompt's labels masked, cut to
    ``max_length`` tokens when given."""
    input_ids = prompt_ids + response_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + response_ids
    return SftExample(input_ids=input_ids[:max_length], labels=labels[:max_length])


def rollout_example(rollout: Rollout, max_length: int | None = None) -> SftExample:
    """A sampled response as a training example: its tokens as sampled (no re-tokenisation)."""
    return token_example(rollout.prompt_ids, rollout.response_ids, max_length)


class IterativeStage:
    """Rounds of sample -> score -> train on the samples -> commit. Subclasses set
    ``hyperparameters`` and ``default_algorithm`` and fill in the hooks."""

    hyperparameters: ClassVar[type[BaseModel]]
    default_algorithm: ClassVar[str]
    # round record keys kept in every checkpoint's history, beside RoundTrainer's
    history_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.hp = parse_hyperparameters(self.hyperparameters, ctx)
        self.algorithm = ctx.config.algorithm or self.default_algorithm

    # -- hooks ------------------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse, as a ConfigError, a configuration that can never run, before any work."""

    def training_sets_per_round(self) -> int:
        return 1

    def load_prompts(self) -> tuple[list[dict], list[dict]]:
        """(training prompts ``{"prompt", "answer"}``, held-out prompts with answers)."""
        return load_prompts(self.ctx, self.hp, self.tokenizer)

    def prepare(self) -> None:
        """Called once the policy is loaded, before the first round (load a reference here)."""

    def scorer(self):
        """What scores the samples (``RewardMix``'s call signature); default: the reward functions."""
        return reward_mix(self.ctx, self.hp, self.trainer.loop.engine.frozen)

    def after_sampling(self, batch: RoundRollouts) -> None:
        """Called on a freshly sampled round, after its rollouts are committed."""

    def train_round(self, batch: RoundRollouts) -> dict[str, float]:
        """Train on one round's rollouts (``train_steps``); returns the round's figures."""
        raise NotImplementedError

    def totals(self) -> dict[str, float]:
        """Extra status metrics, from ``self.trainer.state.history`` (it survives resumes)."""
        return {}

    # -- the template -----------------------------------------------------------------------------
    @property
    def model(self) -> torch.nn.Module:
        return self.trainer.model

    def run(self) -> StageResult:
        self.check()
        hp, ctx = self.hp, self.ctx
        torch.manual_seed(hp.seed)
        self.trainer = trainer = RoundTrainer(ctx, hp)
        trainer.history_keys = RoundTrainer.history_keys + self.history_keys
        self.tokenizer, self.pad = trainer.tokenizer, trainer.tokenizer.pad_token_id
        trainer.make_loop(hp.rounds * hp.steps_per_round * self.training_sets_per_round())
        prompts, held = self.load_prompts()
        self.prepare()
        trainer.resume()  # once every model is loaded: the checkpoint's RNG state is the last word
        trainer.begin(held, held_out_task(ctx, hp).is_correct)
        sampler = None
        for round_ in range(trainer.state.rounds_done + 1, hp.rounds + 1):
            self.round = round_
            batch = load_rollouts(ctx.store, ctx.config.stage_key, round_)
            time_sync = 0.0
            if batch is None:
                if sampler is None:
                    engine = engine_for(ctx, hp, self.model, self.tokenizer, trainer.start.directory)
                    sampler = RoundSampler(ctx, hp, None, self.tokenizer, prompts, engine, self.scorer(),
                                           trainer.loop.engine.gathered)
                batch, time_sync = sampler.sync_and_sample(self.model, round_)
                self.after_sampling(batch)
            started = time.perf_counter()
            figures = self.train_round(batch)
            position = trainer.loop.state
            record = {"round": round_, "step": position.step, "total_steps": position.total_steps,
                      "lr": trainer.loop.engine.learning_rate(), **batch.stats, **figures,
                      "time_train": time.perf_counter() - started, "time_sync": time_sync}
            trainer.finish_round(round_, record)
        trained = [h["loss"] for h in trainer.state.history if "loss" in h]
        return trainer.result({**({"lossFirst": trained[0]} if trained else {}), **self.totals()})

    def train_steps(self, size: int, loss_fn: LossFn, training_set: int = 0,
                    units: Callable[[list[int]], float] = len) -> dict[str, float]:
        """``stepsPerRound`` optimiser steps on a training set of ``size`` items, ``loss_fn(model,
        indices)`` per micro-batch (the mean of ``units(indices)``: tokens for a token-mean loss,
        items by default); returns the steps' mean loss, gradient norm and loss figures (nothing
        when the set is empty: the round has nothing to learn from). On several processes each
        reads its share of every micro-batch (``TrainLoop.shared_step``)."""
        hp, loop, round_, world = self.hp, self.trainer.loop, self.round, self.ctx.world
        if size == 0:
            return {}
        accumulation = hp.gradient_accumulation_steps
        order = DataOrder(size, min(hp.batch_size, size), accumulation,
                          derive_seed(hp.seed, (ROUND, round_), (TRAINING_SET, training_set)))
        totals: dict[str, float] = {}
        for step in range(hp.steps_per_round):
            self.trainer.check_stop(round_)
            self.model.train()
            out = loop.shared_step([order.micro_batch(step, m) for m in range(accumulation)], loss_fn, units)
            # this process's shares; summed over processes below (the loss was weighted by the count)
            figures = {"loss": out.loss / world.size, **{k: v / world.size for k, v in out.metrics.items()}}
            for name, value in figures.items():
                totals[name] = totals.get(name, 0.0) + value / hp.steps_per_round
            totals["grad_norm"] = totals.get("grad_norm", 0.0) + out.grad_norms[0] / hp.steps_per_round  # already global
        summed = world.sum_floats({k: v for k, v in read_back(totals).items() if k != "grad_norm"})
        return {**summed, "grad_norm": float(totals["grad_norm"])}  # read back once per round, not per step

    def history_sum(self, key: str) -> float:
        return float(sum(h.get(key, 0) for h in self.trainer.state.history))
