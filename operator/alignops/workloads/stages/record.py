"""What a trained stage reports: held-out figures before training (kept in every checkpoint, so a
resumed run reports the same ones), the first and final loss, and the figures after training, as
the result metrics (``<name>Before`` / ``<name>After``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from alignops.metrics.names import snake_case
from alignops.workloads.context import RunContext
from alignops.workloads.models.policy import Starting
from alignops.workloads.training.loop import TrainLoop

STAGE_RECORD = "stage_record.json"


class StageRecord:
    def __init__(self, ctx: RunContext, start: Starting, evaluate: Callable[[], dict[str, float]]):
        self.ctx = ctx
        saved = None
        if start.resume is not None and (start.directory / STAGE_RECORD).exists():
            saved = json.loads((start.directory / STAGE_RECORD).read_text())
        self.before: dict[str, float] = saved["before"] if saved else evaluate()
        self._first_loss: float | None = saved.get("lossFirst") if saved else None

    @property
    def first_loss(self) -> float | None:
        """The first logged training loss of the stage (of the first attempt, across resumes)."""
        if self._first_loss is None:
            self._first_loss = next((r["loss"] for r in self.ctx.metrics.history if "loss" in r), None)
        return self._first_loss

    def loop(self, start: Starting, hp, dataset_size: int, loss_fn) -> TrainLoop:
        """The stage's TrainLoop: every checkpoint carries the tokenizer and this record, and a
        resumed run continues from the stage's last committed checkpoint."""
        def save_extra(directory: Path) -> None:
            start.tokenizer.save_pretrained(str(directory))
            self.save(directory)

        loop = TrainLoop(self.ctx, start.model, hp, loss_fn, save_extra, dataset_size=dataset_size)
        if start.resume is not None:
            loop.restore(start.directory, start.resume)
        return loop

    def save(self, directory: Path) -> None:
        """Called by the stage's ``save_extra``: every checkpoint carries the record."""
        (directory / STAGE_RECORD).write_text(json.dumps({"before": self.before, "lossFirst": self.first_loss}))

    def metrics(self, loop: TrainLoop, after: dict[str, float], extra: dict[str, float] | None = None) -> dict[str, float]:
        """The result metrics; the held-out figures after training also go out as a metrics record
        (as the SFT stage does), so the dashboard's accuracy panel covers these stages."""
        state = loop.state
        self.ctx.metrics.log({"step": state.step, "total_steps": state.total_steps, "round": state.round,
                              **{snake_case(name): value for name, value in after.items()}})
        metrics: dict[str, float] = {"loss": state.loss(), "steps": state.step}
        if self.first_loss is not None:
            metrics["lossFirst"] = self.first_loss
        for name, value in self.before.items():
            metrics[f"{name}Before"] = value
        for name, value in after.items():
            metrics[f"{name}After"] = value
        metrics.update(extra or {})
        return metrics
