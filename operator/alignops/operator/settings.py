"""Operator settings, from environment variables prefixed ``ALIGNOPS_`` (the Helm chart sets them
from its values) or from ``alignops operator`` options."""

from __future__ import annotations

import re

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from alignops.api.common import DEVICE_RESOURCE, ENV_NAME, GPU_RESOURCE, QUANTITY_PATTERN

# environment variables the operator sets itself: never from settings or specs
RESERVED_ENV_PREFIXES = ("ALIGNOPS_", "PET_")


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ALIGNOPS_", extra="ignore")

    namespaces: str = Field("", description="Comma-separated namespaces to watch; empty watches all (cluster-wide).")
    trainer_image: str = Field("ghcr.io/alignops/trainer:0.1.0", description="Image of training stages.")
    rollout_image: str = Field("ghcr.io/alignops/rollout:0.1.0", description="Image of rollout runs (vLLM) of split rl stages.")
    image_pull_policy: str = Field("IfNotPresent", description="imagePullPolicy of stage containers.")
    default_storage_uri: str | None = Field(None, description="Storage for jobs without spec.storage, e.g. s3://bucket/alignops.")
    default_storage_endpoint: str | None = Field(None, description="S3 endpoint of the default storage (MinIO, Ceph).")
    default_storage_secret: str | None = Field(None, description="Secret with S3 credentials for the default storage.")
    stage_service_account: str | None = Field(None, description="ServiceAccount of stage pods (IRSA / Workload Identity).")
    metrics_port: int = Field(8080, description="Port of the operator's /metrics.")
    health_port: int = Field(8081, description="Port of the operator's /healthz (liveness and readiness).")
    stage_metrics_port: int = Field(
        9090, ge=0, le=65535,
        description="Port of each stage pod's /metrics and /progress; 0 turns both off (and with them stall detection).",
    )
    failed_jobs_kept: int = Field(3, ge=0, description="Failed attempts' Jobs kept per stage so `kubectl logs` still works.")
    # -- added by the operator issue ------------------------------------------------------------------
    stage_grace_seconds: int = Field(
        120, ge=1, le=3600,
        description="terminationGracePeriodSeconds of stage pods: time a stopped stage has to commit its checkpoint.",
    )
    default_cpu: str = Field("2", pattern=QUANTITY_PATTERN, description="CPU request and limit of stages that set none.")
    default_memory: str = Field("8Gi", pattern=QUANTITY_PATTERN, description="Memory request and limit of stages that set none.")
    shm_size: str = Field("2Gi", pattern=QUANTITY_PATTERN, description="Size limit of the memory-backed /dev/shm of stage pods.")
    shm_gib_per_gpu: int = Field(
        4, ge=0, le=1024,
        description="GiB of /dev/shm per GPU a stage asks for, when more than shmSize: NCCL's intra-node buffers and the workers' shared tensors live there.",
    )
    scratch_size: str | None = Field(
        None, pattern=QUANTITY_PATTERN, description="Size limit of the writable scratch volume (checkpoints are staged there); none: unlimited."
    )
    hf_cache_claim: str | None = Field(
        None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="PersistentVolumeClaim mounted at /hf-cache as HF_HOME of stage pods (the Hub model cache); none: the scratch volume.",
    )
    resync_seconds: float = Field(30.0, gt=0, description="Every job is reconciled at least this often, events or not.")
    progress_poll_seconds: float = Field(
        30.0, gt=0, description="How often a running stage with progressDeadlineSeconds has its /progress polled."
    )
    api_workers: int = Field(16, ge=1, le=256, description="Threads making Kubernetes API calls.")
    standalone: bool | None = Field(
        None, description="true: run without kopf peering (one replica); false: require peering; unset: peering if its CRD exists."
    )
    verbose: bool = Field(False, description="Debug logging.")
    # -- runs across nodes (resources.nodes > 1) ---------------------------------------------------------
    rendezvous_port: int = Field(
        29500, ge=1024, le=65535, description="Port of the rendezvous on the index-0 pod of a run across nodes (PET_MASTER_PORT)."
    )
    rendezvous_timeout_seconds: int = Field(
        900, ge=1, le=86400,
        description="How long the pods of a run across nodes wait for each other (image pulls and scheduling included) "
                    "before the attempt fails with reason RendezvousTimeout and is retried.",
    )
    network_env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment of every pod of a run across nodes, as JSON: NCCL's and the fabric's settings, e.g. "
                    '{"NCCL_SOCKET_IFNAME": "eth0", "NCCL_IB_HCA": "mlx5", "FI_PROVIDER": "efa"}; a stage\'s resources.env wins.',
    )
    network_devices: dict[str, int] = Field(
        default_factory=dict,
        description="Extended resources of every pod of a run across nodes, as JSON, e.g. "
                    '{"vpc.amazonaws.com/efa": 4} or {"rdma/ib": 1}; a stage\'s resources.devices replaces them.',
    )

    @field_validator("network_env")
    @classmethod
    def _network_env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if not re.match(ENV_NAME, name) or name.startswith(RESERVED_ENV_PREFIXES):
                raise ValueError(f"{name!r}: not a variable name, or one the operator sets ({', '.join(RESERVED_ENV_PREFIXES)}*)")
        return env

    @field_validator("network_devices")
    @classmethod
    def _network_device_names(cls, devices: dict[str, int]) -> dict[str, int]:
        for name, count in devices.items():
            if name == GPU_RESOURCE or not re.match(DEVICE_RESOURCE, name) or count < 1:
                raise ValueError(f"{name}: {count}: an extended resource (domain/name, not {GPU_RESOURCE}) and a count >= 1")
        return devices

    @property
    def namespace_list(self) -> list[str]:
        return [n.strip() for n in self.namespaces.split(",") if n.strip()]
