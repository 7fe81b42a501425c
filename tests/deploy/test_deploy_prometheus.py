"""A real Prometheus scrapes a real pipeline run by the real operator: every dashboard query returns
series for that job, and every API call the operator made is allowed by the chart's RBAC.

The cluster is the operator tests' harness (tests/operator/operator_harness.py): the KMock-based API server,
the node agent running each stage pod as a local process (``python -m alignops.workloads ...`` with
the pod's env), moto for S3, and ``alignops operator`` as a child process, configured with the
environment of the chart's rendered ConfigMap. The job is SFT -> GRPO; the first SFT pod is
SIGKILLed once Prometheus has scraped its training progress, and the operator retries it.
Prometheus (1 s scrapes, the chart's alert rules loaded) scrapes the operator's /metrics and the
stage pods' port. Afterwards each dashboard query, with the variables substituted, runs the way
Grafana runs it (range queries over the run, instant ones at its end) and must return a series with
a number in it. No query pads with ``or vector(0)`` or ``absent()``.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml
from deploy_helpers import DASHBOARD_FILE, REPO, RULES_FILE, Prometheus, by_kind, documents, free_port, render

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

NAMESPACE, JOB, BUCKET = "ml-team", "watched", "alignops-e2e"
MANIFEST = {
    "apiVersion": "alignops.io/v1alpha1",
    "kind": "AlignmentJob",
    "metadata": {"name": JOB, "namespace": NAMESPACE},
    "spec": {
        "model": {"architecture": {"hiddenSize": 32, "layers": 1, "heads": 2, "maxPositions": 48, "seed": 0}},
        "stages": [
            {"name": "sft", "type": "sft", "backoffLimit": 1,
             "datasets": {"train": {"generator": "arithmetic", "size": 256, "seed": 1}},
             # 600 steps of a few ms: the kill, sent once a scrape saw step 5, lands long before the end
             "hyperparameters": {"learningRate": 0.003, "batchSize": 16, "maxSteps": 600, "logEvery": 2, "evalSize": 8,
                                 "checkpointEvery": 100, "maxLength": 32}},
            {"name": "rl", "type": "rl", "algorithm": "grpo", "policy": {"fromStage": "sft"},
             "datasets": {"train": {"generator": "arithmetic", "size": 64, "seed": 2, "format": "prompts"}},
             # a round takes ~0.2 s here: 40 of them (a held-out eval each) give a 1 s scrape ~8 chances
             # to see several rounds (10 rounds were scraped twice, 2 distinct rounds at best)
             "hyperparameters": {"rounds": 40, "promptsPerRound": 16, "samplesPerPrompt": 8, "maxNewTokens": 6,
                                 "evalSize": 64, "evalEvery": 1, "learningRate": 0.001}},
        ],
    },
}


def _harness():
    for extra in (REPO, REPO / "tests" / "operator", REPO / "tests" / "storage"):
        if str(extra) not in sys.path:
            sys.path.insert(0, str(extra))
    import operator_harness as harness
    from s3_fixtures import running_moto_server

    from tests.k8s.node_agent import NodeAgent

    return harness, NodeAgent, running_moto_server


def _kill_first_sft_pod(agent, prometheus: Prometheus, timeout: float = 300) -> str:
    """SIGKILL the first SFT pod's process once Prometheus has scraped a few of its steps."""
    prometheus.wait_for(f'alignops_stage_step{{aj_name="{JOB}", stage="sft"}} > 4', timeout=timeout)
    for (_, name), run in list(agent.pods.items()):
        if name.startswith(f"{JOB}-sft-a1-") and run.process is not None and run.process.returncode is None:
            os.kill(run.process.pid, signal.SIGKILL)
            return name
    raise AssertionError(f"no running first SFT pod: {sorted(agent.pods)}")


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    harness, NodeAgent, running_moto_server = _harness()
    work = tmp_path_factory.mktemp("cluster")
    with ExitStack() as stack:
        endpoint = stack.enter_context(running_moto_server(work / "moto.log"))
        harness.make_bucket(endpoint, BUCKET)
        api = harness.start_api(work / "api")
        stack.callback(api.stop)
        api.create_namespace(NAMESPACE)
        harness.create_storage_secret(api, NAMESPACE)
        agent = NodeAgent(api, workdir=work / "node", env=harness.pod_env()).start()
        stack.callback(agent.stop)
        stage_port = free_port()
        operator = harness.OperatorProcess(api, {}, work / "operator.log")
        # the operator's configuration is the chart's ConfigMap, rendered with this cluster's values
        values = {"storage": {"defaultUri": f"s3://{BUCKET}/root", "defaultEndpoint": endpoint,
                              "defaultSecret": harness.STORAGE_SECRET},
                  "stages": {"metricsPort": stage_port},
                  "operator": {"metricsPort": operator.metrics_port, "healthPort": operator.health_port}}
        config = [d for d in by_kind(documents(render(values)), "ConfigMap") if "ALIGNOPS_HEALTH_PORT" in d.get("data", {})][0]
        operator.env.update(config["data"])
        prometheus = Prometheus(work, {"alignops-operator": [f"127.0.0.1:{operator.metrics_port}"],
                                       "alignops-stages": [f"127.0.0.1:{stage_port}"]}, rule_files=[RULES_FILE]).start()
        stack.callback(prometheus.stop)
        operator.start()
        stack.callback(operator.stop)
        try:
            started = time.time()
            prometheus.wait_for_targets("alignops-operator")  # the first scrape comes ~6 s after start
            harness.apply_manifest(api, MANIFEST, namespace=NAMESPACE)
            killed = _kill_first_sft_pod(agent, prometheus)
            deadline = time.monotonic() + 600
            while harness.aj_status(api, JOB, NAMESPACE).get("phase") not in ("Succeeded", "Failed"):
                assert time.monotonic() < deadline, harness.dump(api, JOB, NAMESPACE)
                assert operator.process.poll() is None, operator.log()[-3000:]
                time.sleep(0.5)
            # the operator's last state is scraped (the stages' values were scraped while they ran)
            prometheus.wait_for(f'alignops_jobs{{aj_namespace="{NAMESPACE}", phase="Succeeded"}} == 1', timeout=30)
            ended = time.time()
            requests = api.call(lambda: [(r.method, r.url.path, dict(r.params), r.headers.get("User-Agent", ""))
                                         for r in list(api.emulator)])
        except Exception as exc:  # noqa: BLE001 - say what the cluster looked like
            raise AssertionError(f"{type(exc).__name__}: {exc}\n--- job ---\n{harness.dump(api, JOB, NAMESPACE)}\n"
                                 f"--- operator log ---\n{operator.log()[-3000:]}\n--- node agent errors ---\n{agent.errors}\n"
                                 f"--- prometheus log ---\n{prometheus.log_text()[-1500:]}") from exc
        yield {"prometheus": prometheus, "start": started, "end": ended, "api": api, "operator": operator,
               "status": harness.aj_status(api, JOB, NAMESPACE), "killed": killed, "requests": requests,
               "dump": harness.dump(api, JOB, NAMESPACE), "agent_errors": list(agent.errors)}


def substitute(expr: str, run: dict) -> str:
    window = f"{math.ceil(run['end'] - run['start']) + 5}s"
    # Grafana: $__rate_interval = max(4 x scrape interval, $__interval + scrape interval) = 4 s here
    return (expr.replace("$namespace", NAMESPACE).replace("$job", JOB)
            .replace("$__range", window).replace("$__rate_interval", "4s").replace("$__interval", "1s"))


def _has_number(series: list[dict]) -> bool:
    values = [float(s["value"][1]) for s in series if "value" in s]
    values += [float(v) for s in series for _, v in s.get("values", [])]
    return any(math.isfinite(v) for v in values)


def test_the_job_succeeded_after_one_killed_pod(cluster_run):
    status = cluster_run["status"]
    assert status["phase"] == "Succeeded", cluster_run["dump"]
    stages = {s["name"]: s for s in status["stages"]}
    assert (stages["sft"]["attempts"], stages["sft"]["failures"]) == (2, 1), cluster_run["dump"]
    assert (stages["rl"]["attempts"], stages["rl"]["failures"]) == (1, 0)
    assert cluster_run["agent_errors"] == []


def test_the_chart_probe_path_answers(cluster_run):
    """The Deployment's liveness/readiness probe (GET /healthz on the health port) on the real operator."""
    code, _ = cluster_run["operator"].healthz()
    assert code == 200


def test_every_dashboard_query_returns_series_for_the_job(cluster_run):
    prometheus = cluster_run["prometheus"]
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    checked = 0
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            raw = target["expr"]
            assert "vector(" not in raw and "absent(" not in raw, f"{panel['title']}: padded query {raw}"
            expr = substitute(raw, cluster_run)
            if target.get("instant"):
                series = prometheus.query(expr, at=cluster_run["end"])
            else:
                series = prometheus.query_range(expr, cluster_run["start"], cluster_run["end"], step=1)
            assert series and _has_number(series), f"panel {panel['title']!r}: no series for {expr}"
            checked += 1
    assert checked >= 25
    # the check can fail: a series this job never had (a PPO critic's loss; GRPO has none) is empty
    assert not prometheus.query_range(substitute('alignops_stage_value_loss{aj_namespace="$namespace", aj_name="$job"}', cluster_run),
                                      cluster_run["start"], cluster_run["end"], step=1)


def test_dashboard_variables_offer_the_job(cluster_run):
    prometheus = cluster_run["prometheus"]
    variables = {v["name"]: v for v in json.loads(DASHBOARD_FILE.read_text())["templating"]["list"]}
    for name, expected in (("namespace", NAMESPACE), ("job", JOB)):
        query = substitute(variables[name]["query"]["query"], cluster_run)
        inner, label = query[len("label_values("):-1].rsplit(",", 1)
        values = prometheus.api(f"label/{label.strip()}/values", **{"match[]": inner.strip()})
        assert expected in values, (name, query, values)


def test_expected_series_of_the_run(cluster_run):
    prometheus, start, end = cluster_run["prometheus"], cluster_run["start"], cluster_run["end"]
    sel = f'aj_namespace="{NAMESPACE}", aj_name="{JOB}"'

    def value(expr: str) -> float:
        (series,) = prometheus.query(expr, at=end)
        return float(series["value"][1])

    # the operator's view: two sft attempts, one failure (the killed pod), one rl attempt, each stage timed once
    assert value(f'alignops_stage_attempts_total{{{sel}, stage="sft"}}') == 2
    assert value(f'alignops_stage_attempts_total{{{sel}, stage="rl"}}') == 1
    assert value(f'sum(alignops_stage_failures_total{{{sel}, stage="sft"}})') == 1
    assert not prometheus.query(f'alignops_stage_failures_total{{{sel}, stage="rl"}}', at=end)
    assert value(f'alignops_stage_duration_seconds_count{{{sel}, stage="sft"}}') == 1
    assert value(f'alignops_jobs{{aj_namespace="{NAMESPACE}", phase="Running"}}') == 0
    # both sft attempts' pods were scraped (the killed one too), then the rl pod
    info = prometheus.query_range(f"alignops_stage_info{{{sel}}}", start, end)
    attempts = {(s["metric"]["stage"], s["metric"]["attempt"]) for s in info}
    assert attempts == {("sft", "1"), ("sft", "2"), ("rl", "1")}
    # rl rounds appear as their own series (round label), training metrics under both stages
    # every sample over the run, whatever the range step: a round's series lives ~one scrape
    window = f"{math.ceil(end - start) + 5}s"
    scraped = prometheus.query(f"count by (round) (count_over_time(alignops_stage_reward_mean{{{sel}}}[{window}]))", at=end)
    rounds = {s["metric"].get("round") for s in scraped}
    assert len(rounds) >= 2 and None not in rounds
    stages = {s["metric"]["stage"] for s in prometheus.query_range(f"alignops_stage_loss{{{sel}}}", start, end)}
    assert stages == {"sft", "rl"}
    # the labels Prometheus adds stay its own: the targets' job names, no clash with ours
    jobs = {s["metric"]["job"] for s in prometheus.query_range(f"alignops_stage_step{{{sel}}}", start, end)}
    assert jobs == {"alignops-stages"}


def test_alert_rules_load_and_none_holds_for_a_healthy_run(cluster_run):
    """The chart's rules load into the real Prometheus, and at the end of this run (one retried
    failure, then success) no alert's condition holds: the operator is up under the job name the
    rule expects, nothing stalled, nothing failed for good, the log-prob gap is small."""
    prometheus = cluster_run["prometheus"]
    rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
    assert len(rules) == 6 and all(r["health"] == "ok" for r in rules), rules
    assert [a for a in prometheus.api("alerts")["alerts"] if a["state"] == "firing"] == []
    for rule in [r for group in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in group["rules"]]:
        assert prometheus.query(rule["expr"], at=cluster_run["end"]) == [], rule["alert"]
    assert prometheus.query('up{job="alignops-operator"} == 1', at=cluster_run["end"])
    gap = prometheus.query_range(f'alignops_stage_logprob_gap{{aj_name="{JOB}"}}', cluster_run["start"], cluster_run["end"])
    assert gap and max(float(v) for s in gap for _, v in s["values"]) < 0.1


# -- RBAC: what the operator really called --------------------------------------------------------------
# kopf's optional observers: without access they log "Not enough permissions" and carry on
# (kopf/_core/reactor/observation.py); the chart grants neither
KOPF_OPTIONAL = {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces")}
RESOURCE_PATH = re.compile(r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
                           r"(?:/namespaces/(?P<namespace>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$")


def _verb(method: str, name: str | None, params: dict) -> str:
    if method == "GET":
        if name:
            return "get"
        return "watch" if params.get("watch") in ("true", "1", "True") else "list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete" if name else "deletecollection"}[method]


def operator_calls(requests: list[tuple]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource[/subresource], verb) of every resource request made by kopf or the
    kubernetes client (kubectl and the node agent send other User-Agents); discovery is left out."""
    calls = set()
    for method, path, params, agent in requests:
        if not (agent.startswith("kopf/") or agent.startswith("OpenAPI-Generator/")):
            continue
        match = RESOURCE_PATH.match(path)
        if match is None:
            continue  # discovery documents (/api, /apis/<group>/<version>) are not resources
        group = "" if match["core"] else match["group"]
        resource = match["plural"] + (f"/{match['sub']}" if match["sub"] else "")
        calls.add((group, resource, _verb(method, match["name"], params)))
    return calls


def test_the_chart_rbac_allows_every_call_the_operator_made(cluster_run):
    calls = operator_calls(cluster_run["requests"])
    # the run exercised the operator's main paths
    assert {("alignops.io", "alignmentjobs", "watch"), ("alignops.io", "alignmentjobs/status", "patch"),
            ("batch", "jobs", "create"), ("batch", "jobs", "watch"), ("", "pods", "watch"),
            ("", "configmaps", "create"), ("", "events", "create")} <= calls, sorted(calls)
    for combination in ({}, {"watchNamespaces": [NAMESPACE]}):
        docs = documents(render(combination))
        rules = [rule for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role") for rule in role["rules"]]
        allowed = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
        denied = {c for c in calls if c not in allowed and (c[0], c[1]) not in KOPF_OPTIONAL}
        assert not denied, f"RBAC ({combination or 'cluster-wide'}) denies calls the operator made: {sorted(denied)}"
