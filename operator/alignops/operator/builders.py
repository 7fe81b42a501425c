"""Pure builders: one stage run -> its ConfigMap and its ``batch/v1`` Job, and for a run across
nodes its headless Service (no I/O, no clock).

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

A run across nodes (``resources.nodes`` = M > 1) is one Indexed Job of M pods (``completions =
parallelism = M``), each with ``resources.gpus`` GPUs and its node rank from its completion index,
and a headless Service of the same name that gives each pod a stable DNS name (``subdomain``):
``<name>-0.<name>`` is node 0, where the others meet (torchrun's ``PET_*`` variables, as Kubeflow
Trainer sets them). All or nothing: ``backoffLimit: 0`` and a ``podFailurePolicy`` fail the Job at
once when any pod exits 1 or 78, while a pod stopped by a disruption (preemption, a drain) is not
counted against it; the operator reads every pod and retries the whole run.
"""

from __future__ import annotations

import hashlib
from typing import Any

from alignops.api.common import GPU_RESOURCE
from alignops.api.job import AlignmentJob
from alignops.contract import (
    EXIT_CONFIG,
    EXIT_RETRY,
    MASTER_ADDR_ENV,
    MASTER_PORT_ENV,
    NODE_RANK_ENV,
    NODES_ENV,
    PROCESSES_PER_NODE_ENV,
    RENDEZVOUS_TIMEOUT_ENV,
    StageRunConfig,
)
from alignops.operator.names import (
    CONFIG_HASH_ANNOTATION,
    KUEUE_QUEUE_LABEL,
    child_name,
    pod_hostname,
    run_labels,
)
from alignops.operator.settings import OperatorSettings

CONFIG_DIR = "/etc/alignops/run"
CONFIG_KEY = "config.json"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
SCRATCH_DIR = "/scratch"
SHM_DIR = "/dev/shm"
HF_CACHE_DIR = "/hf-cache"
RESULT_PATH = "/dev/termination-log"
CONTAINER = "stage"
RUN_AS = 10001  # the images' user (images/Dockerfile.*); >= 10000 keeps clear of host UIDs
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # the Job controller sets it on the Job's pods
RENDEZVOUS_PORT_NAME = "rendezvous"
# volume names and mount paths the builder owns; a stage's extra volumes may not reuse them
RESERVED_VOLUMES = ("config", "scratch", "dshm", "hf-cache")
RESERVED_PATHS = (CONFIG_DIR, SCRATCH_DIR, SHM_DIR, RESULT_PATH, HF_CACHE_DIR)

Obj = dict[str, Any]


def config_sha256(config: StageRunConfig) -> str:
    return hashlib.sha256(config.to_json().encode()).hexdigest()


def run_name(config: StageRunConfig) -> str:
    return child_name(config.job.name, config.stage, config.attempt, config.round, config.role, config.distributed.nodes)


def across_nodes(config: StageRunConfig) -> bool:
    return config.distributed.nodes > 1


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


def _rendezvous_env(config: StageRunConfig, settings: OperatorSettings, name: str) -> list[Obj]:
    """torchrun's variables for one pod of a run across nodes; its node rank is its completion index."""
    run = config.distributed
    return [
        {"name": NODES_ENV, "value": str(run.nodes)},
        {"name": PROCESSES_PER_NODE_ENV, "value": str(run.processes_per_node)},
        {"name": NODE_RANK_ENV, "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}}},
        {"name": MASTER_ADDR_ENV, "value": f"{pod_hostname(name, 0)}.{name}"},  # node 0's stable name (subdomain)
        {"name": MASTER_PORT_ENV, "value": str(settings.rendezvous_port)},
        {"name": RENDEZVOUS_TIMEOUT_ENV, "value": str(settings.rendezvous_timeout_seconds)},
    ]


def _env(job: AlignmentJob, config: StageRunConfig, settings: OperatorSettings, name: str) -> list[Obj]:
    resources = job.stage(config.stage).resources
    # the operator's network settings first: a stage's own env (NCCL_* for its nodes) wins
    stage_env: list[Obj] = [e.to_wire() for e in resources.env or []]
    named = {e["name"] for e in stage_env}
    network = settings.network_env if across_nodes(config) else {}
    env = [{"name": k, "value": v} for k, v in network.items() if k not in named] + stage_env
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
    rendezvous = _rendezvous_env(config, settings, name) if across_nodes(config) else []
    secrets = _secret_env(job)
    # ours last: for a duplicated name the last entry wins, and the operator refuses ALIGNOPS_* and PET_* in specs
    taken = set(ours) | {e["name"] for e in rendezvous} | set(secrets)
    env = [e for e in env if e["name"] not in taken]
    return (env + [{"name": k, "value": v} for k, v in ours.items()] + rendezvous
            + [{"name": k, "valueFrom": v} for k, v in secrets.items()])


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
    # network devices (RDMA, EFA): the stage's own, else the operator's for runs across nodes
    devices = resources.devices if resources.devices is not None else (settings.network_devices if across_nodes(config) else {})
    limits.update({device: str(count) for device, count in sorted(devices.items())})
    return {"requests": amounts, "limits": limits}


QUANTITY_FACTORS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "E": 10**18,
                    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Ei": 2**60, "m": 10**-3}


def quantity_bytes(quantity: str) -> float:
    """A Kubernetes quantity (``2Gi``, ``500M``) in bytes."""
    number = quantity.rstrip("kMGTEimi")
    return float(number) * QUANTITY_FACTORS[quantity[len(number):]]


def shm_size(gpus: int, settings: OperatorSettings) -> str:
    """The size limit of a stage pod's /dev/shm: shmSize, or shmGibPerGpu for each GPU when more
    (a memory-backed volume's pages count against the pod's memory only as they are used)."""
    per_gpu = gpus * settings.shm_gib_per_gpu
    return f"{per_gpu}Gi" if per_gpu * 2**30 > quantity_bytes(settings.shm_size) else settings.shm_size


def _volumes(job: AlignmentJob, config: StageRunConfig, settings: OperatorSettings, configmap: str) -> tuple[list[Obj], list[Obj]]:
    scratch: Obj = {"sizeLimit": settings.scratch_size} if settings.scratch_size else {}
    volumes: list[Obj] = [
        {"name": "config", "configMap": {"name": configmap, "items": [{"key": CONFIG_KEY, "path": CONFIG_KEY}]}},
        {"name": "scratch", "emptyDir": scratch},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size(job.stage(config.stage).resources.gpus, settings)}},
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


def pod_failure_policy() -> Obj:
    """A run across nodes: any pod's failure (exit 1, or 78 for a configuration error) fails the
    Job at once, which stops the other pods; a disruption (preemption, drain, eviction) is not a
    failure of the run (its pods stop at one step after rank 0 commits and exit 143)."""
    return {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_RETRY, EXIT_CONFIG]}},
    ]}


def build_run_service(job: AlignmentJob, config: StageRunConfig, settings: OperatorSettings, name: str | None = None) -> Obj | None:
    """The headless Service of a run across nodes (None for a run on one node): each pod of the
    Indexed Job ``name`` gets the DNS name ``<name>-<index>.<name>``, published before the pod is
    ready (a rendezvous happens before any pod could be)."""
    if not across_nodes(config):
        return None
    name = name or run_name(config)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": config.job.namespace, "labels": _labels(config)},
        "spec": {
            "clusterIP": "None",
            "selector": {JOB_NAME_LABEL: name},
            "publishNotReadyAddresses": True,
            "ports": [{"name": RENDEZVOUS_PORT_NAME, "port": settings.rendezvous_port, "targetPort": settings.rendezvous_port,
                       "protocol": "TCP"}],
        },
    }


def build_stage_job(job: AlignmentJob, config: StageRunConfig, settings: OperatorSettings, name: str | None = None) -> Obj:
    """The ``batch/v1`` Job of one stage run. ``backoffLimit: 0``: the operator owns retries (from
    the last checkpoint, with exponential backoff, and exit 78 / 143 handled per the contract). A
    run across nodes is an Indexed Job (see the module docstring)."""
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
        "env": _env(job, config, settings, name),
        "resources": _resources(job, config, settings),
        "volumeMounts": mounts,
        "terminationMessagePath": RESULT_PATH,
        "terminationMessagePolicy": "File",
        "securityContext": _container_security(),
    }
    env_from = _env_from(job, config, settings)
    if env_from:
        container["envFrom"] = env_from
    ports = [{"name": "metrics", "containerPort": settings.stage_metrics_port, "protocol": "TCP"}] if settings.stage_metrics_port else []
    if across_nodes(config):
        ports.append({"name": RENDEZVOUS_PORT_NAME, "containerPort": settings.rendezvous_port, "protocol": "TCP"})
    if ports:
        container["ports"] = ports
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
    if across_nodes(config):
        nodes = config.distributed.nodes
        pod["subdomain"] = name  # with the headless Service of that name: <name>-<index>.<name> resolves
        spec.update(completionMode="Indexed", completions=nodes, parallelism=nodes, podFailurePolicy=pod_failure_policy())
    if stage.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = stage.active_deadline_seconds
    if queue:
        spec["suspend"] = True  # Kueue admits the Job (all its pods: parallelism is one workload) by unsuspending it
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
