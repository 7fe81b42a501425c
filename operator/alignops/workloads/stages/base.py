"""The common shape of a trained stage (sft, reward, preference, rank): a template ``run`` over
hooks, so a new stage is one module that fills them in and one entry in ``STAGES``
(``alignops.workloads.stages``).

``run``: ``check`` the configuration (refuse at once what can never run), seed, ``load_inputs``
(the starting model: the stage's own last checkpoint on resume, else its input), ``build_dataset``
(through ``training_data``: read, tokenised, cached between attempts) and ``build_held_out``, ``evaluate`` before training (kept in the checkpoint by ``StageRecord`` so a
resumed run reports the same figures), train with the one ``TrainLoop`` on ``loss``, evaluate
after, and report.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ValidationError

from alignops.contract import StageResult
from alignops.workloads.context import ConfigError, RunContext
from alignops.workloads.data.tokenized import TrainingData
from alignops.workloads.data.training import training_data
from alignops.workloads.models.checkpointing import enable_gradient_checkpointing
from alignops.workloads.models.policy import Starting, starting_policy
from alignops.workloads.stages.record import StageRecord
from alignops.workloads.training.loop import MicroBatchLoss, TrainLoop
from alignops.workloads.training.order import StreamOrder


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
        """The loss of the training items ``indices``: a mean over their units (``loss_units``)."""
        raise NotImplementedError

    def loss_units(self, indices: list[int]) -> float:
        """What ``loss`` is a mean over, counted for ``indices`` (default: the items themselves); the
        loop weights each share by it, so a step's loss is the mean over the whole step."""
        return len(indices)

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
        """Figures the stage adds to its result: by default the examples dropped for length."""
        dropped = self.data.dropped_examples if self.data is not None else 0
        return {"droppedExamples": dropped} if dropped else {}

    # -- the template -----------------------------------------------------------------------------
    data: TrainingData | None = None

    def training_data(self, view: str, default_format: str, reward: bool = False) -> TrainingData:
        """The tokenised training data as ``view`` reads it (``alignops.workloads.data.views``)."""
        hp = self.hp
        self.data = training_data(self.ctx, view, self.tokenizer, hp.max_length, hp.eval_size, default_format, reward,
                                  seed=hp.seed, step_items=hp.batch_size * hp.gradient_accumulation_steps)
        return self.data

    def data_order(self) -> StreamOrder | None:
        """Streamed data is read in order; other data in the loop's seeded ``DataOrder``."""
        if self.data is None or not self.data.streamed:
            return None
        return StreamOrder(self.hp.batch_size, self.hp.gradient_accumulation_steps)

    def run(self) -> StageResult:
        self.check()
        datasets = self.ctx.config.datasets
        if datasets is None:
            raise ConfigError(f"datasets.train is required for a {self.ctx.config.type} stage")
        if datasets.train.streaming and getattr(self.hp, "max_steps", None) is None:
            raise ConfigError("datasets.train.streaming: a stream has no length; set hyperparameters.maxSteps")
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
        loop = record.loop(self.start, self.hp, size, self.loss, self.loss_units, order=self.data_order())
        self.model = loop.model  # the engine's handle: forward passes go through it
        self.before_training(loop)
        loop.run(wait=False)
        with loop.engine.gathered():  # every process evaluates the same held-out data, while the final checkpoint uploads
            after = self.evaluate_after()
        final = loop.wait_committed()
        return StageResult(checkpoint_uri=final.uri, metrics=record.metrics(loop, after, self.extra_metrics()))
