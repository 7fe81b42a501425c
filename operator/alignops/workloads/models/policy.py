"""Where a stage's model comes from: its own last committed checkpoint (resume), an earlier stage's
output, a checkpoint URI, or the base model built from its architecture."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignops.storage.checkpoints import CheckpointRef
from alignops.workloads.context import RunContext
from alignops.workloads.models.build import build_model, build_tokenizer
from alignops.workloads.models.loading import load_causal_lm, load_tokenizer, pick_device


@dataclass
class Starting:
    model: object
    tokenizer: object
    resume: CheckpointRef | None
    directory: Path | None  # the checkpoint directory loaded from, if any


def input_checkpoint(ctx: RunContext, uri: str | None) -> Path | None:
    """The directory of an input checkpoint: ``uri`` if given, else the base model's URI, else None
    (build from the architecture)."""
    uri = uri or ctx.config.base_model.uri
    return ctx.open_uri(uri) if uri else None


def initial_model(ctx: RunContext, uri: str | None, loader=load_causal_lm, builder=build_model) -> Starting:
    """The model before any checkpoint of this stage: the checkpoint at ``uri``, else the base model
    (loaded from its URI, or built by ``builder(architecture, tokenizer)``). Also how a stage loads a
    frozen reference, which must not follow the stage's own resumed checkpoints."""
    device = pick_device()
    directory = input_checkpoint(ctx, uri)
    if directory is not None:
        return Starting(loader(directory).to(device), load_tokenizer(directory), None, directory)
    tokenizer = build_tokenizer()
    return Starting(builder(ctx.config.base_model.architecture, tokenizer).to(device), tokenizer, None, None)


def starting_policy(ctx: RunContext, loader=load_causal_lm, builder=build_model) -> Starting:
    """The stage's own last committed checkpoint (resume), else ``initial_model`` of its policy input.
    ``loader``/``builder`` give other model classes (the reward stage's sequence classifier)."""
    resume = ctx.latest()
    if resume is not None:
        directory = ctx.checkpoint_dir(resume)
        return Starting(loader(directory).to(pick_device()), load_tokenizer(directory), resume, directory)
    return initial_model(ctx, ctx.config.inputs.policy, loader, builder)
