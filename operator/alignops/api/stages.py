"""Stage types. Each is one model with a literal ``type``; STAGE_TYPES says what each produces and
which inputs it takes, for the validator, the CRD's CEL rules and the planner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Union

from pydantic import Field

from alignops.api.base import DNS_1035_LABEL, ApiModel
from alignops.api.common import Datasets, Resources, StageRef
from alignops.api.hyperparameters import SftHyperparameters

# What a stage leaves behind, so references can be checked for the right kind.
Produces = Literal["policy", "rewardModel", "dataset"]


class StageBase(ApiModel):
    """Fields every stage type has."""

    name: str = Field(
        ..., min_length=1, max_length=20, pattern=DNS_1035_LABEL,
        description="Unique stage name (DNS-1035 label, at most 20 characters); names the stage's Jobs and storage keys.",
    )
    datasets: Datasets | None = Field(None, description="Training and held-out data.")
    resources: Resources = Field(default_factory=Resources, description="What each run of the stage asks of the cluster.")
    backoff_limit: int = Field(2, ge=0, le=100, description="Failed attempts retried (from the last checkpoint) before the stage fails.")
    active_deadline_seconds: int | None = Field(None, ge=1, le=30 * 24 * 3600, description="Wall-clock limit of one attempt.")
    progress_deadline_seconds: int | None = Field(
        None, ge=30, le=7 * 24 * 3600, description="An attempt reporting no progress for this long is stalled and restarted."
    )


class SftStage(StageBase):
    """Supervised fine-tuning on prompt/response data (chat `messages` or `prompt`/`completion`)."""

    type: Literal["sft"] = Field(..., description="Stage type.")
    policy: StageRef | None = Field(None, description="Model to fine-tune; defaults to spec.model.")
    hyperparameters: SftHyperparameters = Field(default_factory=SftHyperparameters, description="Training settings.")


@dataclass(frozen=True)
class StageType:
    model: type[StageBase]
    produces: Produces
    # reference field name -> kinds of stage output it accepts
    inputs: dict[str, tuple[Produces, ...]]
    algorithms: tuple[str, ...] = ()
    default_algorithm: str | None = None
    # which dataset format the stage reads, for generators and sniffing
    dataset_format: str = "sft"
    max_gpus: int = 1


STAGE_TYPES: dict[str, StageType] = {
    "sft": StageType(model=SftStage, produces="policy", inputs={"policy": ("policy",)}, dataset_format="sft"),
}

Stage = Annotated[Union[SftStage], Field(discriminator="type")]
