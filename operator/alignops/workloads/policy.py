"""Where a stage's model comes from: its own last committed checkpoint (resume), an earlier stage's
output, a checkpoint URI, or the base model built from its architecture."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignops.storage.checkpoints import CheckpointRef
from alignops.workloads.context import RunContext
from alignops.workloads.modeling import build_model, build_tokenizer, load_causal_lm, load_tokenizer, pick_device


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


def starting_policy(ctx: RunContext, loader=load_causal_lm) -> Starting:
    resume = ctx.latest()
    device = pick_device()
    if resume is not None:
        directory = ctx.checkpoint_dir(resume)
        return Starting(loader(directory).to(device), load_tokenizer(directory), resume, directory)
    directory = input_checkpoint(ctx, ctx.config.inputs.policy)
    if directory is not None:
        return Starting(loader(directory).to(device), load_tokenizer(directory), None, directory)
    tokenizer = build_tokenizer()
    return Starting(build_model(ctx.config.base_model.architecture, tokenizer).to(device), tokenizer, None, None)
