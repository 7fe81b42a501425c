"""The one training loop every trained stage uses: AdamW, warm-up and decay, gradient accumulation,
a deterministic data order, checkpoints committed every N steps (and on SIGTERM), and exact resume
(model, optimizer, scheduler, RNG and data position).

The data order is a pure function of (seed, epoch): optimiser step k reads examples
``order[k*B*A : (k+1)*B*A]`` of the epoch-wise permutations, so resuming at step k needs only k.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from alignops.storage import apply_retention, commit_checkpoint
from alignops.storage.checkpoints import CheckpointRef
from alignops.workloads.context import RunContext, StopRequested
from alignops.workloads.modeling import autocast_dtype

TRAINER_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.pt"
SCHEDULER_STATE = "scheduler.pt"
RNG_STATE = "rng_state.pt"


@dataclass
class LossOutput:
    loss: torch.Tensor
    tokens: int
    metrics: dict[str, float]


def make_scheduler(optimizer, kind: str, warmup: int, total: int):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class DataOrder:
    """Which examples each micro-batch of each optimiser step reads."""

    def __init__(self, size: int, batch_size: int, accumulation: int, seed: int):
        self.size, self.batch_size, self.accumulation, self.seed = size, batch_size, accumulation, seed
        self._epoch_cache: dict[int, list[int]] = {}

    def _epoch(self, epoch: int) -> list[int]:
        if epoch not in self._epoch_cache:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch_cache = {epoch: torch.randperm(self.size, generator=generator).tolist()}
        return self._epoch_cache[epoch]

    def micro_batch(self, step: int, micro: int) -> list[int]:
        start = (step * self.accumulation + micro) * self.batch_size
        return [self._epoch((start + i) // self.size)[(start + i) % self.size] for i in range(self.batch_size)]

    def epoch_order(self, epoch: int) -> list[int]:
        """The example indices in the order ``epoch`` reads them (a copy)."""
        return list(self._epoch(epoch))

    def steps_per_epoch(self) -> int:
        return max(1, self.size // (self.batch_size * self.accumulation))


class TrainLoop:
    """Runs ``loss_fn`` over the data until ``total_steps``; commits checkpoints as it goes.

    ``modules`` are saved with ``save_pretrained`` (the first one is the model; others e.g. a critic
    go to sub-directories); ``save_extra(dir)`` lets a stage add files (its tokenizer)."""

    def __init__(self, ctx: RunContext, model: torch.nn.Module, hp: Any, dataset_size: int,
                 loss_fn: Callable[[torch.nn.Module, list[int]], LossOutput],
                 save_extra: Callable[[Path], None], round_: int | None = None,
                 parameters: list[torch.nn.Parameter] | None = None, total_steps: int | None = None):
        self.ctx, self.model, self.hp, self.loss_fn, self.save_extra, self.round = ctx, model, hp, loss_fn, save_extra, round_
        # stages without a dataset pass (rl) have no gradient accumulation setting and pass total_steps
        self.order = DataOrder(dataset_size, hp.batch_size, getattr(hp, "gradient_accumulation_steps", 1), hp.seed)
        self.total_steps = total_steps or hp.max_steps or hp.epochs * self.order.steps_per_epoch()
        params = parameters if parameters is not None else [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=hp.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, hp.lr_scheduler, hp.warmup_steps, self.total_steps)
        self.step = 0
        self.tokens_seen = 0
        self.last_loss: float | None = None
        self.committed: CheckpointRef | None = None
        device = next(model.parameters()).device
        self.autocast = autocast_dtype(hp.precision, device)
        self.device = device

    # -- checkpoint state -------------------------------------------------------------------------
    def restore(self, directory: Path, ref: CheckpointRef) -> None:
        """Restore optimizer, scheduler, RNG and position from a committed checkpoint (the model's
        weights were loaded from it by the stage)."""
        state = json.loads((directory / TRAINER_STATE).read_text())
        self.step, self.tokens_seen, self.last_loss = state["step"], state["tokens_seen"], state.get("last_loss")
        self.optimizer.load_state_dict(torch.load(directory / OPTIMIZER_STATE, map_location=self.device, weights_only=True))
        self.scheduler.load_state_dict(torch.load(directory / SCHEDULER_STATE, weights_only=True))
        rng = torch.load(directory / RNG_STATE, weights_only=False)
        torch.random.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if torch.cuda.is_available() and rng.get("cuda") is not None:
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.committed = ref

    def commit(self) -> CheckpointRef:
        directory = self.ctx.scratch / f"checkpoint-{self.step}"
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        self.model.save_pretrained(str(directory), safe_serialization=True)
        self.save_extra(directory)
        torch.save(self.optimizer.state_dict(), directory / OPTIMIZER_STATE)
        torch.save(self.scheduler.state_dict(), directory / SCHEDULER_STATE)
        torch.save({"torch": torch.random.get_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}, directory / RNG_STATE)
        (directory / TRAINER_STATE).write_text(json.dumps(
            {"step": self.step, "total_steps": self.total_steps, "tokens_seen": self.tokens_seen,
             "last_loss": self.last_loss, "round": self.round}))
        key = self.ctx.config.stage_key
        self.committed = commit_checkpoint(self.ctx.store, directory, key, self.step, self.round)
        apply_retention(self.ctx.store, key, self.hp.keep_checkpoints)
        shutil.rmtree(directory, ignore_errors=True)
        return self.committed

    # -- the loop ---------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        accumulated: dict[str, float] = {}
        loss_total, tokens = 0.0, 0
        for micro in range(self.hp.gradient_accumulation_steps):
            indices = self.order.micro_batch(self.step, micro)
            with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                out = self.loss_fn(self.model, indices)
            (out.loss / self.hp.gradient_accumulation_steps).backward()
            loss_total += out.loss.item() / self.hp.gradient_accumulation_steps
            tokens += out.tokens
            for name, value in out.metrics.items():
                accumulated[name] = accumulated.get(name, 0.0) + value / self.hp.gradient_accumulation_steps
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for group in self.optimizer.param_groups for p in group["params"]], self.hp.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.tokens_seen += tokens
        self.last_loss = loss_total
        return {"loss": loss_total, "grad_norm": float(grad_norm), "tokens": tokens, **accumulated}

    def run(self) -> CheckpointRef:
        """Train to ``total_steps`` from wherever ``restore`` left the position; returns the final
        committed checkpoint. Raises StopRequested after committing when SIGTERM arrives."""
        window_tokens, window_start = 0, time.perf_counter()
        while self.step < self.total_steps:
            if self.ctx.stop.is_set():
                self.commit()
                raise StopRequested(f"stopped at step {self.step}")
            started = time.perf_counter()
            record = self.train_step()
            window_tokens += record.pop("tokens")
            if self.step % self.hp.log_every == 0 or self.step == self.total_steps:
                elapsed = time.perf_counter() - window_start
                self.ctx.metrics.log({
                    "step": self.step, "total_steps": self.total_steps, "round": self.round,
                    "lr": self.scheduler.get_last_lr()[0], "step_time": time.perf_counter() - started,
                    "tokens_per_second": window_tokens / elapsed if elapsed > 0 else 0.0, **record,
                })
                window_tokens, window_start = 0, time.perf_counter()
            if self.step % self.hp.checkpoint_every == 0 and self.step < self.total_steps:
                self.commit()
        if self.committed is None or self.committed.step != self.step:
            self.commit()
        return self.committed
