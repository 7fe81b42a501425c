"""The one training loop every trained stage uses: gradient accumulation over micro-batches, one
optimiser step through the engine, metrics every ``logEvery`` steps, checkpoints committed every
``checkpointEvery`` steps (and on SIGTERM), and exact resume from ``TrainState``.

A stage with a dataset hands the loop ``loss_fn(model, indices)`` and the loop reads the data in
``DataOrder``; a stage that makes its own batches (rl) calls ``optimizer_step`` with its own
micro-batches and loss, and still gets the loop's step, commit and restore.

Same numbers at any world size: step k reads the same ``batchSize x gradientAccumulationSteps``
examples whatever the number of processes; each process takes an equal share of every micro-batch.
A stage's loss is a mean over its items' units (tokens for SFT, pairs for DPO; ``units_fn``), and
the loop weights it by the micro-batch share's units over the whole step's units (summed over
every micro-batch and process), times the process count (the engines average gradients over
processes): the global token mean, never a mean of micro-batch means (the gradient-accumulation
loss bug transformers fixed in 4.46). Losses are read back to Python only at log steps, summed
over processes; only the main process logs and commits.

A straggler is visible per rank: at log steps every process reports how long its own share of the
step took (data, forward and backward of its micro-batches, up to the optimizer step, where the
gradients are reduced and every process waits for the slowest) and the main process logs the list
as ``rank_step_time`` (one gauge per rank, ``alignops_stage_rank_step_seconds``).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import torch

from alignops.storage import apply_retention, commit_checkpoint
from alignops.storage.checkpoints import CheckpointRef
from alignops.workloads.context import ConfigError, RunContext, StopRequested
from alignops.workloads.training.engine import Trainable, make_engine
from alignops.workloads.training.order import DataOrder
from alignops.workloads.training.state import TrainState

Micro = TypeVar("Micro")


Figure = float | torch.Tensor  # a 0-dim tensor stays on the device until a log step reads it


@dataclass
class MicroBatchLoss:
    """One micro-batch's loss (what is back-propagated; one per trained model when a stage trains
    several, e.g. the rl stage's policy and critic), its tokens, and figures to log (floats or
    0-dim tensors; tensors are read back only when logged)."""

    loss: torch.Tensor | Sequence[torch.Tensor]
    tokens: int
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def losses(self) -> list[torch.Tensor]:
        return [self.loss] if isinstance(self.loss, torch.Tensor) else list(self.loss)


@dataclass
class StepOutput:
    """One optimiser step on this process: the loss and figures summed over its micro-batches (each
    weighted as it was back-propagated; sum them over processes for the step's figure), its tokens,
    and each trained model's gradient norm (already global)."""

    loss: torch.Tensor
    tokens: int
    metrics: dict[str, Any]
    grad_norms: list[float]
    work_seconds: float = 0.0  # this process's own share of the step, before the optimizer step


def memory_figures(world) -> dict[str, float]:
    """The largest memory of any process at this log step: its resident set, and on a GPU the peak
    held by tensors since the last log step (the training state plus a window's activations)."""
    figures = {"memory_resident_bytes": world.max_float(resident_set_bytes())}
    if torch.cuda.is_available():
        figures["gpu_memory_step_peak_bytes"] = world.max_float(float(torch.cuda.max_memory_allocated()))
        torch.cuda.reset_peak_memory_stats()
    return figures


def resident_set_bytes() -> float:
    """This process's resident memory now (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return float(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        return 0.0


def read_back(record: dict) -> dict:
    """The record with every tensor read back to a Python float (one host sync per log step)."""
    return {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in record.items()}


def to_floats(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()}


class TrainLoop:
    """Trains ``model`` to ``total_steps`` (``maxSteps``, else ``epochs`` over ``dataset_size``).

    ``save_extra(dir)`` lets a stage add files to every checkpoint (its tokenizer, a critic, its
    record); ``units_fn(indices)`` counts what the stage's loss is a mean over (default: the items);
    ``extra_trainables`` are further models trained beside ``model`` (the rl stage's critic)."""

    def __init__(self, ctx: RunContext, model: torch.nn.Module, hp: Any,
                 loss_fn: Callable[[torch.nn.Module, list[int]], MicroBatchLoss] | None,
                 save_extra: Callable[[Path], None], dataset_size: int | None = None,
                 total_steps: int | None = None, extra_trainables: Sequence[Trainable] = (),
                 units_fn: Callable[[list[int]], float] | None = None, order=None):
        self.ctx, self.hp, self.loss_fn, self.save_extra = ctx, hp, loss_fn, save_extra
        self.world = ctx.world
        self.units_fn = units_fn or len
        self.order = order  # a StreamOrder for streamed data
        if hp.batch_size % self.world.size and (order is not None or dataset_size is not None):
            raise ConfigError(f"hyperparameters.batchSize {hp.batch_size} must be a multiple of the stage's "
                              f"{self.world.size} processes (resources.gpus)")
        if order is None and dataset_size is not None:
            self.order = DataOrder(dataset_size, hp.batch_size, hp.gradient_accumulation_steps, hp.seed)
        total = total_steps or hp.max_steps or hp.epochs * self.order.steps_per_epoch()
        self.engine = make_engine([Trainable(model), *extra_trainables], hp, total, self.world, ctx.config.distributed)
        self.state = TrainState(self.engine, total, seed=hp.seed)
        self.committed: CheckpointRef | None = None
        self._last_commit_step: int | None = None
        self._committing = False  # a commit started and not yet waited for
        self.commit_seconds = 0.0  # training held up by commits: taking the state, and waiting for uploads
        self.micro_batch: list[int] = []  # the whole micro-batch being read (every process's share)
        self._last_loss_tensor: torch.Tensor | None = None

    @property
    def model(self) -> torch.nn.Module:
        return self.engine.model

    def restore(self, directory: Path, ref: CheckpointRef) -> None:
        self.state.restore(directory)
        self.committed = ref
        self._last_commit_step = ref.step

    def commit(self, final: bool = False) -> None:
        """Start committing the current state as ``<stage_key>/[round-<n>/]checkpoint-<step>/``:
        every process takes part in taking it now; the main process writes the weights and uploads
        on the run's commit worker while training goes on (``commits``), and ``wait_committed``
        returns it once committed. ``final``: the stage's last checkpoint, without the optimizer
        state (nothing resumes from it; a changed spec reruns the stage under a new key)."""
        self.wait_committed()  # one in flight: checkpoints are committed in order
        state, world = self.state, self.world
        self._settle_loss()
        started = time.perf_counter()
        directory = self.ctx.scratch / f"checkpoint-{state.step}"
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        write = state.snapshot(directory, optimizer=not final)
        self.save_extra(directory)
        if world.is_main:
            store, key, keep = self.ctx.store, self.ctx.config.stage_key, self.hp.keep_checkpoints
            step, round_ = state.step, state.round

            def upload() -> CheckpointRef:
                try:
                    write()
                    ref = commit_checkpoint(store, directory, key, step, round_)
                    apply_retention(store, key, keep)
                    return ref
                finally:
                    shutil.rmtree(directory, ignore_errors=True)

            self.ctx.commits.submit(upload)
        else:
            shutil.rmtree(directory, ignore_errors=True)
        self._last_commit_step, self._committing = state.step, True
        self.commit_seconds += time.perf_counter() - started

    def wait_committed(self) -> CheckpointRef | None:
        """The last checkpoint, once committed (every process calls it after a ``commit``; they all
        get the main process's reference)."""
        if not self._committing:
            return self.committed
        started = time.perf_counter()
        ref = self.ctx.commits.wait() if self.world.is_main else None
        self.commit_seconds += time.perf_counter() - started
        self.committed, self._committing = self.world.broadcast_object(ref), False
        return self.committed

    def stop_requested(self) -> bool:
        """Whether a SIGTERM reached any process: all of them stop at the same step."""
        return self.world.any(self.ctx.stop.is_set())

    def optimizer_step(self, micro_batches: Iterable[Micro], loss_of: Callable[[Micro], MicroBatchLoss],
                       weight_of: Callable[[Micro], float] | None = None, timed: bool = False) -> StepOutput:
        """Back-propagate ``loss_of(m) * weight_of(m)`` for each of this process's micro-batches,
        then one optimiser step. ``weight_of`` turns a micro-batch's mean into its share of the
        step's global mean (times the process count); default 1, for losses the caller already
        normalised by the whole step's counts (the rl update's). ``timed``: wait for the GPU before
        reading the clock, so ``work_seconds`` is the work's and not its launch's."""
        started = time.perf_counter()
        self.engine.zero_grad()
        loss_total = torch.zeros(())  # a CPU scalar: adding a device tensor puts the sum there
        tokens, metrics = 0, {}
        for micro in micro_batches:
            out = loss_of(micro)
            weight = weight_of(micro) if weight_of is not None else 1.0
            losses = out.losses
            self.engine.backward([loss * weight for loss in losses])
            # summed on the device: reading a loss back each micro-batch would stall the GPU queue
            loss_total = loss_total + sum(loss.detach().float() for loss in losses) * weight
            tokens += out.tokens
            for name, value in out.metrics.items():
                metrics[name] = metrics.get(name, 0.0) + (value.detach() if isinstance(value, torch.Tensor) else value) * weight
        if timed and torch.cuda.is_available():
            torch.cuda.synchronize()
        work_seconds = time.perf_counter() - started
        norms = self.engine.step(self.hp.max_grad_norm)
        state = self.state
        state.step += 1
        state.tokens_seen += tokens
        state.last_loss = None  # read back at log steps and commits (_settle_loss)
        self._last_loss_tensor = loss_total
        return StepOutput(loss_total, tokens, metrics, norms, work_seconds)

    def shared_step(self, micro_batches: list[list[int]], loss_fn: Callable[[torch.nn.Module, list[int]], MicroBatchLoss],
                    units_fn: Callable[[list[int]], float], timed: bool = False) -> StepOutput:
        """One optimiser step over whole micro-batches of item indices, each process reading its
        share of every one. A share's loss (the mean of its ``units_fn``) is weighted by its units
        over the step's, times the process count (the engines average gradients): the sum over
        processes is the step's global mean at any process count. A process whose share is empty
        repeats an item with weight 0: under ZeRO-3 every process must run every forward pass."""
        world = self.world
        step_units = max(float(sum(units_fn(m) for m in micro_batches)), 1e-12)
        shares = [(micro, world.share(micro)) for micro in micro_batches]

        def loss_of(item) -> MicroBatchLoss:
            micro, share = item
            self.micro_batch = micro
            with self.engine.autocast():
                return loss_fn(self.model, share or micro[:1])

        def weight_of(item) -> float:
            share = item[1]
            return units_fn(share) / step_units * world.size if share else 0.0

        return self.optimizer_step(shares, loss_of, weight_of, timed=timed)

    def train_step(self, timed: bool = False) -> dict[str, Any]:
        """One optimiser step over the next ``gradientAccumulationSteps`` micro-batches of the data;
        this process reads its share of each. Figures are this process's shares (``log_record``
        sums them over processes) and its ``work_seconds``."""
        self.model.train()
        world, step = self.world, self.state.step
        micro_batches = [self.order.micro_batch(step, m) for m in range(self.hp.gradient_accumulation_steps)]
        out = self.shared_step(micro_batches, self.loss_fn, self.units_fn, timed=timed)
        return {"loss": out.loss, "grad_norm": out.grad_norms[0], "tokens": out.tokens, "work_seconds": out.work_seconds,
                **{k: v / world.size for k, v in out.metrics.items()}}

    def log_record(self, record: dict[str, Any]) -> dict[str, float]:
        """A step's figures as the run reports them: shares summed over processes, as floats. The
        loss is the global mean (shares were weighted by the process count for the gradient)."""
        world = self.world
        shares = to_floats({k: v for k, v in record.items() if k not in ("grad_norm",)})
        shares["loss"] = shares["loss"] / world.size
        totals = world.sum_floats(shares)
        totals["grad_norm"] = float(record["grad_norm"])
        self.state.last_loss = totals["loss"]
        return totals

    def run(self, wait: bool = True) -> CheckpointRef | None:
        """Train to ``total_steps`` from wherever ``restore`` left the position and commit the
        final checkpoint; returns it once committed (``wait=False``: returns at once, and the caller
        does what it can while the upload runs, then ``wait_committed``). Raises StopRequested after
        committing when SIGTERM arrives."""
        state = self.state
        window_tokens, window_start = 0, time.perf_counter()
        while state.step < state.total_steps:
            if self.stop_requested():
                self.commit()
                self.wait_committed()
                raise StopRequested(f"stopped at step {state.step}")
            started = time.perf_counter()
            logged = (state.step + 1) % self.hp.log_every == 0 or state.step + 1 == state.total_steps
            record = self.train_step(timed=logged)
            window_tokens += record.pop("tokens")
            work_seconds = record.pop("work_seconds")
            if logged:
                figures = self.log_record({**record, "tokens": window_tokens})
                elapsed = time.perf_counter() - window_start
                tokens = figures.pop("tokens")
                rank_times = self.world.gather_floats(work_seconds)
                self.ctx.metrics.log({
                    "step": state.step, "total_steps": state.total_steps, "round": state.round,
                    "lr": self.engine.learning_rate(), "step_time": time.perf_counter() - started,
                    "tokens_per_second": tokens / elapsed if elapsed > 0 else 0.0,
                    **memory_figures(self.world), **figures, "rank_step_time": rank_times,
                })
                window_tokens, window_start = 0, time.perf_counter()
            if state.step % self.hp.checkpoint_every == 0 and state.step < state.total_steps:
                self.commit()
        if self._last_commit_step != state.step:
            self.commit(final=True)
        return self.wait_committed() if wait else None

    def _settle_loss(self) -> None:
        """The last step's global loss, read back for the checkpoint (a step that was not logged)."""
        if self.state.last_loss is None and self._last_loss_tensor is not None:
            self.state.last_loss = float(self.world.sum(self._last_loss_tensor.clone().double())) / self.world.size
