"""The status contract, shared by the custom resource and ``<workdir>/<job>/status.json``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints

from alignops.api.base import ApiModel


class StatusModel(ApiModel):
    """Status is written by AlignOps itself, so Python code may also fill it by field name."""

    model_config = ConfigDict(validate_by_name=True)

JobPhase = Literal["Pending", "Running", "Suspended", "Succeeded", "Failed"]
StagePhase = Literal["Pending", "Running", "Retrying", "Suspended", "Succeeded", "Failed"]
ConditionType = Literal["Progressing", "Suspended", "Succeeded", "Failed"]


class Condition(StatusModel):
    """A Kubernetes-style condition: the latest observation of one aspect of the job."""

    type: ConditionType = Field(..., description="Progressing, Suspended, Succeeded or Failed.")
    status: Literal["True", "False", "Unknown"] = Field(..., description="True, False or Unknown.")
    reason: str = Field(..., max_length=128, description="CamelCase reason, e.g. StageRunning, OOMKilled, InvalidSpec.")
    message: str = Field("", max_length=4096, description="Human-readable detail.")
    last_transition_time: str = Field(..., max_length=64, description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(None, ge=0, description="The spec generation this condition was set for.")


class StageStatus(StatusModel):
    """What is known of one stage."""

    name: str = Field(..., max_length=20, description="Stage name.")
    phase: StagePhase = Field("Pending", description="Pending, Running, Retrying, Suspended, Succeeded or Failed.")
    attempts: int = Field(0, ge=0, description="Attempts started; a run stopped by SIGTERM after a checkpoint does not count as failed.")
    failures: int = Field(0, ge=0, description="Attempts that failed.")
    start_time: str | None = Field(None, max_length=64, description="When the first attempt started (RFC 3339).")
    completion_time: str | None = Field(None, max_length=64, description="When the stage succeeded or failed (RFC 3339).")
    checkpoint_uri: str | None = Field(None, max_length=1024, description="Absolute URI of the stage's final committed checkpoint.")
    job_name: str | None = Field(None, max_length=63, description="The Kubernetes Job of the latest attempt (cluster only).")
    gpus: str | None = Field(
        None, max_length=16, pattern=r"^[0-9]+x[0-9]+$",
        description="Nodes x GPUs per node of the latest run, e.g. 2x8 (16 GPUs on 2 nodes; 1x0: one pod on CPUs).",
    )
    message: str | None = Field(None, max_length=4096, description="Why the last attempt ended as it did.")
    reason: str | None = Field(None, max_length=128, description="CamelCase reason of the last attempt's end, e.g. Completed, OOMKilled, Error.")
    retry_after: str | None = Field(None, max_length=64, description="Earliest start of the next attempt after a failure (RFC 3339; exponential backoff).")
    round: int | None = Field(None, ge=1, description="rl stages with placement split: the round of the current (or next) run, from 1.")
    role: Literal["rollout", "train"] | None = Field(
        None, description="rl stages with placement split: the current (or next) run's role; rounds go rollout, train, rollout, ...",
    )
    metrics: dict[str, float] = Field(
        default_factory=dict, max_length=64,
        description="Summary numbers: final loss, accuracyBefore/After, rewardFirst/Last, ...",
    )
    spec_fingerprint: dict[str, Annotated[str, StringConstraints(max_length=64)]] = Field(
        default_factory=dict, max_length=8,
        description="Hashes, by part (method, baseModel, inputs, datasets, hyperparameters), of what the stage's result "
        "depends on, taken when its current run started; a spec whose hashes differ reruns the stage from its inputs.",
    )
    rerun: int = Field(
        0, ge=0, le=10_000,
        description="How often the stage was rerun from its inputs (its spec changed, or a rerun was asked for); "
        "from the first rerun on its checkpoints go under <stage>/rerun-<n>/.",
    )


class JobStatus(StatusModel):
    """Observed state of an AlignmentJob."""

    phase: JobPhase = Field("Pending", description="Pending, Running, Suspended, Succeeded or Failed.")
    observed_generation: int | None = Field(None, ge=0, description="The spec generation last acted on.")
    current_stage: str | None = Field(None, max_length=20, description="The stage running now, or the last one run.")
    current_gpus: str | None = Field(
        None, max_length=16, pattern=r"^[0-9]+x[0-9]+$",
        description="Nodes x GPUs per node of the current stage's latest run (the GPUs column of kubectl get aj).",
    )
    output_model: str | None = Field(
        None, max_length=1024, description="Checkpoint URI of the last stage that produced a policy."
    )
    start_time: str | None = Field(None, max_length=64, description="When the first stage started (RFC 3339).")
    completion_time: str | None = Field(None, max_length=64, description="When the job succeeded or failed (RFC 3339).")
    retry_token: str | None = Field(
        None, max_length=253, description="The value of the alignops.io/retry annotation last acted on (a new value retries a Failed job)."
    )
    conditions: list[Condition] = Field(default_factory=list, max_length=8, description="Progressing, Suspended, Succeeded, Failed.")
    stages: list[StageStatus] = Field(default_factory=list, max_length=32, description="One entry per stage, in spec order.")

    def stage(self, name: str) -> StageStatus | None:
        return next((s for s in self.stages if s.name == name), None)

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)
