"""``TrainState``: everything a checkpoint must hold to continue a stage exactly where it stopped —
the model and optimizer/scheduler state (through the engine), the RNG streams, and the position
(optimiser steps taken, tokens seen, the last loss, the rl round). The data position needs only the
step: the data order is a pure function of the seed (``alignops.workloads.training.order``)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from alignops.workloads.training.engine import Engine

TRAINER_STATE = "trainer_state.json"
RNG_STATE = "rng_state.pt"


@dataclass
class TrainState:
    engine: Engine
    total_steps: int
    step: int = 0
    tokens_seen: int = 0
    last_loss: float | torch.Tensor | None = None  # a 0-dim tensor until read back (at save)
    round: int | None = None

    @property
    def model(self) -> torch.nn.Module:
        return self.engine.model

    def save(self, directory: Path) -> None:
        """Write the model, optimizer, scheduler, RNG and position into ``directory``."""
        self.engine.save_model(directory)
        self.engine.save_state(directory)
        torch.save({"torch": torch.random.get_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}, directory / RNG_STATE)
        (directory / TRAINER_STATE).write_text(json.dumps(
            {"step": self.step, "total_steps": self.total_steps, "tokens_seen": self.tokens_seen,
             "last_loss": self.loss(), "round": self.round}))

    def loss(self) -> float | None:
        """The last step's loss as a float (reading it back from the device)."""
        return None if self.last_loss is None else float(self.last_loss)

    def restore(self, directory: Path) -> None:
        """Restore optimizer, scheduler, RNG and position from a committed checkpoint's directory
        (the model's weights were loaded from it by the stage)."""
        saved = json.loads((directory / TRAINER_STATE).read_text())
        self.step, self.tokens_seen, self.last_loss = saved["step"], saved["tokens_seen"], saved.get("last_loss")
        self.engine.load_state(directory)
        rng = torch.load(directory / RNG_STATE, weights_only=False)
        torch.random.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if torch.cuda.is_available() and rng.get("cuda") is not None:
            torch.cuda.set_rng_state_all(rng["cuda"])
