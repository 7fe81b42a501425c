"""The resolved configuration of one stage run: the exact bytes a pod (from a ConfigMap) and a
local process receive. Nothing reaches a workload through hidden globals."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from alignops.api.common import Datasets, ModelSource


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


class StageRunConfig(_Wire):
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
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    storage: StorageTarget
    # key of the stage under the storage root: <namespace>/<job>/<stage>
    stage_key: str
    # every stage in spec order, for the job summary a stage writes (name -> checkpoint so far)
    pipeline: list[str] = Field(default_factory=list)

    def to_json(self) -> str:
        return self.model_dump_json(indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> "StageRunConfig":
        return cls.model_validate_json(text)
