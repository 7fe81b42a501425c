"""How a stage trains across processes: DeepSpeed ZeRO's stage and offloads. The process count is
``resources.gpus`` per node times ``resources.nodes`` (one worker per GPU; the same number of CPU
workers on gloo where there is no GPU, so a manifest gives the same numbers wherever it runs)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from alignops.api.base import ApiModel

DEFAULT_ZERO_STAGE = 2  # OpenRLHF's default: gradients and optimizer state sharded, weights whole


class DistributedSettings(ApiModel):
    """DeepSpeed ZeRO settings of a stage's training (and its frozen models)."""

    zero_stage: Literal[0, 1, 2, 3] | None = Field(
        None,
        description="DeepSpeed ZeRO stage: 0 data parallel, 1 optimizer state sharded, 2 + gradients, 3 + weights "
                    "(frozen reference and reward models sharded too). Default: 2 on more than one process; one process "
                    "trains without DeepSpeed unless a stage or an offload is set here.",
    )
    offload_optimizer: bool = Field(
        False, description="Keep the optimizer state (and its step) in CPU memory: about 12 bytes a parameter off each GPU."
    )
    offload_parameters: bool = Field(
        False, description="Keep ZeRO-3's weight shards in CPU memory between uses (zeroStage 3 only)."
    )

    @model_validator(mode="after")
    def _offload_parameters_needs_zero3(self) -> "DistributedSettings":
        if self.offload_parameters and self.zero_stage != 3:
            raise ValueError("offloadParameters needs zeroStage: 3 (only ZeRO-3 shards the weights)")
        return self


OFFLOAD_PARAMETERS_RULE = (
    "!has(self.distributed) || !has(self.distributed.offloadParameters) || !self.distributed.offloadParameters"
    " || (has(self.distributed.zeroStage) && self.distributed.zeroStage == 3)",
    "distributed.offloadParameters needs distributed.zeroStage: 3",
)

BATCH_SPLIT_MESSAGE = ("batchSize {batch} is split evenly across the stage's {processes} processes (resources.gpus x "
                       "resources.nodes): make it a multiple of {processes}; the global batch stays batchSize x "
                       "gradientAccumulationSteps at any process count")


def process_count(gpus: int, nodes: int) -> int:
    """Processes of a run: one per GPU (at least one) on each node."""
    return max(1, gpus) * nodes


# the CRD's form of the same check, for stage types that pass over a dataset (the default batchSize is 16)
_PROCESSES = ("((has(self.resources.gpus) && self.resources.gpus > 1 ? self.resources.gpus : 1)"
              " * (has(self.resources.nodes) ? self.resources.nodes : 1))")
BATCH_SPLIT_RULE = ("!has(self.resources)"
                    " || (has(self.hyperparameters) && has(self.hyperparameters.batchSize) ? self.hyperparameters.batchSize : 16)"
                    f" % {_PROCESSES} == 0",
                    "hyperparameters.batchSize must be a multiple of resources.gpus x resources.nodes (each process takes an "
                    "equal share of every micro-batch)")
