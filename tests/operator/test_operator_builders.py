"""The pure builders: a stage run's ConfigMap and Job, for every stage type, checked against the
Kubernetes 1.32 schemas (kubernetes-validate --strict) and by checkov."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from operator_manifests import job_manifest, stage_manifest

from alignops.api.stages import STAGE_TYPES
from alignops.api.validation import parse_job
from alignops.operator.builders import (
    RESULT_PATH,
    build_run_configmap,
    build_stage_job,
    run_name,
)
from alignops.planner import Defaults, initial_status, resolve_run
from alignops.contract import StageRunConfig

# checkov findings that are decisions, each with its reason (the scan must show no other failure)
CHECKOV_SKIPS = {
    "CKV_K8S_43": "images come from the operator's settings (trainer/rollout) or resources.image; a digest "
                  "(repo@sha256:...) works there, a pinned version tag is the default",
    "CKV_K8S_15": "pinned version tags with IfNotPresent: Always would pull multi-GB training images again on every "
                  "retry; ALIGNOPS_IMAGE_PULL_POLICY=Always opts in",
    "CKV_K8S_35": "S3 SDKs (boto3) read credentials from environment variables; the Secret is the user's "
                  "spec.storage.secretName (or IRSA / Workload Identity with no Secret at all)",
    "CKV2_K8S_6": "NetworkPolicies are namespace-level objects of the Helm chart, not of each stage Job",
}


def _job(document: dict):
    return parse_job(document)


def _config(job, stage: str, attempt: int = 1, role: str = "all", round_: int | None = None) -> StageRunConfig:
    return resolve_run(job, initial_status(job), stage, attempt,
                       Defaults(storage_uri="s3://alignops-ci/root", namespace="ml-team", storage_endpoint="http://minio.storage:9000"),
                       role, round_)


def _all_type_job():
    stages = [stage_manifest(t, f"s{i}") for i, t in enumerate(sorted(STAGE_TYPES))]
    return _job(job_manifest("every-type", stages))


def _rendered(settings) -> list[tuple[str, dict, dict]]:
    """(stage type, ConfigMap, Job) for every stage type, plus a split rl rollout run if rl exists."""
    job = _all_type_job()
    out = []
    for stage in job.spec.stages:
        config = _config(job, stage.name)
        out.append((stage.type, build_run_configmap(job, config), build_stage_job(job, config, settings)))
    if "rl" in STAGE_TYPES:
        split = _job(job_manifest("split", [stage_manifest("rl", "rl", hyperparameters={"placement": "split", "rounds": 2})]))
        config = _config(split, "rl", 1, "rollout", 1)
        out.append(("rl-split-rollout", build_run_configmap(split, config), build_stage_job(split, config, settings)))
    return out


def test_every_stage_type_passes_strict_kubernetes_validation(settings):
    rendered = _rendered(settings)
    assert {t for t, _, _ in rendered} >= set(STAGE_TYPES)
    for kind, configmap, job in rendered:
        for obj in (configmap, job):
            kubernetes_validate.validate(obj, "1.32", strict=True)  # raises on any unknown or wrong field


def test_pod_runs_the_workload_on_the_configmap_bytes(settings, quickstart):
    job = _job(quickstart)
    config = _config(job, "sft")
    configmap = build_run_configmap(job, config)
    built = build_stage_job(job, config, settings)
    # the ConfigMap holds exactly the resolved config `alignops run` would write
    assert configmap["data"]["config.json"] == config.to_json()
    assert StageRunConfig.from_json(configmap["data"]["config.json"]) == config
    assert configmap["immutable"] is True
    pod = built["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # the path the workload reads is the ConfigMap's key under the config volume's mount
    assert container["command"] == ["python", "-m", "alignops.workloads", "/etc/alignops/run/config.json"]
    assert {"name": "config", "mountPath": "/etc/alignops/run", "readOnly": True} in container["volumeMounts"]
    config_volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert config_volume["configMap"]["items"] == [{"key": "config.json", "path": "config.json"}]
    assert config_volume["configMap"]["name"] == configmap["metadata"]["name"] == built["metadata"]["name"] == "quickstart-sft-a1"
    assert built["spec"]["backoffLimit"] == 0
    assert pod["restartPolicy"] == "Never"


def test_result_scratch_shm_and_storage_wiring(settings, quickstart):
    job = _job(quickstart)
    built = build_stage_job(job, _config(job, "sft"), settings)
    pod = built["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["ALIGNOPS_RESULT_PATH"] == RESULT_PATH == container["terminationMessagePath"]
    assert container["terminationMessagePolicy"] == "File"
    assert env["ALIGNOPS_SCRATCH"] == "/scratch" and env["HOME"] == "/scratch" and env["TMPDIR"] == "/scratch"
    assert env["ALIGNOPS_METRICS_PORT"] == "9090"
    assert container["ports"] == [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    assert env["AWS_ENDPOINT_URL"] == "http://minio.storage:9000"
    # no spec.storage: the operator's default storage and its Secret
    assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    assert volumes["scratch"]["emptyDir"] == {}
    assert {"name": "scratch", "mountPath": "/scratch"} in container["volumeMounts"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]


def test_security_context_is_restricted(settings, quickstart):
    job = _job(quickstart)
    pod = build_stage_job(job, _config(job, "sft"), settings)["spec"]["template"]["spec"]
    security = pod["containers"][0]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "alignops-stage"


def test_resources_and_scheduling_fields_reach_the_pod(settings):
    resources = {
        "cpu": "8", "memory": "64Gi", "gpus": 1, "image": "registry.example/custom:2",
        "nodeSelector": {"gpu": "a100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}]}}},
        "priorityClassName": "training-high",
        "imagePullSecrets": [{"name": "regcred"}],
        "env": [{"name": "HF_HOME", "value": "/scratch/hf"},
                {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}],
        "envFrom": [{"configMapRef": {"name": "tuning"}}],
        "volumes": [{"name": "datasets", "mountPath": "/data", "readOnly": True, "persistentVolumeClaim": {"claimName": "datasets"}}],
    }
    job = _job(job_manifest("res", [stage_manifest("sft", "sft", resources=resources, activeDeadlineSeconds=3600)],
                            storage={"uri": "s3://team-bucket/runs", "secretName": "team-s3", "region": "eu-west-1"}))
    built = build_stage_job(job, _config(job, "sft"), settings)
    kubernetes_validate.validate(built, "1.32", strict=True)
    pod = built["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example/custom:2"
    assert container["resources"] == {"requests": {"cpu": "8", "memory": "64Gi"},
                                      "limits": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1"}}
    assert pod["nodeSelector"] == {"gpu": "a100"}
    assert pod["tolerations"] == resources["tolerations"]
    assert pod["affinity"] == resources["affinity"]
    assert pod["priorityClassName"] == "training-high"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    env = container["env"]
    assert env[0] == {"name": "HF_HOME", "value": "/scratch/hf"}
    assert env[1] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    assert {"name": "AWS_REGION", "value": "eu-west-1"} in env
    assert not any(e["name"] == "AWS_ENDPOINT_URL" for e in env)  # spec.storage names no endpoint
    # spec.storage's own Secret, then the stage's envFrom
    assert container["envFrom"] == [{"secretRef": {"name": "team-s3"}}, {"configMapRef": {"name": "tuning"}}]
    assert {"name": "datasets", "persistentVolumeClaim": {"claimName": "datasets"}} in pod["volumes"]
    assert {"name": "datasets", "mountPath": "/data", "readOnly": True} in container["volumeMounts"]
    assert built["spec"]["activeDeadlineSeconds"] == 3600


def test_defaults_give_every_stage_requests_and_limits(settings, quickstart):
    job = _job(quickstart)
    container = build_stage_job(job, _config(job, "sft"), settings)["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"cpu": "2", "memory": "8Gi"}}


def test_kueue_queue_label_is_carried_and_the_job_created_suspended(settings, quickstart):
    quickstart["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a"}
    job = _job(quickstart)
    built = build_stage_job(job, _config(job, "sft"), settings)
    assert built["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert built["spec"]["suspend"] is True
    plain = build_stage_job(_job(job_manifest()), _config(_job(job_manifest()), "sft"), settings)
    assert "suspend" not in plain["spec"]


def test_labels_find_the_run(settings, quickstart):
    job = _job(quickstart)
    built = build_stage_job(job, _config(job, "sft", attempt=3), settings)
    for labels in (built["metadata"]["labels"], built["spec"]["template"]["metadata"]["labels"]):
        assert labels["alignops.io/job"] == "quickstart"
        assert labels["alignops.io/stage"] == "sft"
        assert labels["alignops.io/attempt"] == "3"
    assert built["metadata"]["name"] == "quickstart-sft-a3"


def test_split_rl_rollout_runs_use_the_rollout_image(settings):
    split = _job(job_manifest("split", [stage_manifest("rl", "rl", hyperparameters={"placement": "split", "rounds": 2})]))
    rollout = build_stage_job(split, _config(split, "rl", 1, "rollout", 1), settings)
    train = build_stage_job(split, _config(split, "rl", 2, "train", 1), settings)
    assert rollout["metadata"]["name"] == run_name(_config(split, "rl", 1, "rollout", 1)) == "split-rl-a1-r1-rollout"
    assert rollout["spec"]["template"]["spec"]["containers"][0]["image"] == settings.rollout_image
    assert train["spec"]["template"]["spec"]["containers"][0]["image"] == settings.trainer_image
    assert rollout["metadata"]["labels"]["alignops.io/role"] == "rollout"
    assert train["metadata"]["labels"]["alignops.io/round"] == "1"


def test_colocated_rl_on_vllm_uses_the_rollout_image(settings):
    vllm = _job(job_manifest("vl", [stage_manifest("rl", "rl", hyperparameters={"engine": "vllm"})]))
    plain = _job(job_manifest("tf", [stage_manifest("rl", "rl")]))
    image = lambda job: build_stage_job(job, _config(job, "rl"), settings)["spec"]["template"]["spec"]["containers"][0]["image"]  # noqa: E731
    assert image(vllm) == settings.rollout_image
    assert image(plain) == settings.trainer_image


def test_metrics_port_zero_turns_the_port_off(settings, quickstart):
    job = _job(quickstart)
    container = build_stage_job(job, _config(job, "sft"), settings.model_copy(update={"stage_metrics_port": 0}))["spec"]["template"]["spec"]["containers"][0]
    assert "ports" not in container
    assert not any(e["name"] == "ALIGNOPS_METRICS_PORT" for e in container["env"])


def test_checkov_finds_nothing_but_the_reasoned_skips(settings, tmp_path: Path):
    documents = []
    for _, configmap, job in _rendered(settings):
        documents += [configmap, job]
    manifest = tmp_path / "stages.yaml"
    manifest.write_text(yaml.safe_dump_all(documents))
    checkov = Path(sys.executable).parent / "checkov"
    command = [str(checkov), "-f", str(manifest), "--framework", "kubernetes", "--output", "json", "--skip-download",
               "--skip-check", ",".join(CHECKOV_SKIPS)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    report = json.loads(completed.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [(c["check_id"], c["resource"]) for r in reports for c in r["results"]["failed_checks"]]
    passed = sum(len(r["results"]["passed_checks"]) for r in reports)
    assert failed == [], f"checkov failed checks: {failed}"
    assert passed > 20 * len(documents) // 2  # the scan really ran over the Jobs


def test_hub_token_comes_from_the_named_secret_and_the_cache_volume_is_hf_home(settings):
    """spec.model.tokenSecret becomes HF_TOKEN through a secretKeyRef, overriding a literal HF_TOKEN in
    resources.env; the chart's hfCacheClaim is mounted as HF_HOME."""
    document = job_manifest("hub", [stage_manifest("sft", "sft", resources={"env": [{"name": "HF_TOKEN", "value": "spoofed"}]})])
    document["spec"]["model"] = {"hub": "acme/tiny-chat", "revision": "v1", "tokenSecret": {"name": "hf-token"}}
    job = _job(document)
    config = _config(job, "sft")
    cached = settings.model_copy(update={"hf_cache_claim": "hf-models"})
    built = build_stage_job(job, config, cached)
    pod = built["spec"]["template"]["spec"]
    container = pod["containers"][0]
    token = [e for e in container["env"] if e["name"] == "HF_TOKEN"]
    assert token == [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}}}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HF_HOME"] == "/hf-cache"
    assert {"name": "hf-cache", "persistentVolumeClaim": {"claimName": "hf-models"}} in pod["volumes"]
    assert {"name": "hf-cache", "mountPath": "/hf-cache"} in container["volumeMounts"]
    kubernetes_validate.validate(built, "1.32", strict=True)
    # without the claim and the secret: no HF_HOME, no HF_TOKEN
    plain = build_stage_job(_job(job_manifest("plain")), _config(_job(job_manifest("plain")), "sft"), settings)
    names = {e["name"] for e in plain["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert not names & {"HF_HOME", "HF_TOKEN"}
