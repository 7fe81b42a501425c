"""The one training loop every trained stage uses: gradient accumulation over micro-batches, one
optimiser step through the engine, metrics every ``logEvery`` steps, checkpoints committed every
``checkpointEvery`` steps (and on SIGTERM), and exact resume from ``TrainState``.

A stage with a dataset hands the loop ``loss_fn(model, indices)`` and the loop reads the data in
``DataOrder``; a stage that makes its own batches (rl) calls ``optimizer_step`` with its own
micro-batches and loss, and still gets the loop's step, commit and restore.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import torch

from alignops.storage import apply_retention, commit_checkpoint
from alignops.storage.checkpoints import CheckpointRef
from alignops.workloads.context import RunContext, StopRequested
from alignops.workloads.training.engine import make_engine
from alignops.workloads.training.order import DataOrder
from alignops.workloads.training.state import TrainState

Micro = TypeVar("Micro")


Figure = float | torch.Tensor  # a 0-dim tensor stays on the device until a log step reads it


@dataclass
class MicroBatchLoss:
    """One micro-batch's loss (what is back-propagated), its tokens (counted on the host), and
    figures to log (detached 0-dim tensors or floats: no host sync per micro-batch)."""

    loss: torch.Tensor
    tokens: int
    metrics: dict[str, Figure] = field(default_factory=dict)


@dataclass
class StepOutput:
    """One optimiser step: the loss and figures summed over micro-batches (each divided by the
    accumulation divisor), the tokens, and each parameter group's gradient norm. Loss, figures and
    norms are 0-dim device tensors: ``read_back`` them only when they are logged."""

    loss: torch.Tensor
    tokens: int
    metrics: dict[str, Figure]
    grad_norms: list[Figure]


def read_back(record: dict) -> dict:
    """The record with every tensor read back to a Python float (one host sync per log step)."""
    return {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in record.items()}


class TrainLoop:
    """Trains ``model`` to ``total_steps`` (``maxSteps``, else ``epochs`` over ``dataset_size``).

    ``save_extra(dir)`` lets a stage add files to every checkpoint (its tokenizer, a critic, its
    record); ``parameter_groups`` are optimizer groups (default: every trainable parameter)."""

    def __init__(self, ctx: RunContext, model: torch.nn.Module, hp: Any,
                 loss_fn: Callable[[torch.nn.Module, list[int]], MicroBatchLoss] | None,
                 save_extra: Callable[[Path], None], dataset_size: int | None = None,
                 total_steps: int | None = None, parameter_groups: list[dict] | None = None):
        self.ctx, self.hp, self.loss_fn, self.save_extra = ctx, hp, loss_fn, save_extra
        self.order = None
        if dataset_size is not None:
            self.order = DataOrder(dataset_size, hp.batch_size, hp.gradient_accumulation_steps, hp.seed)
        total = total_steps or hp.max_steps or hp.epochs * self.order.steps_per_epoch()
        self.engine = make_engine(model, hp, total, parameter_groups)
        self.state = TrainState(self.engine, total)
        self.committed: CheckpointRef | None = None

    @property
    def model(self) -> torch.nn.Module:
        return self.engine.model

    def restore(self, directory: Path, ref: CheckpointRef) -> None:
        self.state.restore(directory)
        self.committed = ref

    def commit(self) -> CheckpointRef:
        """Commit the current state as ``<stage_key>/[round-<n>/]checkpoint-<step>/``."""
        state = self.state
        directory = self.ctx.scratch / f"checkpoint-{state.step}"
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        state.save(directory)
        self.save_extra(directory)
        key = self.ctx.config.stage_key
        self.committed = commit_checkpoint(self.ctx.store, directory, key, state.step, state.round)
        apply_retention(self.ctx.store, key, self.hp.keep_checkpoints)
        shutil.rmtree(directory, ignore_errors=True)
        return self.committed

    def optimizer_step(self, micro_batches: Iterable[Micro], loss_of: Callable[[Micro], MicroBatchLoss],
                       divisor: int = 1) -> StepOutput:
        """Back-propagate ``loss_of(m) / divisor`` for each micro-batch, then one optimiser step.
        ``divisor`` is the accumulation count for per-micro-batch means (1 where the losses are
        already normalised by the whole step's counts, as the rl update's are)."""
        self.engine.zero_grad()
        loss_total, tokens, metrics = None, 0, {}
        for micro in micro_batches:
            out = loss_of(micro)
            loss = out.loss if divisor == 1 else out.loss / divisor
            self.engine.backward(loss)
            # summed on the device: reading a loss back each micro-batch would stall the GPU queue
            loss_total = loss.detach() if loss_total is None else loss_total + loss.detach()
            tokens += out.tokens
            for name, value in out.metrics.items():
                value = value.detach() if isinstance(value, torch.Tensor) else value
                metrics[name] = metrics.get(name, 0.0) + value / divisor
        if loss_total is None:
            loss_total = torch.zeros(())
        norms = self.engine.step(self.hp.max_grad_norm)
        state = self.state
        state.step += 1
        state.tokens_seen += tokens
        state.last_loss = loss_total
        return StepOutput(loss_total, tokens, metrics, norms)

    def train_step(self) -> dict[str, Figure]:
        """One optimiser step over the next ``gradientAccumulationSteps`` micro-batches of the data
        (its figures still on the device)."""
        self.model.train()
        accumulation = self.hp.gradient_accumulation_steps
        step = self.state.step

        def loss_of(micro: int) -> MicroBatchLoss:
            with self.engine.autocast():
                return self.loss_fn(self.model, self.order.micro_batch(step, micro))

        out = self.optimizer_step(range(accumulation), loss_of, accumulation)
        return {"loss": out.loss, "grad_norm": out.grad_norms[0], "tokens": out.tokens, **out.metrics}

    def run(self) -> CheckpointRef:
        """Train to ``total_steps`` from wherever ``restore`` left the position; returns the final
        committed checkpoint. Raises StopRequested after committing when SIGTERM arrives."""
        state = self.state
        window_tokens, window_start = 0, time.perf_counter()
        while state.step < state.total_steps:
            if self.ctx.stop.is_set():
                self.commit()
                raise StopRequested(f"stopped at step {state.step}")
            started = time.perf_counter()
            record = self.train_step()
            window_tokens += record.pop("tokens")
            if state.step % self.hp.log_every == 0 or state.step == state.total_steps:
                figures = read_back(record)  # waits for the device first, so the window's time is real
                elapsed = time.perf_counter() - window_start
                self.ctx.metrics.log({
                    "step": state.step, "total_steps": state.total_steps, "round": state.round,
                    "lr": self.engine.learning_rate(), "step_time": time.perf_counter() - started,
                    "tokens_per_second": window_tokens / elapsed if elapsed > 0 else 0.0, **figures,
                })
                window_tokens, window_start = 0, time.perf_counter()
            if state.step % self.hp.checkpoint_every == 0 and state.step < state.total_steps:
                self.commit()
        if self.committed is None or self.committed.step != state.step:
            self.commit()
        return self.committed
