"""The ``generate`` stage: a model writes a dataset for a later stage. It loads the writing model
(``policy``; ``judge`` too for ai_preferences), the files (templates, principles, exemplars: the
user's or the package's), the seed tasks (``datasets.train`` prompts, else ``seedTasks``, else the
package's) and the held-out prompts to keep out (``datasets.eval``), runs the method
(``alignops.workloads.generate.methods``) and commits ``data.jsonl`` and ``generation.json`` (what
was made and dropped) as ``<stage_key>/checkpoint-1/`` with the checkpoint protocol: files first,
``manifest.json`` last, so a half-written dataset is never read (``datasets.*.fromStage`` resolves
to this directory; a later stage's reader verifies it against its manifest).

A rerun after a commit returns the committed dataset; before one, it generates again from the
start with the same seeds (SIGTERM before the commit: exit 143, nothing kept).

Status metrics: ``records``, ``generatedTokens``, ``seconds`` and the counters of the method
(``unparseable*``, ``dropped*``, ``rounds``, ...)."""

from __future__ import annotations

import json
import shutil
import sys
import time

import torch

from alignops.api.generate import GENERATED_FORMAT, GenerateHyperparameters
from alignops.contract import StageResult
from alignops.metrics.names import snake_case
from alignops.storage import commit_checkpoint
from alignops.workloads.context import ConfigError, RunContext
from alignops.workloads.data.held_out import read_records
from alignops.workloads.data.records import DATASET_FILE, GENERATION_REPORT
from alignops.workloads.generate.methods import GENERATE_METHODS, GenerationRun
from alignops.workloads.generate.resources import ResourceError, load_exemplars, load_principles, load_seed_tasks, load_templates
from alignops.workloads.generate.sampler import TextSampler
from alignops.workloads.models.policy import initial_model
from alignops.workloads.data.chat import Chat
from alignops.workloads.data.views import prompt_item
from alignops.workloads.rl.sampling import engine_for
from alignops.workloads.stages.base import parse_hyperparameters

REPORT_FILE = GENERATION_REPORT
STEP = 1


class GenerateStage:
    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.hp: GenerateHyperparameters = parse_hyperparameters(GenerateHyperparameters, ctx)
        self.method = ctx.config.algorithm
        if self.method not in GENERATE_METHODS:
            raise ConfigError(f"method {self.method!r}: known methods are {', '.join(GENERATE_METHODS.names())}")

    def run(self) -> StageResult:
        committed = self.ctx.latest()
        if committed is not None:  # an earlier attempt committed the dataset
            report = json.loads((self.ctx.checkpoint_dir(committed) / REPORT_FILE).read_text())
            return StageResult(checkpoint_uri=committed.uri, metrics=report["metrics"])
        started = time.perf_counter()
        torch.manual_seed(self.hp.seed)
        run = self._prepare()
        records = GENERATE_METHODS.get(self.method)(run)
        metrics = {"records": len(records), "generatedTokens": run.sampler.generated_tokens
                   + (run.judge.generated_tokens if run.judge else 0), **dict(sorted(run.counts.items()))}
        if not records:
            raise ConfigError(f"{self.method} generated no record ({json.dumps(metrics)}): the model writes nothing the "
                              "parser and filters accept; use a more capable model, or loosen the filters (verifier, rougeThreshold, lengths)")
        metrics["seconds"] = round(time.perf_counter() - started, 3)
        self.ctx.metrics.log({"step": self.hp.rounds, "total_steps": self.hp.rounds, **{snake_case(k): v for k, v in metrics.items()}})
        return StageResult(checkpoint_uri=self._commit(records, metrics), metrics=metrics)

    def _prepare(self) -> GenerationRun:
        ctx, hp = self.ctx, self.hp
        options = ctx.storage_options
        try:
            templates = load_templates(hp.templates, options)
            principles = load_principles(hp.principles, options)
            exemplars = load_exemplars(hp.exemplars, options)
        except ResourceError as exc:
            raise ConfigError(str(exc)) from None
        start = initial_model(ctx, ctx.config.inputs.policy)
        try:
            seeds = self._seeds(start.tokenizer)
        except ResourceError as exc:
            raise ConfigError(str(exc)) from None
        if not seeds:
            raise ConfigError("no seed tasks: datasets.train (or hyperparameters.seedTasks) has no prompt")
        sampler = TextSampler(ctx, engine_for(ctx, hp, start.model, start.tokenizer, start.directory), start.tokenizer, hp)
        judge = None
        if ctx.config.inputs.judge:
            graded = initial_model(ctx, ctx.config.inputs.judge)
            judge = TextSampler(ctx, engine_for(ctx, hp, graded.model, graded.tokenizer, graded.directory), graded.tokenizer, hp)
        return GenerationRun(hp, templates, principles, exemplars, seeds, self._held_out(start.tokenizer), sampler, judge)

    def _seeds(self, tokenizer) -> list[str]:
        datasets = self.ctx.config.datasets
        if datasets is None or datasets.train is None:
            return load_seed_tasks(self.hp.seed_tasks, self.ctx.storage_options)
        records = read_records(self.ctx, datasets.train, "prompts")
        chat = Chat(tokenizer)
        return records.each(lambda r: prompt_item(r, chat)["prompt"])

    def _held_out(self, tokenizer) -> list[str]:
        datasets = self.ctx.config.datasets
        if datasets is None or datasets.eval is None:
            return []
        source = datasets.eval
        records = read_records(self.ctx, source, "prompts", held_out=source.generator is not None)
        chat = Chat(tokenizer)
        return records.each(lambda r: prompt_item(r, chat)["prompt"])

    def _commit(self, records: list[dict], metrics: dict) -> str:
        directory = self.ctx.scratch / "dataset"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        (directory / DATASET_FILE).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        report = {"method": self.method, "format": GENERATED_FORMAT[self.method], "metrics": metrics,
                  "hyperparameters": self.ctx.config.hyperparameters}
        (directory / REPORT_FILE).write_text(json.dumps(report, indent=1))
        ref = commit_checkpoint(self.ctx.store, directory, self.ctx.config.stage_key, STEP)
        print(f"{self.method}: committed {len(records)} records to {ref.uri}", file=sys.stderr)
        return ref.uri


STAGE = GenerateStage
