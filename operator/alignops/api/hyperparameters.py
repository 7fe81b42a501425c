"""Hyperparameters, one model per stage type. Shared groups are mixins so that a field means the
same thing (and has one description) in every stage type that has it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alignops.api.base import ApiModel


class OptimizerCore(ApiModel):
    """Optimiser, schedule, micro-batch, seed and precision: every trained stage has these (the
    ``rl`` stage has only these; its rounds, not epochs or steps, decide how long it trains)."""

    learning_rate: float = Field(1e-3, gt=0, le=1, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW decoupled weight decay.")
    warmup_steps: int = Field(10, ge=0, le=1_000_000, description="Linear warm-up steps from 0 to learningRate.")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Decay after warm-up: cosine or linear to 0, or constant."
    )
    max_grad_norm: float = Field(1.0, gt=0, le=1000, description="Gradient clipping by global norm.")
    batch_size: int = Field(16, ge=1, le=4096, description="Examples per micro-batch.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of data order, dropout and sampling.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Autocast dtype of the forward passes: bf16 (on every device, the CPU included), "
                            "fp32, or auto (bf16 on a GPU that supports it, fp32 on the CPU). Weights and "
                            "optimizer state stay fp32; log-probs, losses and rewards are computed in fp32."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute each transformer layer's activations in the backward pass instead of "
                           "keeping them: less memory for about a third more compute."
    )


class AccumulationSettings(ApiModel):
    """Gradient accumulation: every stage that cuts its own optimiser steps into micro-batches."""

    gradient_accumulation_steps: int = Field(1, ge=1, le=1024, description="Micro-batches per optimiser step.")


class LengthSettings(ApiModel):
    """Truncation of tokenised training examples."""

    max_length: int = Field(64, ge=8, le=131072, description="Longest tokenised example; longer ones are truncated.")


class OptimizerSettings(OptimizerCore, AccumulationSettings, LengthSettings):
    """Optimiser, schedule and batch shape of the stages that pass over a dataset."""

    epochs: int = Field(1, ge=1, le=1000, description="Passes over the training set (ignored when maxSteps is set).")
    max_steps: int | None = Field(None, ge=1, le=10_000_000, description="Optimiser steps; overrides epochs.")


class RetentionSettings(ApiModel):
    """How many checkpoints to keep and how many held-out examples to evaluate."""

    keep_checkpoints: int = Field(2, ge=1, le=1000, description="Committed checkpoints kept per stage; older ones are deleted (the final one always stays).")
    eval_size: int = Field(200, ge=1, le=100_000, description="Held-out examples evaluated before and after training.")


class CheckpointSettings(RetentionSettings):
    """When to commit checkpoints and how many to keep."""

    checkpoint_every: int = Field(50, ge=1, le=1_000_000, description="Commit a checkpoint every this many optimiser steps (and at the end).")
    log_every: int = Field(5, ge=1, le=100_000, description="Log metrics every this many optimiser steps.")


class SftHyperparameters(OptimizerSettings, CheckpointSettings):
    """Supervised fine-tuning: next-token cross-entropy on response tokens only."""

    condition_weights: dict[str, float] | None = Field(
        None,
        max_length=64,
        description="OpenChat C-RLFT: loss weight per data source (the record's `source` field); sources also get a condition token.",
    )
    packing: bool = Field(
        False,
        description="Pack examples into rows of maxLength tokens (no attention across examples: positions restart per "
                    "example); batchSize then counts rows. The loss stays the token mean of the step's response tokens.",
    )


class RewardHyperparameters(OptimizerSettings, CheckpointSettings):
    """Reward model: a scalar head on the last non-pad token, trained on comparisons."""

    reward_margin: float = Field(
        0.0, ge=0, le=100,
        description="Bradley-Terry margin m in -log sigmoid(r_c - r_r - m) (Llama 2); a pair's own `margin` field wins.",
    )


class PreferenceLossSettings(ApiModel):
    """Options of the offline preference losses (alignops.algos.PREFERENCE_LOSSES); each loss reads
    only its own. Shared by every stage type that optimises a preference loss."""

    beta: float = Field(
        0.1, gt=0, le=100,
        description="Inverse temperature of the implicit reward (dpo, cdpo, ipo, simpo, kto); SimPO's paper uses about 2.",
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="cDPO: assumed probability that a preference label is flipped (cdpo only)."
    )
    ipo_length_normalize: bool = Field(
        False, description="IPO on per-token average log-probs (TRL's behaviour) instead of sums (the paper's)."
    )
    simpo_gamma: float = Field(0.5, ge=0, le=100, description="SimPO: target reward margin gamma.")
    orpo_lambda: float = Field(0.1, ge=0, le=100, description="ORPO: weight of the odds-ratio term beside the SFT term.")
    kto_desirable_weight: float = Field(1.0, ge=0, le=100, description="KTO: weight lambda_D of desirable examples.")
    kto_undesirable_weight: float = Field(1.0, ge=0, le=100, description="KTO: weight lambda_U of undesirable examples.")
    rpo_alpha: float = Field(
        0.0, ge=0, le=100,
        description="RPO: weight of the chosen response's mean token NLL added to dpo, cdpo, ipo or simpo "
                    "(TRL's rpo_alpha; 1 in the RPO paper); keeps the chosen log-prob from falling. 0 is the plain loss.",
    )


class PreferenceHyperparameters(OptimizerSettings, CheckpointSettings, PreferenceLossSettings):
    """Offline preference optimisation against a frozen reference (DPO and its neighbours)."""


class RankHyperparameters(OptimizerSettings, CheckpointSettings):
    """RRHF: hinge ranking loss on length-normalised log-probs plus SFT on the best response."""

    rank_weight: float = Field(1.0, ge=0, le=100, description="Weight of the ranking term beside the SFT term on the best response.")
