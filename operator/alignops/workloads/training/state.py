"""``TrainState``: everything a checkpoint must hold to continue a stage exactly where it stopped —
the model and optimizer/scheduler state (through the engine), each process's RNG streams, and the
position (optimiser steps taken, tokens seen, the last loss, the rl round). The data position needs
only the step: the data order is a pure function of the seed (``alignops.workloads.training.order``).

Every process calls ``save`` and ``restore`` (the engine gathers and scatters shards); only the main
process writes files. A run resumed on another number of processes keeps the weights, optimizer
and position; processes without a saved RNG stream derive one from the seed, rank and step, and
the log says so.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from alignops.seeds import PROCESS, STEP, derive_seed
from alignops.workloads.training.engine import Engine

TRAINER_STATE = "trainer_state.json"
RNG_STATE = "rng_state.pt"


def _rng_now() -> dict:
    return {"torch": torch.random.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state(torch.cuda.current_device()) if torch.cuda.is_available() else None}


def _set_rng(state: dict) -> None:
    torch.random.set_rng_state(state["torch"])
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if torch.cuda.is_available() and cuda is not None:
        if isinstance(cuda, list):  # the earlier format: every device's state
            cuda = cuda[0]
        torch.cuda.set_rng_state(cuda, torch.cuda.current_device())


@dataclass
class TrainState:
    engine: Engine
    total_steps: int
    seed: int = 0
    step: int = 0
    tokens_seen: int = 0
    last_loss: float | torch.Tensor | None = None  # a 0-dim tensor until read back (at save)
    round: int | None = None
    world_size_saved: int | None = None  # the process count of the checkpoint restored from

    @property
    def model(self) -> torch.nn.Module:
        return self.engine.model

    def snapshot(self, directory: Path, optimizer: bool = True) -> Callable[[], None]:
        """Take the checkpoint now (every process; the engine gathers what is sharded) and return
        the write that finishes its weights files, which may run on another thread (``commits``).
        ``optimizer``: with the optimizer and schedule state, which only a checkpoint that a run
        may resume from needs (a stage's final checkpoint is read for its weights alone)."""
        world = self.engine.world
        write = self.engine.snapshot(directory, optimizer)
        streams = world.all_gather_object(_rng_now())
        if world.is_main:
            torch.save({"world_size": world.size, "ranks": streams}, directory / RNG_STATE)
            (directory / TRAINER_STATE).write_text(json.dumps(
                {"step": self.step, "total_steps": self.total_steps, "tokens_seen": self.tokens_seen,
                 "last_loss": self.last_loss, "round": self.round, "world_size": world.size,
                 "optimizer_state": optimizer}))
        return write

    def save(self, directory: Path, optimizer: bool = True) -> None:
        """Write the model, optimizer, scheduler, RNG and position into ``directory``."""
        self.snapshot(directory, optimizer)()

    def restore(self, directory: Path) -> None:
        """Restore optimizer, scheduler, RNG and position from a committed checkpoint's directory
        (the model's weights were loaded from it by the stage)."""
        world = self.engine.world
        saved = json.loads((directory / TRAINER_STATE).read_text())
        self.step, self.tokens_seen, self.last_loss = saved["step"], saved["tokens_seen"], saved.get("last_loss")
        self.world_size_saved = saved.get("world_size", 1)
        if saved.get("optimizer_state", True):
            self.engine.load_state(directory)
        elif self.step < self.total_steps and world.is_main:  # a final checkpoint of a longer run
            print(f"resuming at step {self.step} from a checkpoint without optimizer state (a stage's final "
                  "checkpoint): the optimizer's moments start from zero", file=sys.stderr, flush=True)
        rng = torch.load(directory / RNG_STATE, weights_only=False)
        streams = rng["ranks"] if "ranks" in rng else [rng]
        if len(streams) == world.size:
            _set_rng(streams[world.rank])
        else:
            seed = derive_seed(self.seed, (PROCESS, world.rank), (STEP, self.step))
            torch.manual_seed(seed)
            random.seed(seed)
        if self.world_size_saved != world.size and world.is_main:
            print(f"resuming at step {self.step} on {world.size} process(es) from a checkpoint written by "
                  f"{self.world_size_saved}: weights, optimizer state and data position carried over; random "
                  "streams re-derived from the seed", file=sys.stderr, flush=True)
