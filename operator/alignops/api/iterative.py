"""Hyperparameters of the stages that train in rounds on the policy's own samples: each round samples
from the current policy (the rl stage's ``RolloutSettings``), turns the samples into a training set,
and takes ``stepsPerRound`` optimiser steps on it.

- ``rejection_sampling`` (RAFT, ReST): keep the best samples, SFT on them;
- ``online_dpo`` (OAIF, iterative DPO): a judge picks the better of two samples, DPO on the pairs;
- ``spin``: the SFT response against the previous iteration's own sample, DPO-style.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from alignops.api.hyperparameters import (
    AccumulationSettings,
    LengthSettings,
    OptimizerCore,
    PreferenceLossSettings,
    RetentionSettings,
)
from alignops.api.rl import RewardSettings, RolloutSettings


class IterativeSettings(OptimizerCore, AccumulationSettings, RetentionSettings, RolloutSettings):
    """What every stage that trains in rounds on its own samples has."""

    steps_per_round: int = Field(
        8, ge=1, le=100_000,
        description="Optimiser steps on each round's training set (rest: on each Improve step's); each step reads "
        "batchSize x gradientAccumulationSteps examples of it, in seeded passes.",
    )


class RejectionSamplingHyperparameters(IterativeSettings, RewardSettings):
    """RAFT / ReST: sample, score with the reward functions, keep the best, SFT on the kept set."""

    top_k: int = Field(1, ge=1, le=1024, description="raft: responses kept per prompt, highest reward first (ties: sampling order).")
    min_reward: float | None = Field(
        None, ge=-1e6, le=1e6,
        description="raft: keep only responses with at least this reward (unset: the best topK whatever their reward, as in the RAFT paper).",
    )
    thresholds: list[float] | None = Field(
        None, min_length=1, max_length=16,
        description="rest: the reward threshold of each Improve step, non-decreasing; each round (a Grow step) is followed by one "
        "Improve step per threshold, each an SFT on the round's responses with reward >= its threshold.",
    )

    @field_validator("thresholds")
    @classmethod
    def _rising(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(b < a for a, b in zip(value, value[1:])):
            raise ValueError(f"ReST thresholds rise from one Improve step to the next; {value} does not (sort them)")
        return value


class OnlineDpoHyperparameters(IterativeSettings, RewardSettings, PreferenceLossSettings):
    """OAIF / iterative DPO: pairs of the policy's own samples, labelled by a judge, then a DPO-family
    update. Without ``judge`` the reward functions judge: the best and the worst sample of each
    prompt make its pair."""

    sync_reference: bool = Field(
        False,
        description="Iterative DPO: the reference is the policy as it starts each round; false keeps the starting policy (OAIF).",
    )


class SpinHyperparameters(IterativeSettings, LengthSettings, PreferenceLossSettings):
    """SPIN: each iteration (round), the policy answers SFT prompts; its answers are the rejected
    responses, the SFT responses the chosen ones, and the policy at the start of the iteration the
    reference."""
