"""Settings of the online RL stage type ``rl``: rollout, rewards, KL, the policy (and critic) update,
engine and placement. Formulas and where verl, OpenRLHF and TRL differ: docs/algorithms.md.

Names listed here (algorithms, reward functions, KL estimators, loss aggregation modes) are the keys
of registries in ``alignops.algos`` and ``alignops.workloads.rl.rewards``; the API cannot import those
(they import torch), so tests check that the two lists agree.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from alignops.api.base import ApiModel, camel_case
from alignops.api.hyperparameters import OptimizerCore, RetentionSettings

RL_ALGORITHMS: tuple[str, ...] = ("ppo", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "remax",
                                  "apa", "p3o")
# algorithm -> advantage estimator of alignops.algos.ADVANTAGE_ESTIMATORS (ppo = GAE with a critic; apa
# regresses onto GRPO's group-normalised advantage, no critic; p3o's relative advantage (R_i - R_j) / 2 is
# the group-mean baseline over a pair)
ADVANTAGE_ESTIMATOR_OF: dict[str, str] = {**{a: a for a in RL_ALGORITHMS}, "ppo": "gae", "apa": "grpo", "p3o": "dr_grpo"}
# algorithm -> policy loss of alignops.algos.POLICY_LOSSES (every other algorithm: the PPO clipped surrogate)
POLICY_LOSS_OF: dict[str, str] = {**{a: "ppo_clip" for a in RL_ALGORITHMS}, "apa": "apa", "p3o": "p3o"}
# algorithms whose baseline is the other responses to the same prompt: they need >= 2 samples per prompt
GROUP_ALGORITHMS: tuple[str, ...] = ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline", "apa")
# algorithms that compare exactly two responses per prompt (samplesPerPrompt 2, an even batchSize)
PAIR_ALGORITHMS: tuple[str, ...] = ("p3o",)
# algorithms whose KL term defaults to the loss (DeepSeekMath GRPO); the rest shape the reward
KL_IN_LOSS_BY_DEFAULT: tuple[str, ...] = ("grpo", "dr_grpo")

StopString = Annotated[str, StringConstraints(min_length=1, max_length=64)]
RewardName = Literal["exact_answer", "arithmetic", "regex", "length_penalty", "kimi_length", "reward_model", "code_execution"]
# reward function -> the options it reads (all others must be left out)
REWARD_OPTIONS: dict[str, tuple[str, ...]] = {
    "exact_answer": (),
    "arithmetic": (),
    "regex": ("pattern", "full_match"),
    "length_penalty": ("free_tokens",),
    "kimi_length": (),
    "reward_model": (),
    "code_execution": ("timeout_seconds", "memory_mb"),
}


class RewardOptions(ApiModel):
    """Options of a reward function; each function reads only its own (see ``name``)."""

    pattern: str | None = Field(
        None, min_length=1, max_length=256,
        description="regex: Python regular expression the response must match (1) or not (0).",
    )
    full_match: bool | None = Field(None, description="regex: the whole response must match (default: a match anywhere).")
    free_tokens: int | None = Field(
        None, ge=0, le=131072, description="length_penalty: tokens allowed before the penalty starts (default 0).",
    )
    timeout_seconds: float | None = Field(
        None, gt=0, le=600, description="code_execution: wall-clock seconds a program may run before it is killed (default 2).",
    )
    memory_mb: int | None = Field(
        None, ge=32, le=65536, description="code_execution: address space a program may use, MiB (default 256).",
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class RewardTerm(ApiModel):
    """One registered reward function and its weight; a response's reward is the weighted sum."""

    name: RewardName = Field(
        ...,
        description="exact_answer: 1 if the response's answer equals the record's `answer` (demo task: leading digits), else 0; "
        "arithmetic: 1 if the prompt is a demo sum `a+b=` and the response's leading digits are that sum (no `answer` needed), else 0; "
        "regex: 1 if the response matches options.pattern (a format reward), else 0; "
        "length_penalty: -max(0, tokens - options.freeTokens) / maxNewTokens; "
        "kimi_length: Kimi k1.5 length reward within each prompt's group (correct: lambda, wrong: min(0, lambda)); "
        "reward_model: the score of the `rewardModel` input (a `reward` stage's sequence classifier); "
        "code_execution: runs the response's Python code (its first ``` block, else all of it) in a sandbox "
        "(docs/sandbox.md): 1 if it exits 0 and prints the record's `answer` (any output without one), else 0.",
    )
    weight: float = Field(1.0, ge=-100, le=100, description="Multiplier of this function's reward in the sum.")
    options: RewardOptions | None = Field(None, description="The function's options (only those it reads).")

    @model_validator(mode="after")
    def _options_apply(self) -> "RewardTerm":
        allowed = REWARD_OPTIONS[self.name]
        given = [name for name in RewardOptions.model_fields if self.options is not None and getattr(self.options, name) is not None]
        wrong = [name for name in given if name not in allowed]
        if wrong:
            camel = ", ".join(camel_case(n) for n in wrong)
            known = ", ".join(camel_case(n) for n in allowed) or "none"
            raise ValueError(f"reward {self.name} has no option {camel} (its options: {known})")
        if self.name == "regex" and "pattern" not in given:
            raise ValueError("reward regex needs options.pattern")
        return self


class KlSettings(ApiModel):
    """The KL penalty to the reference model (Schulman's estimators on sampled tokens)."""

    placement: Literal["in_reward", "in_loss"] | None = Field(
        None,
        description="in_reward: per-token reward shaping r_t = -beta KL_t (+ R on the last token; InstructGPT, RLOO, REINFORCE++); "
        "in_loss: beta KL added to the policy loss (DeepSeekMath GRPO). Default: in_loss for grpo and dr_grpo, in_reward otherwise.",
    )
    estimator: Literal["k1", "k2", "k3"] | None = Field(
        None, description="k1 = d, k2 = d^2/2, k3 = exp(-d) + d - 1 with d = log pi - log pi_ref. Default: k3 in the loss, k1 in the reward.",
    )
    beta: float = Field(0.05, ge=0, le=100, description="KL coefficient (the initial one when target is set); 0 skips the reference model.")
    target: float | None = Field(
        None, gt=0, le=1000,
        description="Adaptive coefficient (Ziegler et al.): steer the round's mean KL per token towards this value; unset keeps beta fixed.",
    )
    horizon: int = Field(10_000, ge=1, le=1_000_000_000, description="Adaptive coefficient: samples over which beta moves by at most 20 %.")

    @model_validator(mode="after")
    def _adaptive_needs_beta(self) -> "KlSettings":
        if self.target is not None and self.beta == 0:
            raise ValueError("kl.target (adaptive KL) needs kl.beta > 0 as its starting value")
        return self


class CriticSettings(ApiModel):
    """The value model of ``ppo`` (GAE): the policy's transformer (or the reward model's, when one is
    given, as InstructGPT initialises it) under a scalar per-token head."""

    learning_rate: float = Field(1e-3, gt=0, le=1, description="Peak learning rate of the critic (same schedule as the policy).")
    value_clip: float = Field(0.2, gt=0, le=1000, description="PPO value clipping: V may move at most this far from its rollout-time value.")


class RolloutSettings(ApiModel):
    """Rounds of sampling from the current policy: the rl stage's, and those of every stage that
    trains on the policy's own samples (rejection_sampling, online_dpo, spin)."""

    rounds: int = Field(20, ge=1, le=100_000, description="Rounds of generate -> score -> update -> commit.")
    prompts_per_round: int = Field(32, ge=1, le=100_000, description="Prompts sampled (without replacement within an epoch of the data) per round.")
    samples_per_prompt: int = Field(8, ge=1, le=1024, description="Responses sampled per prompt (the group of GRPO, RLOO, ...).")
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature; the trainer's log-probs use the same temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the smallest set of tokens with this much probability.")
    max_new_tokens: int = Field(64, ge=1, le=131072, description="Longest response, tokens.")
    max_prompt_length: int = Field(512, ge=1, le=131072, description="Longer prompts keep their last tokens.")
    stop: list[StopString] | None = Field(
        None, max_length=8, description="Strings that end a response (kept in it), besides the end-of-sequence token.",
    )
    engine: Literal["transformers", "vllm"] = Field(
        "transformers", description="Rollout engine: transformers (CPU or GPU, always available) or vllm (GPU images only).",
    )
    generation_batch_size: int = Field(64, ge=1, le=65536, description="Prompts per call of the rollout engine (transformers).")
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="vllm: share of GPU memory the engine may take (the trainer needs the rest when colocated).")
    eval_every: int = Field(1, ge=1, le=100_000, description="Held-out greedy accuracy every this many rounds (and after the last).")

    @model_validator(mode="after")
    def _vllm_temperature(self) -> "RolloutSettings":
        check_vllm_temperature(self.engine, self.temperature)
        return self


def check_vllm_temperature(engine: str, temperature: float) -> None:
    """vLLM's SamplingParams refuses temperatures above 2 (vllm/sampling_params.py, _verify_args):
    refused at validation rather than in the pod. Every model that samples with an ``engine`` calls it."""
    if engine == "vllm" and temperature > 2:
        raise ValueError(f"temperature {temperature}: engine vllm samples at temperatures up to 2; "
                         "lower hyperparameters.temperature or use engine: transformers")


class RewardSettings(ApiModel):
    """The reward functions that score sampled responses."""

    rewards: list[RewardTerm] | None = Field(
        None, max_length=8,
        description="Reward functions and weights; default: reward_model when rewardModel is given, else exact_answer.",
    )


class RlHyperparameters(OptimizerCore, RetentionSettings, RolloutSettings, RewardSettings):
    """Online RL in rounds: sample ``samplesPerPrompt`` responses to ``promptsPerRound`` prompts with
    the current policy, score them, compute advantages, update the policy for ``ppoEpochs`` passes of
    ``miniBatches`` optimiser steps, commit the round (rollouts, then the checkpoint)."""

    kl: KlSettings = Field(default_factory=KlSettings, description="KL penalty to the reference model.")
    loss_aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"] = Field(
        "token_mean",
        description="How per-token losses become one number per mini-batch: token_mean (DAPO), seq_mean_token_mean (original GRPO), "
        "seq_mean_token_sum, seq_mean_token_sum_norm (Dr. GRPO, divides by maxNewTokens).",
    )
    clip_low: float = Field(0.2, gt=0, lt=1, description="PPO ratio clip below 1: rho >= 1 - clipLow.")
    clip_high: float | None = Field(None, gt=0, le=10, description="PPO ratio clip above 1 (DAPO clip-higher uses 0.28); default clipLow.")
    dual_clip: float | None = Field(None, gt=1, le=100, description="Dual clip c (> 1) bounding the loss of negative-advantage tokens at -c A; unset: off.")
    ppo_epochs: int = Field(1, ge=1, le=100, description="Passes over the round's rollouts.")
    mini_batches: int = Field(1, ge=1, le=4096, description="Optimiser steps per pass (the rollouts are split into this many shuffled mini-batches).")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount of token rewards (gae, reinforce_pp, remax).")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda (ppo).")
    critic: CriticSettings = Field(default_factory=CriticSettings, description="The value model (ppo only).")
    apa_lambda: float = Field(
        1.0, gt=0, le=1000,
        description="apa: lambda of the squared loss (log pi - log pi_init - A / lambda)^2; larger keeps the policy nearer its start.",
    )
    placement: Literal["colocated", "split"] = Field(
        "colocated",
        description="colocated: one run holds the policy, the rollout engine and the trainer; split: per round a `rollout` run "
        "and a `train` run of the entrypoint, passing rollouts and the checkpoint through storage.",
    )
