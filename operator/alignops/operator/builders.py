"""Pure builders: one stage run -> its ConfigMap and its ``batch/v1`` Job (no I/O, no clock).

The pod runs ``python -m alignops.workloads /etc/alignops/run/config.json``; the config is the
resolved ``StageRunConfig`` JSON from the planner, the same bytes ``alignops run`` writes. The
workload writes its result JSON to ``ALIGNOPS_RESULT_PATH`` = the container's termination-message
path, so the operator reads it from the pod status and never needs storage credentials.

The pod is locked down (restricted Pod Security Standard): non-root UID 10001, no privilege
escalation, every capability dropped, seccomp RuntimeDefault, read-only root filesystem. What must be
writable is a volume: ``/scratch`` (``ALIGNOPS_SCRATCH``, ``HOME``, ``TMPDIR``: downloads and staged
checkpoints) and a memory-backed ``/dev/shm`` (DataLoader workers, NCCL). No service account token
is mounted: stages never talk to the API server (IRSA / Workload Identity use their own projected
tokens).
"""

from __future__ import annotations

import hashlib
from typing import Any

from alignops.api.job import AlignmentJob
from alignops.operator.names import (
    CONFIG_HASH_ANNOTATION,
    KUEUE_QUEUE_LABEL,
    child_name,
    run_labels,
)
from alignops.operator.settings import OperatorSettings
from alignops.contract import StageRunConfig

CONFIG_DIR = "/etc/alignops/run"
CONFIG_KEY = "config.json"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
SCRATCH_DIR = "/scratch"
SHM_DIR = "/dev/shm"
HF_CACHE_DIR = "/hf-cache"
RESULT_PATH = "/dev/termination-log"
CONTAINER = "stage"
RUN_AS = 10001  # the images' user (images/Dockerfile.*); >= 10000 keeps clear of host UIDs
GPU_RESOURCE = "nvidia.com/gpu"
# volume names and mount paths the builder owns; a stage's extra volumes may not reuse them
RESERVED_VOLUMES = ("config", "scratch", "dshm", "hf-cache")
RESERVED_PATHS = (CONFIG_DIR, SCRATCH_DIR, SHM_DIR, RESULT_PATH, HF_CACHE_DIR)

Obj = dict[str, Any]


def config_sha256(config: StageRunConfig) -> str:
    return hashlib.sha256(config.to_json().encode()).hexdigest()


def run_name(config: StageRunConfig) -> str:
    return child_name(config.job.name, config.stage, config.attempt, config.round, config.role)


def _labels(config: StageRunConfig) -> dict[str, str]:
    return run_labels(config.job.name, config.stage, config.attempt, config.round, config.role)


def build_run_configmap(job: AlignmentJob, config: StageRunConfig, name: str | None = None) -> Obj:
    """The ConfigMap holding one stage run's resolved config (immutable: a run never changes it)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name or run_name(config),
            "namespace": config.job.namespace,
            "labels": _labels(config),
            "annotations": {CONFIG_HASH_ANNOTATION: config_sha256(config)},
        },
        "immutable": True,
        "data": {CONFIG_KEY: config.to_json()},
    }


def stage_image(job: AlignmentJob, config: StageRunConfig, settings: OperatorSettings) -> str:
    """The stage's own image if set, else the operator's rollout image wherever vLLM runs (rollout
    runs of a split ``rl`` stage, and a colocated one with ``engine: vllm``, whose one process both
    generates and trains: the rollout image has torch through vLLM's pin) and its trainer image
    for everything else."""
    stage = job.stage(config.stage)
    if stage.resources.image:
        return stage.resources.image
    colocated_vllm = config.role == "all" and getattr(getattr(stage, "hyperparameters", None), "engine", None) == "vllm"
    return settings.rollout_image if config.role == "rollout" or colocated_vllm else settings.trainer_image


def _env(job: AlignmentJob, config: StageRunConfig, settings: OperatorSettings) -> list[Obj]:
    resources = job.stage(config.stage).resources
    env: list[Obj] = [e.to_wire() for e in resources.env or []]
    ours = {
        "ALIGNOPS_RESULT_PATH": RESULT_PATH,
        "ALIGNOPS_SCRATCH": SCRATCH_DIR,
        # the root filesystem is read-only: caches and temporary files go to the scratch volume
        "HOME": SCRATCH_DIR,
        "TMPDIR": SCRATCH_DIR,
        "PYTHONUNBUFFERED": "1",
    }
    if settings.stage_metrics_port:
        ours["ALIGNOPS_METRICS_PORT"] = str(settings.stage_metrics_port)
    if config.storage.endpoint:
        ours["AWS_ENDPOINT_URL"] = config.storage.endpoint
    if config.storage.region:
        ours["AWS_REGION"] = config.storage.region
        ours["AWS_DEFAULT_REGION"] = config.storage.region
    if settings.hf_cache_claim:
        ours["HF_HOME"] = HF_CACHE_DIR
    secrets = _secret_env(job)
    # ours last: for a duplicated name the last entry wins, and the operator refuses ALIGNOPS_* in specs
    env = [e for e in env if e["name"] not in ours and e["name"] not in secrets]
    return env + [{"name": k, "value": v} for k, v in ours.items()] + [{"name": k, "valueFrom": v} for k, v in secrets.items()]


def _secret_env(job: AlignmentJob) -> dict[str, Obj]:
    """Variables taken from Secrets by the spec: HF_TOKEN from spec.model.tokenSecret (huggingface_hub
    reads it; it never appears in the config, the status or a log)."""
    token = job.spec.model.token_secret
    return {"HF_TOKEN": {"secretKeyRef": {"name": token.name, "key": token.key}}} if token is not None else {}


def storage_secret(job: AlignmentJob, settings: OperatorSettings) -> str | None:
    """The Secret with S3 credentials: spec.storage.secretName, or the operator's default storage
    secret for jobs without spec.storage (none: the pod's IAM role)."""
    if job.spec.storage is not None:
        return job.spec.storage.secret_name
    return settings.default_storage_secret


def _env_from(job: AlignmentJob, config: StageRunConfig, settings: OperatorSettings) -> list[Obj]:
    sources: list[Obj] = []
    secret = storage_secret(job, settings)
    if secret:
        sources.append({"secretRef": {"name": secret}})
    sources += [s.to_wire() for s in job.stage(config.stage).resources.env_from or []]
    return sources


def _resources(job: AlignmentJob, config: StageRunConfig, settings: OperatorSettings) -> Obj:
    resources = job.stage(config.stage).resources
    amounts = {"cpu": resources.cpu or settings.default_cpu, "memory": resources.memory or settings.default_memory}
    limits = dict(amounts)
    if resources.gpus:
        limits[GPU_RESOURCE] = str(resources.gpus)  # extended resources: limits only (requests default to them)
    return {"requests": amounts, "limits": limits}


def _volumes(job: AlignmentJob, config: StageRunConfig, settings: OperatorSettings, configmap: str) -> tuple[list[Obj], list[Obj]]:
    scratch: Obj = {"sizeLimit": settings.scratch_size} if settings.scratch_size else {}
    volumes: list[Obj] = [
        {"name": "config", "configMap": {"name": configmap, "items": [{"key": CONFIG_KEY, "path": CONFIG_KEY}]}},
        {"name": "scratch", "emptyDir": scratch},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}},
    ]
    mounts: list[Obj] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "scratch", "mountPath": SCRATCH_DIR},
        {"name": "dshm", "mountPath": SHM_DIR},
    ]
    if settings.hf_cache_claim:  # the Hub model cache (HF_HOME), shared by every stage
        volumes.append({"name": "hf-cache", "persistentVolumeClaim": {"claimName": settings.hf_cache_claim}})
        mounts.append({"name": "hf-cache", "mountPath": HF_CACHE_DIR})
    for extra in job.stage(config.stage).resources.volumes or []:
        wire = extra.to_wire()
        source = {k: v for k, v in wire.items() if k in ("secret", "configMap", "persistentVolumeClaim", "emptyDir")}
        volumes.append({"name": extra.name, **source})
        mount = {"name": extra.name, "mountPath": extra.mount_path}
        if extra.read_only is not None:
            mount["readOnly"] = extra.read_only
        if extra.sub_path:
            mount["subPath"] = extra.sub_path
        mounts.append(mount)
    return volumes, mounts


def _run_as() -> Obj:
    """The user and group of a stage, the same for its pod and its container."""
    return {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS}


def _container_security() -> Obj:
    return {
        **_run_as(),
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def build_stage_job(job: AlignmentJob, config: StageRunConfig, settings: OperatorSettings, name: str | None = None) -> Obj:
    """The ``batch/v1`` Job of one stage run. ``backoffLimit: 0``: the operator owns retries (from
    the last checkpoint, with exponential backoff, and exit 78 / 143 handled per the contract)."""
    stage = job.stage(config.stage)
    if stage is None:
        raise KeyError(f"no stage {config.stage!r} in job {job.name!r}")
    resources = stage.resources
    name = name or run_name(config)
    labels = _labels(config)
    job_labels = dict(labels)
    queue = (job.metadata.labels or {}).get(KUEUE_QUEUE_LABEL)
    if queue:
        job_labels[KUEUE_QUEUE_LABEL] = queue
    volumes, mounts = _volumes(job, config, settings, configmap=name)
    container: Obj = {
        "name": CONTAINER,
        "image": stage_image(job, config, settings),
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-m", "alignops.workloads", CONFIG_PATH],
        "env": _env(job, config, settings),
        "resources": _resources(job, config, settings),
        "volumeMounts": mounts,
        "terminationMessagePath": RESULT_PATH,
        "terminationMessagePolicy": "File",
        "securityContext": _container_security(),
    }
    env_from = _env_from(job, config, settings)
    if env_from:
        container["envFrom"] = env_from
    if settings.stage_metrics_port:
        container["ports"] = [{"name": "metrics", "containerPort": settings.stage_metrics_port, "protocol": "TCP"}]
    pod: Obj = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": settings.stage_grace_seconds,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            **_run_as(),
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if settings.stage_service_account:
        pod["serviceAccountName"] = settings.stage_service_account
    if resources.node_selector:
        pod["nodeSelector"] = dict(resources.node_selector)
    if resources.tolerations:
        pod["tolerations"] = [t.to_wire() for t in resources.tolerations]
    if resources.affinity is not None:
        pod["affinity"] = resources.affinity.to_wire()
    if resources.priority_class_name:
        pod["priorityClassName"] = resources.priority_class_name
    if resources.image_pull_secrets:
        pod["imagePullSecrets"] = [r.to_wire() for r in resources.image_pull_secrets]
    spec: Obj = {
        "backoffLimit": 0,
        "completions": 1,
        "parallelism": 1,
        "template": {"metadata": {"labels": labels}, "spec": pod},
    }
    if stage.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = stage.active_deadline_seconds
    if queue:
        spec["suspend"] = True  # Kueue admits the Job by unsuspending it
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": config.job.namespace,
            "labels": job_labels,
            "annotations": {CONFIG_HASH_ANNOTATION: config_sha256(config)},
        },
        "spec": spec,
    }
