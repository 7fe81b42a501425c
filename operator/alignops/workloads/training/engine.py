"""The engine seam: everything a training loop does that depends on how the model is placed. One
process on one device (``PlainEngine``) today; a DeepSpeed ZeRO engine plugs in behind the same
methods (forward under autocast, backward, clip and step, optimizer state save/restore, the world
size), so the loop, ``TrainState`` and every stage stay as they are.

Parameter groups: a stage passes its trainable parameters as optimizer groups (the rl stage: the
policy, then the critic with its own learning rate); each group's gradient norm is clipped on its
own, so a critic's large value gradients never shrink the policy's step.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Protocol

import torch

from alignops.workloads.models.loading import autocast_dtype

OPTIMIZER_STATE = "optimizer.pt"
SCHEDULER_STATE = "scheduler.pt"


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


class Engine(Protocol):
    """What the training loop asks of wherever the model lives."""

    model: torch.nn.Module
    world_size: int
    rank: int

    def autocast(self) -> contextlib.AbstractContextManager: ...

    def zero_grad(self) -> None: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self, max_grad_norm: float) -> list[torch.Tensor]:
        """Clip each parameter group's gradients, step the optimizer and the scheduler; returns the
        groups' gradient norms before clipping (0-dim tensors, not read back: no host sync)."""

    def learning_rate(self) -> float: ...

    def save_model(self, directory: Path) -> None:
        """The model as a Hugging Face checkpoint (safetensors), whole, on the main rank."""

    def save_state(self, directory: Path) -> None:
        """Optimizer and scheduler state."""

    def load_state(self, directory: Path) -> None: ...


class PlainEngine:
    """One process, one device: AdamW and the stage's schedule over plain PyTorch modules."""

    world_size = 1
    rank = 0

    def __init__(self, model: torch.nn.Module, hp: Any, total_steps: int, parameter_groups: list[dict] | None = None):
        self.model = model
        groups = parameter_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
        self.device = next(model.parameters()).device
        # the fused CUDA kernel: one launch for every parameter instead of a loop of small ones
        self.optimizer = torch.optim.AdamW(groups, lr=hp.learning_rate, weight_decay=hp.weight_decay,
                                           fused=self.device.type == "cuda")
        self.scheduler = make_scheduler(self.optimizer, hp.lr_scheduler, hp.warmup_steps, total_steps)
        self.autocast_dtype = autocast_dtype(hp.precision, self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, max_grad_norm: float) -> list[torch.Tensor]:
        norms = [torch.nn.utils.clip_grad_norm_(group["params"], max_grad_norm) for group in self.optimizer.param_groups]
        self.optimizer.step()
        self.scheduler.step()
        return norms

    def learning_rate(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def save_model(self, directory: Path) -> None:
        self.model.save_pretrained(str(directory), safe_serialization=True)

    def save_state(self, directory: Path) -> None:
        torch.save(self.optimizer.state_dict(), directory / OPTIMIZER_STATE)
        torch.save(self.scheduler.state_dict(), directory / SCHEDULER_STATE)

    def load_state(self, directory: Path) -> None:
        self.optimizer.load_state_dict(torch.load(directory / OPTIMIZER_STATE, map_location=self.device, weights_only=True))
        self.scheduler.load_state_dict(torch.load(directory / SCHEDULER_STATE, weights_only=True))


def make_engine(model: torch.nn.Module, hp: Any, total_steps: int, parameter_groups: list[dict] | None = None) -> Engine:
    """The engine a stage trains with: the one seam where a distributed engine is chosen."""
    return PlainEngine(model, hp, total_steps, parameter_groups)
