"""The common shape of a trained stage (sft, reward, preference, rank): a template ``run`` over
hooks, so a new stage is one module that fills them in and one entry in ``STAGES``
(``alignops.workloads.stages``).

``run``: ``check`` the configuration (refuse at once what can never run), seed, ``load_inputs``
(the starting model: the stage's own last checkpoint on resume, else its input), ``build_dataset``
and ``build_held_out``, ``evaluate`` before training (kept in the checkpoint by ``StageRecord`` so a
resumed run reports the same figures), train with the one ``TrainLoop`` on ``loss``, evaluate
after, and report.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ValidationError

from alignops.contract import StageResult
from alignops.workloads.context import ConfigError, RunContext
from alignops.workloads.data.records import load_records
from alignops.workloads.models.checkpointing import enable_gradient_checkpointing
from alignops.workloads.models.policy import Starting, starting_policy
from alignops.workloads.stages.record import StageRecord
from alignops.workloads.training.loop import MicroBatchLoss, TrainLoop


def parse_hyperparameters(model_cls: type[BaseModel], ctx: RunContext):
    try:
        return model_cls.model_validate(ctx.config.hyperparameters)
    except ValidationError as exc:
        raise ConfigError(f"hyperparameters: {exc}") from None


class Stage:
    """A trained stage. Subclasses set ``hyperparameters`` (the API model of its hyperparameters)
    and ``default_algorithm``, and fill in the hooks below."""

    hyperparameters: ClassVar[type[BaseModel]]
    default_algorithm: ClassVar[str | None] = None

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.hp = parse_hyperparameters(self.hyperparameters, ctx)
        self.algorithm = ctx.config.algorithm or self.default_algorithm

    # -- hooks ------------------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse, as a ConfigError, a configuration that can never run, before any work."""

    def load_inputs(self) -> Starting:
        """The model training starts from (and anything else the stage needs beside it)."""
        return starting_policy(self.ctx)

    def build_dataset(self) -> int:
        """Read and tokenise the training data; returns the number of training items."""
        raise NotImplementedError

    def build_held_out(self) -> None:
        """Read and tokenise the held-out data the stage evaluates on."""

    def loss(self, model: torch.nn.Module, indices: list[int]) -> MicroBatchLoss:
        """The loss of the training items ``indices``."""
        raise NotImplementedError

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Held-out figures of ``model``."""
        return {}

    def evaluate_before(self) -> dict[str, float]:
        return self.evaluate(self.model)

    def evaluate_after(self) -> dict[str, float]:
        return self.evaluate(self.model)

    def before_training(self, loop: TrainLoop) -> None:
        """Called once the loop knows its data order, before the first step."""

    def extra_metrics(self) -> dict[str, float]:
        return {}

    # -- the template -----------------------------------------------------------------------------
    def training_records(self, default_format: str) -> list[dict]:
        return load_records(self.ctx.config.datasets.train, default_format, options=self.ctx.storage_options)

    def run(self) -> StageResult:
        self.check()
        if self.ctx.config.datasets is None:
            raise ConfigError(f"datasets.train is required for a {self.ctx.config.type} stage")
        torch.manual_seed(self.hp.seed)  # before loading: a new head's initialisation draws from it
        self.start = self.load_inputs()
        self.model, self.tokenizer = self.start.model, self.start.tokenizer
        if self.hp.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        self.pad = self.tokenizer.pad_token_id
        try:
            size = self.build_dataset()
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"training data: {exc}") from None
        self.build_held_out()
        record = StageRecord(self.ctx, self.start, self.evaluate_before)
        loop = record.loop(self.start, self.hp, size, self.loss)
        self.before_training(loop)
        final = loop.run()
        return StageResult(checkpoint_uri=final.uri, metrics=record.metrics(loop, self.evaluate_after(), self.extra_metrics()))
