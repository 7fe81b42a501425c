"""The engine seam: everything a training loop does that depends on where the model lives. One
process without DeepSpeed (``PlainEngine``), or DeepSpeed ZeRO over the run's processes
(``alignops.workloads.training.deepspeed_engine``); the loop, ``TrainState`` and every stage call
the same methods: forward under ``autocast``, ``backward`` of each micro-batch, ``step`` (clip, update,
schedule), saving and restoring, ``gathered`` weights for generation, and ``frozen`` models placed
as the engine places its own (a reference or reward model sharded under ZeRO-3).

Trainables: a stage trains one model, or several with their own learning rates (the rl stage's
policy and critic). Each is clipped on its own (a critic's large value gradients never shrink the
policy's step), and a micro-batch's loss is one tensor per trainable.

Checkpoints hold the weights as a Hugging Face directory (safetensors, whole, written by rank 0)
and the optimizer state by parameter name (``optimizer_state``), so a run resumes on any number of
processes and any ZeRO stage.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch

from alignops.contract import DistributedRun
from alignops.workloads.distributed import SINGLE, World
from alignops.workloads.models.adapter import save_model_checkpoint
from alignops.workloads.models.loading import autocast_dtype, pick_device, place_frozen
from alignops.workloads.training.optimization import ScheduleState, Trainable, make_scheduler
from alignops.workloads.training.optimizer_state import (
    OptimizerStateReader,
    adam_states,
    adam_step,
    load_adam_states,
    write_optimizer_state,
)

LEGACY_OPTIMIZER_STATE = "optimizer.pt"  # checkpoints written before the by-name format


class Engine(Protocol):
    """What the training loop asks of wherever the models live."""

    world: World
    model: torch.nn.Module  # the main trainable, called for forward passes
    models: list[torch.nn.Module]

    def autocast(self) -> contextlib.AbstractContextManager: ...

    def zero_grad(self) -> None: ...

    def backward(self, losses: Sequence[torch.Tensor]) -> None:
        """Back-propagate one micro-batch: one loss per trainable, in order."""

    def step(self, max_grad_norm: float) -> list[torch.Tensor | float]:
        """Clip each trainable's gradients, update, advance the schedule; returns each trainable's
        gradient norm before clipping (a 0-dim tensor where the engine has one: not read back, so
        no host sync per step)."""

    def learning_rate(self) -> float: ...

    def save_pretrained(self, model: torch.nn.Module, directory: Path) -> None:
        """``model`` (one of the trainables) as a whole Hugging Face checkpoint, written by rank 0
        (every process calls it)."""

    def snapshot(self, directory: Path, optimizer: bool) -> Callable[[], None]:
        """A checkpoint of the main model's weights (and with ``optimizer`` the optimizer state by
        parameter name, and the schedule) for ``directory``, in two parts: what must happen now (collectives, copies
        off the live tensors) happens in this call, on every process; the returned write finishes
        the files on the main process and may run on another thread while training goes on."""

    def load_state(self, directory: Path) -> None: ...

    def gathered(self) -> contextlib.AbstractContextManager:
        """The trainables' whole weights on every process (generation); a no-op unless sharded."""

    def frozen(self, model: torch.nn.Module) -> torch.nn.Module:
        """A model that is never trained (a reference, a reward model), placed for inference."""


def host_copy(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies in host memory that training can no longer change; tensors that share storage (tied
    embeddings) stay shared, so the checkpoint writer sees the tie."""
    copies: dict[tuple, torch.Tensor] = {}
    out = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach()
        key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        if key not in copies:
            copies[key] = tensor.to("cpu", copy=True)
        out[name] = copies[key]
    return out


def _named(trainables: Sequence[Trainable]):
    for t in trainables:
        for name, param in t.model.named_parameters():
            if param.requires_grad:
                yield (f"{t.prefix}.{name}" if t.prefix else name), param


class PlainEngine:
    """One process, one device: AdamW over every trainable (one parameter group each) and the
    stage's schedule, plain PyTorch modules."""

    def __init__(self, trainables: Sequence[Trainable], hp: Any, total_steps: int, world: World = SINGLE):
        self.world = world
        self.trainables = list(trainables)
        self.models = [t.model for t in self.trainables]
        self.model = self.models[0]
        groups = [{"params": [p for p in t.model.parameters() if p.requires_grad],
                   **({"lr": t.learning_rate} if t.learning_rate is not None else {})} for t in self.trainables]
        fused = self.model_device().type == "cuda"  # one kernel for the whole update on a GPU
        self.optimizer = torch.optim.AdamW(groups, lr=hp.learning_rate, weight_decay=hp.weight_decay, fused=fused or None)
        self.scheduler = make_scheduler(self.optimizer, hp.lr_scheduler, hp.warmup_steps, total_steps)
        self.autocast_dtype = autocast_dtype(hp.precision, self.model_device())

    def model_device(self) -> torch.device:
        return next(self.model.parameters()).device

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.model_device().type, dtype=self.autocast_dtype)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, losses: Sequence[torch.Tensor]) -> None:
        sum(losses).backward()

    def step(self, max_grad_norm: float) -> list[torch.Tensor | float]:
        norms = [torch.nn.utils.clip_grad_norm_(group["params"], max_grad_norm) for group in self.optimizer.param_groups]
        self.optimizer.step()
        self.scheduler.step()
        return norms

    def learning_rate(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def save_pretrained(self, model: torch.nn.Module, directory: Path) -> None:
        save_model_checkpoint(model, directory)

    def snapshot(self, directory: Path, optimizer: bool) -> Callable[[], None]:
        weights = host_copy(self.model.state_dict())
        states, step = None, adam_step(self.optimizer)
        if optimizer:
            states = [(name, host_copy(state)) for name, state in adam_states(self.optimizer, _named(self.trainables))]
            ScheduleState.save([self.scheduler], directory)

        def write() -> None:
            save_model_checkpoint(self.model, directory, weights)
            if states is not None:
                write_optimizer_state(directory, states, step)
        return write

    def load_state(self, directory: Path) -> None:
        if OptimizerStateReader.present(directory):
            load_adam_states(self.optimizer, _named(self.trainables), OptimizerStateReader(directory))
        else:  # a checkpoint of the earlier format: torch's own state dict
            self.optimizer.load_state_dict(torch.load(directory / LEGACY_OPTIMIZER_STATE, map_location=self.model_device(),
                                                      weights_only=True))
        ScheduleState.load([self.scheduler], [self.optimizer], directory)

    def gathered(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def frozen(self, model: torch.nn.Module) -> torch.nn.Module:
        return place_frozen(model, pick_device())


def make_engine(trainables: Sequence[Trainable], hp: Any, total_steps: int, world: World = SINGLE,
                distributed: DistributedRun | None = None) -> Engine:
    """The engine a stage trains with: the one place a distributed engine is chosen. DeepSpeed when
    the run has a ZeRO stage (more than one process, or a stage or offload asked for); plain
    PyTorch otherwise."""
    if distributed is not None and distributed.zero_stage is not None:
        from alignops.workloads.training.deepspeed_engine import DeepSpeedEngine  # imported only when used

        return DeepSpeedEngine(trainables, hp, total_steps, world, distributed)
    return PlainEngine(trainables, hp, total_steps, world)
