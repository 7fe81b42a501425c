"""What every engine shares: the models a stage trains (``Trainable``), the learning-rate schedule,
and how its position is saved."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

SCHEDULER_STATE = "scheduler.json"


def make_scheduler(optimizer, kind: str, warmup: int, total: int):
    """Linear warm-up over ``warmup`` steps, then ``constant``, ``cosine`` or ``linear`` decay."""
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class Trainable:
    """A model the stage trains: ``prefix`` names its parameters in the optimizer state ("" for the
    stage's main model), ``learning_rate`` overrides the stage's."""

    model: torch.nn.Module
    prefix: str = ""
    learning_rate: float | None = None


class ScheduleState:
    """The schedulers' positions, saved as JSON (one per optimizer): LambdaLR's own state, and the
    learning rates they set restored into their optimizers."""

    @staticmethod
    def save(schedulers: Sequence, directory: Path) -> None:
        states = [s.state_dict() for s in schedulers]  # lambdas are code: LambdaLR keeps None for them
        (directory / SCHEDULER_STATE).write_text(json.dumps(states))

    @staticmethod
    def load(schedulers: Sequence, optimizers: Sequence, directory: Path) -> None:
        path = directory / SCHEDULER_STATE
        if path.exists():
            states = json.loads(path.read_text())
        else:  # a checkpoint of the earlier format
            states = [torch.load(directory / "scheduler.pt", weights_only=True)]
        for scheduler, optimizer, state in zip(schedulers, optimizers, states):
            scheduler.load_state_dict(state)
            for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
                group["lr"] = lr
