"""What a stage run has at hand: its resolved config, its store, a scratch directory, a metrics sink,
and the stop flag that SIGTERM raises."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from alignops.api.common import HUB_SCHEME, parse_hub_location
from alignops.contract import EXIT_CONFIG, EXIT_RETRY, PermanentError, StageRunConfig, TransientError
from alignops.storage import ObjectStore, StorageOptions, fetch_checkpoint, latest_checkpoint, open_store
from alignops.storage.base import StorageError
from alignops.storage.checkpoints import CheckpointRef, ChecksumMismatch, NotCommitted
from alignops.storage.directories import fetch_directory
from alignops.storage.locate import locate
from alignops.workloads.distributed import SINGLE, World
from alignops.workloads.models.hf_dir import ModelDirError, check_model_directory, wanted_file
from alignops.workloads.models.hub import hub_snapshot
from alignops.workloads.training.commits import BackgroundCommits


class ConfigError(PermanentError):
    """The stage can never run as configured, or its input is missing, unreadable or has nothing to
    learn: exit 78, no retry (the run contract's PermanentError)."""


def exit_code_for(exc: BaseException) -> int:
    """The one place an exception becomes an exit code: the contract's classes say so themselves;
    a storage error is permanent when the store says retrying cannot help (a missing object or
    bucket, refused credentials); text that is not UTF-8 stays so. Anything else is worth a retry."""
    if isinstance(exc, PermanentError):
        return EXIT_CONFIG
    if isinstance(exc, TransientError):
        return EXIT_RETRY
    if isinstance(exc, StorageError):
        return EXIT_CONFIG if exc.permanent else EXIT_RETRY
    if isinstance(exc, UnicodeDecodeError):
        return EXIT_CONFIG
    return EXIT_RETRY


class StopRequested(Exception):
    """SIGTERM arrived and a checkpoint was committed: exit 143, resumed later."""


@dataclass
class MetricsSink:
    """Per-step metrics: JSON lines for `alignops run` (ALIGNOPS_METRICS_LOG) and, where
    ALIGNOPS_METRICS_PORT is set, Prometheus gauges served by alignops.metrics."""

    log_path: Path | None = None
    exporter: object | None = None
    history: list[dict] = field(default_factory=list)

    def log(self, record: dict) -> None:
        record = {"time": round(time.time(), 3), **record}
        self.history.append(record)
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        if self.exporter is not None:
            self.exporter.observe(record)


def storage_options(config: StageRunConfig) -> StorageOptions:
    s = config.storage
    return StorageOptions(endpoint=s.endpoint, region=s.region, path_style=s.path_style)


@dataclass
class RunContext:
    config: StageRunConfig
    store: ObjectStore
    scratch: Path
    metrics: MetricsSink
    stop: threading.Event = field(default_factory=threading.Event)
    world: World = SINGLE
    opened: dict[str, Path] = field(default_factory=dict)  # open_uri's answers: each input is fetched once
    commits: BackgroundCommits = field(default_factory=BackgroundCommits)  # checkpoint uploads beside training

    @property
    def storage_options(self) -> StorageOptions:
        return storage_options(self.config)

    def checkpoint_dir(self, ref: CheckpointRef) -> Path:
        """A verified local copy of a committed checkpoint of this stage (fetched once per node)."""
        return self.world.on_node_leader(lambda: _verified(
            self.store, ref.key, self.node_scratch / "downloads",
            "delete it to resume from the checkpoint before it, or rerun the stage (alignops run --rerun)"))

    @property
    def node_scratch(self) -> Path:
        """Scratch space shared by the processes of one node (this process's own when it runs alone)."""
        shared = os.environ.get("ALIGNOPS_NODE_SCRATCH")
        return Path(shared) if shared and self.world.distributed else self.scratch

    def latest(self, round_prefix: str | None = None) -> CheckpointRef | None:
        key = self.config.stage_key if round_prefix is None else f"{self.config.stage_key}/{round_prefix}"
        return latest_checkpoint(self.store, key)

    def open_uri(self, uri: str) -> Path:
        """A local copy of the model at ``uri``: a committed checkpoint (verified against its
        manifest), a plain Hugging Face model directory on file:// or s3:// (checked: config,
        safetensors headers, tokenizer), or a Hub model ``hf://ORG/NAME@REVISION`` (from the cache).
        Fetched once per run, by one process per node when several need it."""
        if uri not in self.opened:
            self.opened[uri] = self.world.on_node_leader(lambda: self._open(uri))
        return self.opened[uri]

    def _open(self, uri: str) -> Path:
        trust = self.config.base_model.trust_remote_code
        try:
            if uri.startswith(HUB_SCHEME):
                repo, revision = parse_hub_location(uri)
                directory = hub_snapshot(repo, revision, trust)
                check_model_directory(directory, f"hub model {repo}@{revision}", trust)
                return directory
            if not uri.startswith(("s3://", "file://")):
                raise ConfigError(f"model URI {uri!r}: unknown scheme; use s3://, file:// or a Hub model (hub: ORG/NAME)")
            store, key = locate(uri, self.storage_options)
            try:
                return _verified(store, key, self.scratch / "inputs", "commit it again or point at another checkpoint")
            except NotCommitted:  # no manifest: a plain model directory, checked instead of verified
                directory = fetch_directory(store, key, self.scratch / "inputs", lambda name: wanted_file(name, trust))
                check_model_directory(directory, uri, trust)
                return directory
        except ModelDirError as exc:  # a directory that can never load: no retry
            raise ConfigError(f"{exc}; check the model or input uri (a stage's output is its checkpointUri)") from None


def _verified(store: ObjectStore, key: str, cache: Path, fix: str) -> Path:
    """``fetch_checkpoint``, where content that differs from its manifest is corrupt (ConfigError,
    no retry): on the local disk at once, from a remote store when a second download differs too
    (the first may have been cut short)."""
    tries = 1 if store.local_path(key) is not None else 2
    for attempt in range(1, tries + 1):
        try:
            return fetch_checkpoint(store, key, cache)
        except ChecksumMismatch as exc:
            if attempt == tries:
                raise ConfigError(f"corrupt checkpoint: {exc}; {fix}") from None
    raise AssertionError("unreachable")


def make_context(config: StageRunConfig, world: World = SINGLE) -> RunContext:
    """The run's context; of several processes only the main one logs metrics and serves them."""
    store = open_store(config.storage.uri, storage_options(config))
    scratch_root = os.environ.get("ALIGNOPS_SCRATCH")
    scratch = Path(tempfile.mkdtemp(prefix="alignops-", dir=scratch_root))
    log_path = os.environ.get("ALIGNOPS_METRICS_LOG") if world.is_main else None
    exporter = None
    if os.environ.get("ALIGNOPS_METRICS_PORT") and world.is_main:
        from alignops.metrics.workload import serve_stage_metrics

        exporter = serve_stage_metrics(int(os.environ["ALIGNOPS_METRICS_PORT"]), config)
    context = RunContext(config=config, store=store, scratch=scratch, metrics=MetricsSink(Path(log_path) if log_path else None, exporter),
                         world=world)
    signal.signal(signal.SIGTERM, lambda *_: context.stop.set())
    return context
