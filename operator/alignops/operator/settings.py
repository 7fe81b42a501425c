"""Operator settings, from environment variables prefixed ``ALIGNOPS_`` (the Helm chart sets them
from its values) or from ``alignops operator`` options."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    stage_metrics_port: int = Field(9090, description="Port of each stage pod's /metrics and /progress.")
    failed_jobs_kept: int = Field(3, description="Failed attempts' Jobs kept per stage so `kubectl logs` still works.")

    @property
    def namespace_list(self) -> list[str]:
        return [n.strip() for n in self.namespaces.split(",") if n.strip()]
