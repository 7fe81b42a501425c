"""Where a stage's model comes from: its own last committed checkpoint (resume), an earlier stage's
output, a model directory URI, a Hub model, or the base model built from its architecture; under a
fresh LoRA adapter where the stage trains one (``alignops.workloads.models.adapter``)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from alignops.api.common import Architecture
from alignops.api.stages import STAGE_TYPES
from alignops.storage.checkpoints import CheckpointRef
from alignops.workloads.context import RunContext
from alignops.workloads.data.held_out import read_records
from alignops.workloads.models.adapter import (
    AdapterBase,
    adapter_base,
    adapter_directory,
    adapter_only,
    add_adapter,
    merge_into,
    resume_adapter,
    save_plain_model,
)
from alignops.workloads.models.hf_dir import CONFIG
from alignops.workloads.models.build import build_model, build_tokenizer, record_texts
from alignops.workloads.models.loading import fit_tokenizer, load_causal_lm, load_tokenizer, pick_device


@dataclass
class Starting:
    model: object
    tokenizer: object
    resume: CheckpointRef | None
    directory: Path | None  # the checkpoint directory loaded from, if any


TOKENIZER_RECORDS = 100_000  # enough text for a BPE vocabulary; a streamed corpus is never read whole


def training_texts(ctx: RunContext):
    """The stage's training text, for a tokenizer trained on it (``architecture.tokenizer: bpe``)."""
    datasets = ctx.config.datasets
    if datasets is None:
        return iter(())
    return record_texts(read_records(ctx, datasets.train, STAGE_TYPES[ctx.config.type].dataset_format, limit=TOKENIZER_RECORDS))


def open_tokenizer(ctx: RunContext, directory: Path):
    model = ctx.config.base_model
    return load_tokenizer(directory, model.trust_remote_code, model.chat_template)


def load_model(ctx: RunContext, location: str | None, loader=load_causal_lm, builder=build_model) -> Starting:
    """The model at ``location`` (an adapter checkpoint: its base with the adapter merged in), else
    the base model built from its architecture. ``Starting.directory`` is a directory holding
    exactly this model, where there is one."""
    device = pick_device()
    if location is None:
        arch = ctx.config.base_model.architecture
        tokenizer = build_tokenizer(arch, lambda: training_texts(ctx))
        tokenizer.chat_template = ctx.config.base_model.chat_template or tokenizer.chat_template
        return Starting(builder(arch, tokenizer).to(device), tokenizer, None, None)
    directory = ctx.open_uri(location)
    tokenizer = open_tokenizer(ctx, directory)
    if adapter_only(directory):
        model = merge_into(base_model(ctx, adapter_base(directory), tokenizer, loader, builder), directory)
        return Starting(fit_tokenizer(model, tokenizer, location).to(device), tokenizer, None, None)
    model = loader(directory, trust_remote_code=ctx.config.base_model.trust_remote_code)
    return Starting(fit_tokenizer(model, tokenizer, location).to(device), tokenizer, None, directory)


def base_model(ctx: RunContext, base: AdapterBase, tokenizer, loader, builder):
    """The model an adapter applies to; one built from an architecture uses the adapter
    checkpoint's tokenizer (the one it was built with)."""
    if base.location is not None:
        return load_model(ctx, base.location, loader, builder).model
    arch = Architecture.model_validate(base.architecture) if base.architecture else ctx.config.base_model.architecture
    return builder(arch, tokenizer).to(pick_device())


def initial_model(ctx: RunContext, uri: str | None, loader=load_causal_lm, builder=build_model) -> Starting:
    """The model before any checkpoint of this stage: the model at ``uri``, else the base model
    (loaded from its location, or built by ``builder(architecture, tokenizer)``). Also how a stage
    loads a frozen reference, which must not follow the stage's own resumed checkpoints."""
    return load_model(ctx, uri or ctx.config.base_model.location, loader, builder)


def starting_policy(ctx: RunContext, loader=load_causal_lm, builder=build_model) -> Starting:
    """The stage's own last committed checkpoint (resume), else ``initial_model`` of its policy input;
    under the stage's LoRA adapter if it trains one. ``loader``/``builder`` give other model classes
    (the reward stage's sequence classifier)."""
    spec = ctx.config.adapter
    resume = ctx.latest()
    if resume is not None:
        directory = ctx.checkpoint_dir(resume)
        found = adapter_directory(directory) if spec is not None else None
        if found is not None:
            tokenizer = open_tokenizer(ctx, directory)
            model = resume_adapter(base_model(ctx, adapter_base(found), tokenizer, loader, builder), directory, spec)
            return Starting(model, tokenizer, resume, directory)
        model = loader(directory, trust_remote_code=ctx.config.base_model.trust_remote_code)
        return Starting(model.to(pick_device()), open_tokenizer(ctx, directory), resume, directory)
    location = ctx.config.inputs.policy or ctx.config.base_model.location
    start = initial_model(ctx, location, loader, builder)
    if spec is not None:
        arch = ctx.config.base_model.architecture
        base = AdapterBase(location, arch.model_dump(mode="json", by_alias=True) if location is None and arch else None)
        start.model, start.directory = add_adapter(start.model, spec, base), None
    return start


def model_directory(ctx: RunContext, location: str, loader=load_causal_lm) -> Path:
    """A directory ``from_pretrained`` loads as the model at ``location``: where it lies, or for an
    adapter checkpoint its merged model, saved once to scratch."""
    directory = ctx.open_uri(location)
    if not adapter_only(directory):
        return directory
    target = ctx.scratch / "merged" / hashlib.sha256(location.encode()).hexdigest()[:16]
    if not (target / CONFIG).is_file():
        start = load_model(ctx, location, loader)
        save_plain_model(start.model, target)
        start.tokenizer.save_pretrained(str(target))
    return target
