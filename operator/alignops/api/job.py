"""The AlignmentJob resource: group alignops.io, version v1alpha1, namespaced, short name `aj`."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from alignops import API_VERSION, KIND
from alignops.api.base import ApiModel
from alignops.api.common import ModelSource, StorageSpec
from alignops.api.stages import STAGE_TYPES
from alignops.api.status import JobStatus

# Also the rule for child objects' label values: at most 63 characters.
JOB_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
JOB_NAME_MAX = 63

Stage = Annotated[
    Union[tuple(t.model for t in STAGE_TYPES.values())],  # type: ignore[valid-type]
    Field(discriminator="type"),
]


class ObjectMeta(BaseModel):
    """The parts of Kubernetes metadata AlignOps reads; anything else the server adds is kept."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(..., min_length=1, max_length=JOB_NAME_MAX, pattern=JOB_NAME_PATTERN,
                      description="Job name: a DNS-1123 label of at most 63 characters.")
    namespace: str | None = Field(None, max_length=63, description="Namespace (cluster only).")
    labels: dict[str, str] | None = Field(None, description="Labels; kueue.x-k8s.io/queue-name is carried to stage Jobs.")
    annotations: dict[str, str] | None = Field(None, description="Annotations.")
    generation: int | None = Field(None, description="Spec generation, set by the API server.")
    uid: str | None = Field(None, description="Set by the API server.")


class AlignmentJobSpec(ApiModel):
    """A whole alignment pipeline: a base model and the stages that transform it."""

    model: ModelSource = Field(..., description="The base model every stage without a policy reference starts from.")
    storage: StorageSpec | None = Field(
        None, description="Where checkpoints go; `alignops run` defaults to file://<workdir>, the operator to its configured default."
    )
    stages: list[Stage] = Field(..., min_length=1, max_length=16, description="Stages, run in order.")
    suspend: bool = Field(False, description="Stop running stages (each commits a checkpoint first); false resumes.")
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, le=365 * 24 * 3600, description="Delete the job this long after it succeeds or fails (a summary stays in storage)."
    )


class AlignmentJob(ApiModel):
    """An LLM alignment pipeline run as one resource."""

    api_version: Literal[API_VERSION] = Field(..., description=f"Must be {API_VERSION}.")  # type: ignore[valid-type]
    kind: Literal[KIND] = Field(..., description=f"Must be {KIND}.")  # type: ignore[valid-type]
    metadata: ObjectMeta = Field(..., description="Standard object metadata.")
    spec: AlignmentJobSpec = Field(..., description="The pipeline.")
    status: JobStatus | None = Field(None, description="Observed state, written by the operator or `alignops run`.")

    @property
    def name(self) -> str:
        return self.metadata.name

    def stage(self, name: str):
        return next((s for s in self.spec.stages if s.name == name), None)
