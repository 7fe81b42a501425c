"""A stage's training data: tokenised whole and read by index (``tokenized.py``), or streamed
(``streaming.py``) when ``datasets.train.streaming`` is set."""

from __future__ import annotations

from alignops.workloads.context import ConfigError, RunContext
from alignops.workloads.data.streaming import streamed_training_data
from alignops.workloads.data.tokenized import TrainingData, tokenized_training_data


def training_data(ctx: RunContext, view: str, tokenizer, max_length: int, eval_size: int, default_format: str,
                  reward: bool = False, seed: int = 0, step_items: int = 1) -> TrainingData:
    """``view`` of the stage's training data (``views.py``). A stream is shuffled with ``seed`` and
    holds at least two steps' ``step_items``; ``reward`` drops an eos that is also pad."""
    datasets = ctx.config.datasets
    if datasets is None:
        raise ConfigError(f"datasets.train is required for a {ctx.config.type} stage")
    if datasets.train.streaming:
        return streamed_training_data(ctx, datasets.train, view, tokenizer, max_length, eval_size, default_format,
                                      seed, step_items)
    return tokenized_training_data(ctx, view, tokenizer, max_length, eval_size, default_format, reward)
