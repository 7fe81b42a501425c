"""The Helm chart, rendered and linted by Helm v4 itself (helm-python-sdk), and checked with the real
validators: kubernetes-validate --strict for core manifests, the prometheus-operator schema for the
monitors, the repository's CRD and the operator's settings model for the configuration."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from deploy_helpers import (CHART, COMBINATIONS, DASHBOARD_FILE, HERE, NAMESPACE, REPO, RULES_FILE, by_kind,
                            documents, helm, one, render, tool)

MONITOR_SCHEMA = json.loads((HERE / "prometheus_operator.schema.json").read_text())
CORE_KINDS = {"Deployment", "ServiceAccount", "ConfigMap", "Service", "NetworkPolicy", "Role", "RoleBinding",
              "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
MONITOR_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: documents(render(values)) for name, values in COMBINATIONS.items()}


# -- lint and render ------------------------------------------------------------------------------
@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_lint_strict_has_no_warning(combination):
    report = helm().lint(str(CHART), COMBINATIONS[combination], strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    # severity 1 is "info" (e.g. "icon is recommended"); 2 warning, 3 error
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_every_rendered_kind_is_known(rendered):
    for name, docs in rendered.items():
        kinds = {d["kind"] for d in docs}
        assert kinds <= CORE_KINDS | MONITOR_KINDS, (name, kinds)


def test_default_install_objects(rendered):
    kinds = sorted(d["kind"] for d in rendered["default"])
    # dashboards on, monitors and rules off, CRD installed, cluster-wide RBAC
    assert kinds == sorted(["ClusterRole", "ClusterRoleBinding", "ConfigMap", "ConfigMap", "CustomResourceDefinition",
                            "Deployment", "NetworkPolicy", "Service", "ServiceAccount"])
    for doc in rendered["default"]:
        if doc["kind"] not in {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}:
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]


def test_kubernetes_validate_strict(rendered, tmp_path):
    """Every core manifest of every combination, against Kubernetes 1.27 (the chart's kubeVersion
    floor) and the newest schemas kubernetes-validate ships."""
    executable = tool("kubernetes-validate", str(Path(sys.executable).parent / "kubernetes-validate"))
    files = []
    for name, docs in rendered.items():
        for index, doc in enumerate(docs):
            if doc["kind"] in CORE_KINDS:
                path = tmp_path / f"{name}-{index}-{doc['kind']}.yaml"
                path.write_text(yaml.safe_dump(doc))
                files.append(str(path))
    assert len(files) > 40
    for version in ("1.27.0", None):
        command = [executable, "--strict", *(["-k", version] if version else []), *files]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        assert "WARN" not in result.stdout and "ERROR" not in result.stdout, result.stdout[-4000:]


def test_kubernetes_validate_refuses_a_wrong_field(tmp_path):
    """The validator run above can fail: a misspelt field in a Deployment is caught."""
    executable = tool("kubernetes-validate", str(Path(sys.executable).parent / "kubernetes-validate"))
    deployment = one(documents(render()), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(deployment))
    result = subprocess.run([executable, "--strict", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "securityContex" in result.stdout + result.stderr


# -- the operator's Deployment ---------------------------------------------------------------------
def test_operator_deployment_is_locked_down(rendered):
    for name, docs in rendered.items():
        deployment = one(docs, "Deployment")
        spec = deployment["spec"]
        assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (container,) = pod["containers"]
        assert container["command"] == ["alignops", "operator"]
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["privileged"] is False
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert set(container["resources"]) == {"requests", "limits"}
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
        config = one([d for d in docs if d["kind"] == "ConfigMap" and "ALIGNOPS_HEALTH_PORT" in d.get("data", {})], "ConfigMap")
        assert ports == {"metrics": int(config["data"]["ALIGNOPS_METRICS_PORT"]),
                         "health": int(config["data"]["ALIGNOPS_HEALTH_PORT"])}, name
        # the read-only root filesystem needs a writable /tmp
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
        # the operator never sees a Secret: no secret env, volume or envFrom
        text = json.dumps(pod)
        assert "secretKeyRef" not in text and '"secret"' not in text and "secretRef" not in text


def test_image_tag_defaults_to_app_version_and_digest_wins(rendered):
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    image = one(rendered["default"], "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"ghcr.io/alignops/operator:{chart['appVersion']}"
    image = one(rendered["configured"], "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "ghcr.io/alignops/operator@sha256:" + "a" * 64


def _operator_settings_from(config_map: dict, monkeypatch):
    from alignops.operator.settings import OperatorSettings

    for key in list(__import__("os").environ):
        if key.startswith("ALIGNOPS_"):
            monkeypatch.delenv(key)
    for key, value in config_map["data"].items():
        monkeypatch.setenv(key, value)
    return OperatorSettings()


def test_configuration_is_what_the_operator_reads(rendered, monkeypatch):
    """Each ConfigMap key is a field of OperatorSettings (the source of truth), and the operator
    reads back the values the chart was given."""
    from alignops.operator.settings import OperatorSettings

    known = {f"ALIGNOPS_{name.upper()}" for name in OperatorSettings.model_fields}
    for name, docs in rendered.items():
        config = [d for d in by_kind(docs, "ConfigMap") if "ALIGNOPS_HEALTH_PORT" in d.get("data", {})][0]
        assert set(config["data"]) <= known, (name, set(config["data"]) - known)
    settings = _operator_settings_from([d for d in by_kind(rendered["configured"], "ConfigMap") if "data" in d and "ALIGNOPS_HEALTH_PORT" in d["data"]][0], monkeypatch)
    assert settings.default_storage_uri == "s3://bucket/alignops"
    assert settings.default_storage_endpoint == "http://minio.minio:9000"
    assert settings.default_storage_secret == "s3-credentials"
    assert settings.stage_service_account == "trainer"
    assert settings.hf_cache_claim == "hf-models"
    assert (settings.metrics_port, settings.health_port) == (8080, 8081)
    settings = _operator_settings_from([d for d in by_kind(rendered["namespaced"], "ConfigMap") if "ALIGNOPS_HEALTH_PORT" in d.get("data", {})][0], monkeypatch)
    assert settings.namespace_list == ["team-a", "team-b"]
    assert settings.trainer_image == "ghcr.io/alignops/trainer:0.1.0"
    assert settings.rollout_image == "ghcr.io/alignops/rollout:0.1.0"
    settings = _operator_settings_from([d for d in by_kind(rendered["default"], "ConfigMap") if "ALIGNOPS_HEALTH_PORT" in d.get("data", {})][0], monkeypatch)
    assert settings.namespace_list == [] and settings.default_storage_uri is None and settings.stage_metrics_port == 9090
    assert settings.network_env == {} and settings.network_devices == {} and settings.rendezvous_timeout_seconds == 900


def test_the_chart_sets_every_operator_setting(rendered):
    """A setting added to OperatorSettings needs a value in the chart (or this test names it)."""
    from alignops.operator.settings import OperatorSettings

    keys = set()
    for docs in rendered.values():
        for config in by_kind(docs, "ConfigMap"):
            keys |= {k for k in config.get("data", {}) if k.startswith("ALIGNOPS_")}
    assert keys == {f"ALIGNOPS_{name.upper()}" for name in OperatorSettings.model_fields}


def test_configured_values_reach_the_operator(rendered, monkeypatch):
    config = [d for d in by_kind(rendered["configured"], "ConfigMap") if "ALIGNOPS_HEALTH_PORT" in d.get("data", {})][0]
    settings = _operator_settings_from(config, monkeypatch)
    assert settings.scratch_size == "50Gi" and settings.stage_metrics_port == 0
    assert settings.standalone is True  # one replica, no peering
    assert (settings.default_cpu, settings.default_memory, settings.shm_size) == ("2", "8Gi", "2Gi")
    assert (settings.stage_grace_seconds, settings.resync_seconds, settings.api_workers, settings.verbose) == (120, 30.0, 16, False)
    # runs across nodes: the rendezvous and the cluster network (JSON maps in the ConfigMap)
    assert (settings.rendezvous_port, settings.rendezvous_timeout_seconds) == (29400, 600)
    assert settings.network_env == {"NCCL_SOCKET_IFNAME": "eth0", "FI_PROVIDER": "efa"}
    assert settings.network_devices == {"vpc.amazonaws.com/efa": 4}


def test_extra_env_reaches_the_container(rendered):
    container = one(rendered["configured"], "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["env"] == [{"name": "KOPF_LOG_LEVEL", "value": "debug"}]


# -- RBAC --------------------------------------------------------------------------------------------
# (apiGroup, resource) -> verbs: exactly what the operator calls (alignops.operator.kube and
# executor: create/delete/get/merge-patch paths; kopf: list+watch of the AlignmentJobs and its indexes)
EXPECTED_RULES = {
    ("alignops.io", "alignmentjobs"): {"get", "list", "watch", "delete"},
    ("alignops.io", "alignmentjobs/status"): {"patch"},
    ("alignops.io", "alignmentjobs/finalizers"): {"update"},
    ("batch", "jobs"): {"create", "delete", "list", "watch"},
    ("", "pods"): {"list", "watch"},
    ("", "configmaps"): {"create", "delete"},
    ("", "services"): {"create", "delete"},  # the headless Service of a run across nodes
    ("", "events"): {"create"},
}


def _flatten(rules: list[dict]) -> dict[tuple[str, str], set[str]]:
    flat: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames/nonResourceURLs
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                flat.setdefault((group, resource), set()).update(rule["verbs"])
    return flat


def test_rbac_is_exactly_what_the_operator_uses(rendered):
    for name, docs in rendered.items():
        roles = by_kind(docs, "ClusterRole") + by_kind(docs, "Role")
        assert roles, name
        for role in roles:
            text = json.dumps(role["rules"])
            assert "*" not in text, f"wildcard in {role['metadata']['name']}"
            assert "secrets" not in text
            assert _flatten(role["rules"]) == EXPECTED_RULES


def test_cluster_wide_mode_uses_a_cluster_role(rendered):
    docs = rendered["default"]
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == one(docs, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": one(docs, "ServiceAccount")["metadata"]["name"],
                                    "namespace": NAMESPACE}]
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")


def test_namespaced_mode_has_no_cluster_access(rendered):
    docs = rendered["namespaced"]
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    roles, bindings = by_kind(docs, "Role"), by_kind(docs, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "alignops"}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "alignops", "namespace": NAMESPACE}]


def test_no_rbac_when_disabled():
    docs = documents(render({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops"}}))
    assert not {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "ServiceAccount"} & {d["kind"] for d in docs}
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"


# -- the CRD -------------------------------------------------------------------------------------------
def test_chart_crd_file_is_the_repository_crd():
    """The chart's CRD file is a symbolic link to crds/ (which tests/core keeps equal to `alignops
    crd`): one file, never a stale copy. Helm follows the link when it loads or packages the chart."""
    link = CHART / "files" / "crds" / "alignmentjobs.alignops.io.yaml"
    assert link.is_symlink() and link.resolve() == (REPO / "crds" / "alignmentjobs.alignops.io.yaml").resolve()
    helm_python = helm()
    with helm_python.Chart.load(str(CHART)) as chart:
        files = {f["name"]: f["data"] for f in chart.files}
    assert files["files/crds/alignmentjobs.alignops.io.yaml"] == (REPO / "crds" / "alignmentjobs.alignops.io.yaml").read_text()


def test_packaged_chart_carries_the_crd_content(tmp_path):
    """`helm package` stores the linked file's content, so an installed chart has the CRD."""
    import tarfile

    archive = helm().package(str(CHART), destination=str(tmp_path))
    with tarfile.open(archive) as tar:
        member = tar.getmember("alignops/files/crds/alignmentjobs.alignops.io.yaml")
        assert member.isfile()
        assert tar.extractfile(member).read().decode() == (REPO / "crds" / "alignmentjobs.alignops.io.yaml").read_text()


def test_rendered_crd_is_the_file_plus_helm_metadata(rendered):
    expected = yaml.safe_load((REPO / "crds" / "alignmentjobs.alignops.io.yaml").read_text())
    crd = one(rendered["default"], "CustomResourceDefinition")
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    # everything but Helm's labels and annotations is the generated CRD, value for value
    stripped = {**crd, "metadata": {k: v for k, v in crd["metadata"].items() if k not in ("labels", "annotations")}}
    assert stripped == expected
    assert "helm.sh/resource-policy" not in one(rendered["configured"], "CustomResourceDefinition")["metadata"].get("annotations", {})
    assert not by_kind(rendered["no-crds"], "CustomResourceDefinition")


# -- values and schema ----------------------------------------------------------------------------------
def _objects(schema, path="$"):
    if isinstance(schema, dict):
        if schema.get("type") == "object" or "properties" in schema:
            yield path, schema
        for key, value in schema.items():
            yield from _objects(value, f"{path}.{key}")
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            yield from _objects(value, f"{path}[{index}]")


def test_schema_closes_every_object():
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path, node in _objects(schema):
        if "properties" in node:
            assert node.get("additionalProperties") is False, path
        elif path != "$.properties.global":
            # free-form maps (labels, annotations, nodeSelector, env) still type their values
            assert isinstance(node.get("additionalProperties"), dict), path


def _leaves(values: dict, prefix=()):
    for key, value in values.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,)


def test_every_value_has_a_schema_entry_and_a_comment():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.validate(values, schema)
    for leaf in _leaves(values):
        node = schema
        for key in leaf:
            if key not in node.get("properties", {}):
                assert isinstance(node.get("additionalProperties"), dict), leaf  # a free-form map's entry
                break
            node = node["properties"][key]
    # a comment line right above each key that holds a value, or above the block it sits in
    lines = (CHART / "values.yaml").read_text().splitlines()
    commented_blocks: list[tuple[int, bool]] = []  # (indent, has comment)
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z_][\w-]*):(.*)$", line)
        if not match:
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3).strip()
        while commented_blocks and commented_blocks[-1][0] >= indent:
            commented_blocks.pop()
        previous = next((lines[i].strip() for i in range(number - 1, -1, -1) if lines[i].strip()), "")
        has_comment = previous.startswith("#")
        if rest and not rest.startswith("#"):
            assert has_comment or any(c for _, c in commented_blocks), f"values.yaml line {number + 1}: {key} has no comment"
        commented_blocks.append((indent, has_comment))


BAD_VALUES = [
    {"unknownKey": 1},
    {"image": {"tag": 3}},
    {"image": {"registry": "x"}},
    {"image": {"digest": "latest"}},
    {"watchNamespaces": ["Team_A"]},
    {"crds": {"install": "yes"}},
    {"operator": {"metricsPort": 70000}},
    {"metrics": {"podMonitor": {"interval": "fast"}}},
    {"metrics": {"serviceMonitor": {"enabled": True, "extra": 1}}},
    {"storage": {"defaultUri": "gs://bucket"}},
    {"storage": {"defaultUri": "file:///data"}},
    {"resources": {"limits": {"cpu": "lots"}}},
    {"podLabels": {"team": 3}},
    {"tolerations": [{"key": "gpu", "operator": "Maybe"}]},
    {"stages": {"multiNode": {"networkEnv": {"PET_MASTER_ADDR": "elsewhere"}}}},
    {"stages": {"multiNode": {"networkDevices": {"nvidia.com/gpu": 8}}}},
    {"stages": {"multiNode": {"networkDevices": {"efa": 1}}}},
]


@pytest.mark.parametrize("values", BAD_VALUES, ids=[json.dumps(v) for v in BAD_VALUES])
def test_values_that_break_the_schema_are_refused(values):
    helm_python = helm()
    with helm_python.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm_python.HelmError):
            chart.validate_schema(values)
        with pytest.raises(helm_python.HelmError):
            chart.render(values, name="alignops", namespace=NAMESPACE)


def test_service_monitor_needs_the_service():
    helm_python = helm()
    with pytest.raises(helm_python.HelmError, match="metrics.service.enabled"):
        render({"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}})


# -- monitors, rules, dashboards ------------------------------------------------------------------------
def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h)", duration))


@pytest.mark.parametrize("combination", ["monitoring", "namespaced-monitoring"])
def test_monitors_match_the_prometheus_operator_api(rendered, combination):
    docs = rendered[combination]
    for kind in MONITOR_KINDS:
        doc = one(docs, kind)
        jsonschema.validate(doc, {**MONITOR_SCHEMA, "$ref": f"#/$defs/{kind}"})
    for endpoint in one(docs, "ServiceMonitor")["spec"]["endpoints"] + one(docs, "PodMonitor")["spec"]["podMetricsEndpoints"]:
        # prometheus-operator refuses a scrape timeout longer than the interval
        assert _seconds(endpoint["scrapeTimeout"]) <= _seconds(endpoint["interval"])


def test_monitor_schema_refuses_a_wrong_field():
    docs = documents(render(COMBINATIONS["monitoring"]))
    monitor = one(docs, "PodMonitor")
    monitor["spec"]["podMetricsEndpoints"][0]["intervall"] = "10s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, {**MONITOR_SCHEMA, "$ref": "#/$defs/PodMonitor"})
    rule = one(docs, "PrometheusRule")
    rule["spec"]["groups"][0]["rules"][0]["for"] = "5 minutes"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rule, {**MONITOR_SCHEMA, "$ref": "#/$defs/PrometheusRule"})


def test_service_monitor_selects_the_metrics_service(rendered):
    docs = rendered["monitoring"]
    monitor, service = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # Prometheus's job label comes from the Service's jobLabel: the name AlignOpsOperatorDown watches
    job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
    assert f'up{{job="{job}"}}' in RULES_FILE.read_text()


def test_pod_monitor_selects_stage_pods(rendered):
    monitor = one(rendered["monitoring"], "PodMonitor")
    assert monitor["spec"]["selector"] == {"matchExpressions": [{"key": "alignops.io/job", "operator": "Exists"}]}
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    # of a run across nodes only index 0's pod serves metrics (rank 0): a pod without the completion
    # index (a run on one node) or with index 0 is kept, every other index dropped
    (keep,) = monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]
    assert keep["action"] == "keep" and keep["sourceLabels"] == ["__meta_kubernetes_pod_label_batch_kubernetes_io_job_completion_index"]
    assert [v for v in ("", "0", "1", "10") if re.fullmatch(keep["regex"], v)] == ["", "0"]
    monitor = one(rendered["namespaced-monitoring"], "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}


def test_prometheus_rule_is_the_rules_file(rendered):
    rule = one(rendered["monitoring"], "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES_FILE.read_text())
    assert not by_kind(rendered["default"], "PrometheusRule")


def test_dashboard_config_map(rendered):
    for combination, namespace in (("default", NAMESPACE), ("namespaced-monitoring", "monitoring")):
        dashboards = [d for d in by_kind(rendered[combination], "ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"]]
        assert len(dashboards) == 1
        (dashboard,) = dashboards
        assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert dashboard["metadata"]["namespace"] == namespace
        assert json.loads(dashboard["data"]["alignops.json"]) == json.loads(DASHBOARD_FILE.read_text())
    assert not [d for d in documents(render({"dashboards": {"enabled": False}})) if d["kind"] == "ConfigMap"
                and "grafana_dashboard" in d["metadata"]["labels"]]


def test_notes_name_the_next_steps():
    notes = render({"watchNamespaces": ["team-a"], "crds": {"install": False}})["alignops/templates/NOTES.txt"]
    assert "kubectl -n team-a apply -f" in notes and "alignops crd | kubectl apply -f -" in notes
    assert "rollout status deployment/alignops" in notes


def test_pod_monitor_scrapes_the_pods_the_operator_builds(rendered, monkeypatch):
    """The operator's own builder, configured from the chart's ConfigMap: its stage pods carry the
    PodMonitor's label and a container port with the PodMonitor's port name and the stage metrics
    port, and ALIGNOPS_METRICS_PORT tells the workload to serve there."""
    from alignops.api.validation import parse_job
    from alignops.operator.builders import build_stage_job
    from alignops.planner import Defaults, initial_status, resolve_run

    docs = rendered["monitoring"]
    config_map = [d for d in by_kind(docs, "ConfigMap") if "ALIGNOPS_HEALTH_PORT" in d.get("data", {})][0]
    settings = _operator_settings_from(config_map, monkeypatch)
    job = parse_job(yaml.safe_load((REPO / "pipelines" / "quickstart.yaml").read_text()))
    run = resolve_run(job, initial_status(job), "sft", 1, Defaults(storage_uri="s3://bucket/root", namespace="ml"))
    pod = build_stage_job(job, run, settings)["spec"]["template"]
    monitor = one(docs, "PodMonitor")["spec"]
    for expression in monitor["selector"]["matchExpressions"]:
        assert expression["operator"] == "Exists" and expression["key"] in pod["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    endpoint = monitor["podMetricsEndpoints"][0]
    assert ports[endpoint["port"]] == int(config_map["data"]["ALIGNOPS_STAGE_METRICS_PORT"]) == 9090
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ALIGNOPS_METRICS_PORT"] == "9090" and endpoint["path"] == "/metrics"
