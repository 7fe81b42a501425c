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
from alignops.operator.admission import cluster_errors
from alignops.operator.builders import (
    RESULT_PATH,
    build_run_configmap,
    build_run_service,
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


NETWORK = {"network_env": {"NCCL_SOCKET_IFNAME": "eth0", "NCCL_IB_HCA": "mlx5"}, "network_devices": {"vpc.amazonaws.com/efa": 4}}


def _across_nodes(nodes: int, gpus: int = 8, name: str = "big", stage_name: str = "sft", **stage) -> tuple:
    """(job, config) of an sft stage on ``nodes`` nodes x ``gpus`` GPUs."""
    resources = {"nodes": nodes, "gpus": gpus, **stage.pop("resources", {})}
    job = _job(job_manifest(name, [stage_manifest("sft", stage_name, resources=resources,
                                                  hyperparameters={"batchSize": 8 * nodes * max(gpus, 1)}, **stage)]))
    return job, _config(job, stage_name)


def _rendered_across_nodes(settings) -> list[dict]:
    """The ConfigMap, Service and Job of runs on 2 and 3 nodes, with the operator's network settings."""
    settings = settings.model_copy(update=NETWORK)
    out = []
    for nodes in (2, 3):
        job, config = _across_nodes(nodes)
        out += [build_run_configmap(job, config), build_run_service(job, config, settings), build_stage_job(job, config, settings)]
    return out


def test_every_stage_type_passes_strict_kubernetes_validation(settings):
    rendered = _rendered(settings)
    assert {t for t, _, _ in rendered} >= set(STAGE_TYPES)
    for kind, configmap, job in rendered:
        for obj in (configmap, job):
            kubernetes_validate.validate(obj, "1.32", strict=True)  # raises on any unknown or wrong field
    across = _rendered_across_nodes(settings)
    assert sorted(o["kind"] for o in across) == ["ConfigMap", "ConfigMap", "Job", "Job", "Service", "Service"]
    for obj in across:
        kubernetes_validate.validate(obj, "1.32", strict=True)


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


def test_a_stage_on_eight_gpus_gets_them_its_processes_and_room_for_nccl(settings, quickstart):
    quickstart["spec"]["stages"][0]["resources"] = {"gpus": 8}
    quickstart["spec"]["stages"][0]["distributed"] = {"zeroStage": 3, "offloadOptimizer": True}
    job = _job(quickstart)
    config = _config(job, "sft")
    pod = build_stage_job(job, config, settings)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    # 8 GPUs x 4 GiB of /dev/shm beats the 2Gi default (NCCL's intra-node buffers live there)
    assert next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
    # the pod's one entrypoint launches the 8 workers: the resolved config says how many and how
    run = StageRunConfig.from_json(build_run_configmap(job, config)["data"]["config.json"]).distributed
    assert (run.processes_per_node, run.nodes, run.zero_stage, run.offload_optimizer, run.world_size) == (8, 1, 3, True, 8)
    assert container["command"] == ["python", "-m", "alignops.workloads", "/etc/alignops/run/config.json"]
    # one GPU: 4Gi, one process without ZeRO (plain PyTorch); no GPU: the configured 2Gi
    del quickstart["spec"]["stages"][0]["distributed"]
    for gpus, size in ((1, "4Gi"), (0, "2Gi")):
        quickstart["spec"]["stages"][0]["resources"] = {"gpus": gpus}
        job = _job(quickstart)
        pod = build_stage_job(job, _config(job, "sft"), settings)["spec"]["template"]["spec"]
        assert next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"]["sizeLimit"] == size
        assert _config(job, "sft").distributed.zero_stage is None and _config(job, "sft").distributed.world_size == 1


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
    documents += _rendered_across_nodes(settings)
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


# -- runs across nodes -------------------------------------------------------------------------------

@pytest.mark.parametrize("nodes", [2, 3])
def test_a_run_across_nodes_is_an_indexed_job_with_a_headless_service(settings, nodes):
    job, config = _across_nodes(nodes)
    built, service = build_stage_job(job, config, settings), build_run_service(job, config, settings)
    name = built["metadata"]["name"]
    assert name == service["metadata"]["name"] == run_name(config) == "big-sft-a1"
    spec = built["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == ("Indexed", nodes, nodes, 0)
    # any pod's exit 1 or 78 fails the whole Job at once; a disruption (preemption, drain) is not counted
    assert spec["podFailurePolicy"] == {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": "stage", "operator": "In", "values": [1, 78]}}]}
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == name and pod["restartPolicy"] == "Never"
    # headless, selecting exactly this Job's pods, their names published before they are ready
    assert service["spec"] == {"clusterIP": "None", "selector": {"batch.kubernetes.io/job-name": name}, "publishNotReadyAddresses": True,
                               "ports": [{"name": "rendezvous", "port": 29500, "targetPort": 29500, "protocol": "TCP"}]}
    assert service["metadata"]["labels"] == built["metadata"]["labels"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["PET_NNODES"] == str(nodes) and env["PET_NPROC_PER_NODE"] == "8"
    assert env["PET_NODE_RANK"] == {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}
    assert env["PET_MASTER_ADDR"] == f"{name}-0.{name}"  # index 0's hostname in the Service's subdomain
    assert env["PET_MASTER_PORT"] == "29500" and env["ALIGNOPS_RENDEZVOUS_TIMEOUT"] == "900"
    assert {"name": "rendezvous", "containerPort": 29500, "protocol": "TCP"} in container["ports"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"  # per node
    assert json.loads(build_run_configmap(job, config)["data"]["config.json"])["distributed"]["nodes"] == nodes


def test_a_run_on_one_node_has_no_service_and_no_rendezvous(settings, quickstart):
    job = _job(quickstart)
    config = _config(job, "sft")
    built = build_stage_job(job, config, settings.model_copy(update=NETWORK))
    assert build_run_service(job, config, settings) is None
    assert built["spec"]["completions"] == 1 and "completionMode" not in built["spec"] and "podFailurePolicy" not in built["spec"]
    container = built["spec"]["template"]["spec"]["containers"][0]
    assert not [e for e in container["env"] if e["name"].startswith(("PET_", "NCCL_"))]  # the network settings are for runs across nodes
    assert "vpc.amazonaws.com/efa" not in container["resources"]["limits"]


def test_network_settings_reach_runs_across_nodes_and_a_stage_overrides_them(settings):
    settings = settings.model_copy(update=NETWORK)
    job, config = _across_nodes(2)
    container = build_stage_job(job, config, settings)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert (env["NCCL_SOCKET_IFNAME"], env["NCCL_IB_HCA"]) == ("eth0", "mlx5")
    assert container["resources"]["limits"]["vpc.amazonaws.com/efa"] == "4"
    # the stage's own: its env wins, its devices replace the operator's
    job, config = _across_nodes(2, resources={"devices": {"rdma/ib": 1}, "env": [{"name": "NCCL_SOCKET_IFNAME", "value": "ib0"}]})
    container = build_stage_job(job, config, settings)["spec"]["template"]["spec"]["containers"][0]
    assert [e["value"] for e in container["env"] if e["name"] == "NCCL_SOCKET_IFNAME"] == ["ib0"]
    limits = container["resources"]["limits"]
    assert limits["rdma/ib"] == "1" and "vpc.amazonaws.com/efa" not in limits
    kubernetes_validate.validate(build_stage_job(job, config, settings), "1.32", strict=True)


def test_the_rendezvous_variables_are_the_operators_own(settings):
    job, _ = _across_nodes(2, resources={"env": [{"name": "PET_MASTER_ADDR", "value": "elsewhere"}]})
    errors = cluster_errors(job, settings)
    assert [e.path for e in errors] == ["spec.stages[0].resources.env[0].name"]
    assert "PET_* variables are set by the operator" in errors[0].message


@pytest.mark.parametrize("nodes", [2, 3, 11, 64])
def test_names_of_runs_across_nodes_leave_room_for_their_pods_hostnames(settings, nodes):
    job_name = "j" + "x" * 62  # the longest AlignmentJob name
    job, config = _across_nodes(nodes, gpus=1, name=job_name, stage_name="stage-name-twenty")
    built, service = build_stage_job(job, config, settings), build_run_service(job, config, settings)
    name = built["metadata"]["name"]
    assert name == service["metadata"]["name"] and name[0].isalpha()  # a Service name is a DNS-1035 label
    assert len(f"{name}-{nodes - 1}") <= 63  # the last pod's hostname, a DNS label too
    pet = {e["name"]: e.get("value") for e in built["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert pet["PET_MASTER_ADDR"] == f"{name}-0.{name}"
    next_attempt = build_stage_job(job, _config(job, "stage-name-twenty", attempt=2), settings)["metadata"]["name"]
    assert next_attempt != name and len(next_attempt) == len(name)


def test_a_split_rl_stage_across_nodes_trains_across_nodes_and_rolls_out_on_one(settings):
    split = _job(job_manifest("split", [stage_manifest("rl", "rl", resources={"nodes": 2, "gpus": 4},
                                                       hyperparameters={"placement": "split", "rounds": 2})]))
    rollout, train = _config(split, "rl", 1, "rollout", 1), _config(split, "rl", 2, "train", 1)
    assert build_run_service(split, rollout, settings) is None
    assert build_stage_job(split, rollout, settings)["spec"]["completions"] == 1
    assert build_stage_job(split, train, settings)["spec"]["completions"] == 2
    assert build_run_service(split, train, settings)["metadata"]["name"] == "split-rl-a2-r1-train"


def test_kueue_admits_a_run_across_nodes_whole(settings):
    """With a queue label the Indexed Job is created suspended: Kueue admits its parallelism (every
    node's pod) as one workload, so no pod starts before all of them fit."""
    manifest = job_manifest("gang", [stage_manifest("sft", "sft", resources={"nodes": 4, "gpus": 8}, hyperparameters={"batchSize": 32})])
    manifest["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a"}
    job = _job(manifest)
    built = build_stage_job(job, _config(job, "sft"), settings)
    assert built["spec"]["suspend"] is True and built["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert (built["spec"]["parallelism"], built["spec"]["completions"]) == (4, 4)
    assert build_run_service(job, _config(job, "sft"), settings)["spec"]["clusterIP"] == "None"


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
