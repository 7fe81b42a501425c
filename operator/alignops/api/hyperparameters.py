"""Hyperparameters, one model per stage type. Shared groups are mixins so that a field means the
same thing (and has one description) in every stage type that has it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alignops.api.base import ApiModel


class OptimizerSettings(ApiModel):
    """Optimiser, schedule and batch shape: every trained stage has these."""

    learning_rate: float = Field(1e-3, gt=0, le=1, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW decoupled weight decay.")
    warmup_steps: int = Field(10, ge=0, le=1_000_000, description="Linear warm-up steps from 0 to learningRate.")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Decay after warm-up: cosine or linear to 0, or constant."
    )
    max_grad_norm: float = Field(1.0, gt=0, le=1000, description="Gradient clipping by global norm.")
    batch_size: int = Field(16, ge=1, le=4096, description="Examples per micro-batch.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024, description="Micro-batches per optimiser step.")
    epochs: int = Field(1, ge=1, le=1000, description="Passes over the training set (ignored when maxSteps is set).")
    max_steps: int | None = Field(None, ge=1, le=10_000_000, description="Optimiser steps; overrides epochs.")
    max_length: int = Field(64, ge=8, le=131072, description="Longest tokenised example; longer ones are truncated.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of data order, dropout and sampling.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="bf16 autocast on GPUs that support it when auto; fp32 on the CPU."
    )


class CheckpointSettings(ApiModel):
    """When to commit checkpoints and how many to keep."""

    checkpoint_every: int = Field(50, ge=1, le=1_000_000, description="Commit a checkpoint every this many optimiser steps (and at the end).")
    keep_checkpoints: int = Field(2, ge=1, le=1000, description="Committed checkpoints kept per stage; older ones are deleted (the final one always stays).")
    log_every: int = Field(5, ge=1, le=100_000, description="Log metrics every this many optimiser steps.")
    eval_size: int = Field(200, ge=1, le=100_000, description="Held-out examples evaluated before and after training.")


class SftHyperparameters(OptimizerSettings, CheckpointSettings):
    """Supervised fine-tuning: next-token cross-entropy on response tokens only."""

    condition_weights: dict[str, float] | None = Field(
        None,
        max_length=64,
        description="OpenChat C-RLFT: loss weight per data source (the record's `source` field); sources also get a condition token.",
    )
