"""The run contract: what every executor (``alignops run``, the operator) and every stage run agree
on, in one place (docs/architecture.md, "The run contract").

- A stage run is started as ``python -m alignops.workloads CONFIG.json`` with a ``StageRunConfig``:
  the exact bytes a pod (from a ConfigMap) and a local process receive; nothing reaches a workload
  through hidden globals.
- It ends with an exit code: ``EXIT_OK`` success; ``EXIT_RETRY`` failed, worth a retry;
  ``EXIT_CONFIG`` configuration error, fail at once; ``EXIT_SIGTERM`` stopped by SIGTERM after
  committing a checkpoint (resume, not a failed attempt). Failures come in two classes,
  ``PermanentError`` (exit 78) and ``TransientError`` (exit 1); ``alignops.workloads.context.exit_code_for``
  sorts every exception into one of them.
- It writes its ``StageResult`` (at most ``RESULT_LIMIT`` bytes of JSON) to the path in
  ``RESULT_PATH_ENV``: on a cluster the container's termination-message path, so the operator reads
  it from the pod status and never needs storage credentials. A failed run may name why in the
  result's ``reason`` (one of ``RUN_REASONS``): the executor reports it as the attempt's reason.
- A run on several nodes (one pod each) meets at a static rendezvous named by torchrun's own
  variables (``NODES_ENV`` ... ``MASTER_PORT_ENV``); ``RENDEZVOUS_TIMEOUT_ENV`` bounds the wait
  for every node, after which the run fails with ``REASON_RENDEZVOUS_TIMEOUT``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from alignops.api.common import Datasets, LoraAdapter, ModelSource
from alignops.api.judge import JudgeSpec

EXIT_OK = 0
EXIT_RETRY = 1
EXIT_CONFIG = 78
EXIT_SIGTERM = 143

RESULT_PATH_ENV = "ALIGNOPS_RESULT_PATH"
RESULT_LIMIT = 4096  # bytes: a Kubernetes termination message holds at most 4096
MESSAGE_LIMIT = 1024

# the rendezvous of a run across nodes: torchrun's variables, as Kubeflow Trainer sets them
NODES_ENV = "PET_NNODES"
PROCESSES_PER_NODE_ENV = "PET_NPROC_PER_NODE"
NODE_RANK_ENV = "PET_NODE_RANK"
MASTER_ADDR_ENV = "PET_MASTER_ADDR"
MASTER_PORT_ENV = "PET_MASTER_PORT"
RENDEZVOUS_TIMEOUT_ENV = "ALIGNOPS_RENDEZVOUS_TIMEOUT"
DEFAULT_RENDEZVOUS_TIMEOUT = 900  # seconds

# reasons a failed run may report in its result (the executor's own reasons cover the rest)
REASON_RENDEZVOUS_TIMEOUT = "RendezvousTimeout"  # not every node joined in time: retried from the last checkpoint
RUN_REASONS = frozenset({REASON_RENDEZVOUS_TIMEOUT})


class PermanentError(Exception):
    """The run can never succeed as configured or with the input it was given: a path that does not
    exist (local or S3), an input that cannot be read or is corrupt, text that is not UTF-8, data
    with nothing to learn, settings that do not go together. Exit ``EXIT_CONFIG`` at once, no retry;
    the message names the place (``FILE:LINE`` for JSON lines, ``FILE row N`` for tables), the field
    and the fix."""


class TransientError(Exception):
    """Worth another attempt: the network, an S3 5xx or throttling that outlasted the client's own
    retries, a node that went away. Exit ``EXIT_RETRY``; the planner retries with backoff from the
    last checkpoint, up to the stage's backoffLimit."""


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=None)


class StorageTarget(_Wire):
    uri: str = Field(..., description="Storage root (file:// or s3://).")
    endpoint: str | None = None
    region: str | None = None
    path_style: bool = False


class JobRef(_Wire):
    name: str
    namespace: str = "default"
    uid: str | None = None


class Inputs(_Wire):
    """Checkpoint URIs resolved from earlier stages (None: use the base model)."""

    policy: str | None = None
    reference: str | None = None
    reward_model: str | None = None
    judge: str | None = None  # a judge's model: a checkpoint URI or hf://ORG/NAME@REVISION


class DistributedRun(_Wire):
    """How many processes a stage run trains on and how (resolved from resources.gpus/nodes and the
    stage's ``distributed`` settings by the planner)."""

    processes_per_node: int = Field(1, ge=1, description="Worker processes on each node (one per GPU; gloo on the CPU).")
    nodes: int = Field(1, ge=1, description="Nodes of the run.")
    zero_stage: int | None = Field(None, ge=0, le=3, description="DeepSpeed ZeRO stage; None trains without DeepSpeed.")
    offload_optimizer: bool = False
    offload_parameters: bool = False

    @property
    def world_size(self) -> int:
        return self.processes_per_node * self.nodes


class StageRunConfig(_Wire):
    """The resolved configuration of one stage run (the planner's ``resolve_run`` makes it)."""

    job: JobRef
    stage: str
    type: str
    algorithm: str | None = None
    attempt: int = Field(..., ge=1)
    role: Literal["all", "rollout", "train"] = "all"
    round: int | None = None
    base_model: ModelSource
    inputs: Inputs = Field(default_factory=Inputs)
    datasets: Datasets | None = None
    # the stage's LLM judge (online_dpo): its template and answer pattern; its model is inputs.judge
    judge: JudgeSpec | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    adapter: LoraAdapter | None = None  # the stage's LoRA adapter, if it trains one
    storage: StorageTarget
    # key of the stage under the storage root: <namespace>/<job>/<stage>
    stage_key: str
    # every stage in spec order, for the job summary a stage writes (name -> checkpoint so far)
    pipeline: list[str] = Field(default_factory=list)
    distributed: DistributedRun = Field(default_factory=DistributedRun)

    def to_json(self) -> str:
        return self.model_dump_json(indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> "StageRunConfig":
        return cls.model_validate_json(text)


@dataclass
class StageResult:
    """What a stage run reports: its final checkpoint, its metrics, and a message on failure (with a
    reason from ``RUN_REASONS`` where the run knows why it failed)."""

    checkpoint_uri: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    message: str | None = None
    reason: str | None = None

    def encode(self) -> str:
        """The result JSON, cut to fit ``RESULT_LIMIT``: metrics are dropped (last first) and the
        message shortened before the checkpoint URI is ever lost."""
        payload: dict = {"checkpointUri": self.checkpoint_uri,
                         "metrics": {k: round(float(v), 6) for k, v in self.metrics.items()}}
        if self.message:
            payload["message"] = self.message[:MESSAGE_LIMIT]
        if self.reason:
            payload["reason"] = self.reason
        text = json.dumps(payload, separators=(",", ":"))
        while len(text.encode()) > RESULT_LIMIT and payload["metrics"]:
            payload["metrics"].pop(next(reversed(payload["metrics"])))
            text = json.dumps(payload, separators=(",", ":"))
        if len(text.encode()) > RESULT_LIMIT:
            payload["message"] = payload.get("message", "")[:200]
            text = json.dumps(payload, separators=(",", ":"))
        return text

    @classmethod
    def decode(cls, text: str | None) -> "StageResult | None":
        """The result in ``text``; None when it holds none (a run killed before writing it). Metrics
        that are not numbers are skipped, and so is a reason not in ``RUN_REASONS``."""
        if not text:
            return None
        try:
            value = json.loads(text)
        except (ValueError, TypeError):
            return None
        if not isinstance(value, dict):
            return None
        metrics: dict[str, float] = {}
        for key, number in (value.get("metrics") or {}).items():
            try:
                metrics[str(key)] = float(number)
            except (TypeError, ValueError):
                continue
        message = value.get("message")
        reason = value.get("reason")
        return cls(value.get("checkpointUri"), metrics, str(message) if message is not None else None,
                   reason if isinstance(reason, str) and reason in RUN_REASONS else None)
