"""End to end: the real kubectl and ``alignops operator`` (kopf) against the Kubernetes emulator,
Job pods run as local processes by the node agent, checkpoints in a moto S3 server.

One cluster for the module (starting one costs seconds); each test uses its own AlignmentJob.
Pipelines are CI-sized copies of pipelines/quickstart.yaml (few steps, small data): every pod still
imports torch and trains for real, so the module runs few of them.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from operator_harness import (
    AJ,
    JOBS,
    PODS,
    STORAGE_SECRET,
    OperatorProcess,
    aj_status,
    apply_manifest,
    condition,
    create_storage_secret,
    dump,
    events_of,
    make_bucket,
    pod_env,
    s3_keys,
    start_api,
)
from s3_fixtures import running_moto_server

from tests.k8s.node_agent import NodeAgent
from tests.k8s.server import run_kubectl, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BUCKET = "alignops-e2e"
PREFIX = "runs"
NS = "default"


class Cluster:
    def __init__(self, api, agent, endpoint, operator_settings, workdir):
        self.api, self.agent, self.endpoint = api, agent, endpoint
        self.operator_settings = operator_settings
        self.workdir = workdir
        self.operator: OperatorProcess | None = None
        self.logs: list[OperatorProcess] = []

    def start_operator(self) -> OperatorProcess:
        self.operator = OperatorProcess(self.api, self.operator_settings, self.workdir / f"operator-{len(self.logs)}.log").start()
        self.logs.append(self.operator)
        return self.operator

    def status(self, name: str) -> dict:
        return aj_status(self.api, name, NS)

    def wait_status(self, name: str, predicate, timeout: float, what: str) -> dict:
        def check():
            status = self.status(name)
            return status if status and predicate(status) else None
        try:
            return wait_until(check, timeout, interval=0.1, message=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{dump(self.api, name, NS)}\noperator log tail:\n{self.operator.log()[-3000:]}") from None

    def jobs(self, name: str) -> list[str]:
        return sorted(j["metadata"]["name"] for j in self.api.list(JOBS, NS, f"alignops.io/job={name}"))

    def committed_steps(self, name: str, stage: str) -> list[int]:
        prefix = f"{PREFIX}/{NS}/{name}/{stage}/"
        return sorted(int(k[len(prefix):].split("/")[0].split("-")[1]) for k in s3_keys(self.endpoint, BUCKET, prefix)
                      if k.endswith("/manifest.json") and k[len(prefix):].startswith("checkpoint-"))

    def pod_records(self, job_name: str) -> list[dict]:
        runs = self.agent.pods_of(job_name, NS)
        assert runs, f"no pod of {job_name}"
        path = runs[-1].dir / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("operator-e2e")
    with running_moto_server(workdir / "moto.log") as endpoint:
        make_bucket(endpoint, BUCKET)
        api = start_api(workdir / "api")
        agent = NodeAgent(api, workdir=workdir / "agent", env=pod_env()).start()
        create_storage_secret(api, NS)
        settings = {
            "default_storage_uri": f"s3://{BUCKET}/{PREFIX}",
            "default_storage_endpoint": endpoint,
            "default_storage_secret": STORAGE_SECRET,
            # every pod of the emulator shares one network namespace: no fixed metrics port
            "stage_metrics_port": "0",
            "resync_seconds": "5",
            "stage_grace_seconds": "60",
            "default_memory": "2Gi",
        }
        cluster = Cluster(api, agent, endpoint, settings, workdir)
        cluster.start_operator()
        try:
            yield cluster
        finally:
            if cluster.operator is not None:
                cluster.operator.stop()
            agent.stop()
            assert not agent.errors, agent.errors
            assert not api.emulator.internal_errors, api.emulator.internal_errors
            api.stop()


def ci_copy(name: str, steps: int = 6, checkpoint_every: int = 3, **stage_extra) -> dict:
    """pipelines/quickstart.yaml, CI-sized: fewer steps and examples, a small held-out set."""
    document = yaml.safe_load((REPO / "pipelines" / "quickstart.yaml").read_text())
    document["metadata"]["name"] = name
    document["spec"]["stages"] = document["spec"]["stages"][:1]  # its sft stage only (the rl stage follows it)
    stage = document["spec"]["stages"][0]
    stage["hyperparameters"].update(maxSteps=steps, checkpointEvery=checkpoint_every, logEvery=1, evalSize=8, warmupSteps=1)
    stage["datasets"]["train"]["size"] = 200
    stage.update(stage_extra)
    return document


def write(cluster: Cluster, document: dict) -> Path:
    path = cluster.workdir / f"{document['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_quickstart_succeeds_and_an_operator_restart_creates_no_duplicate(cluster: Cluster):
    api = cluster.api
    apply_manifest(api, write(cluster, ci_copy("quickstart")), NS)
    # killed at once (before, while or after it acts on the new job), and again mid-run: the
    # stage's pod is running. No chance to clean up either time.
    cluster.operator.kill()
    cluster.start_operator()
    wait_until(lambda: any(r.phase == "Running" for r in cluster.agent.pods_of("quickstart-sft-a1", NS)), 60,
               message=lambda: dump(api, "quickstart", NS))
    cluster.operator.kill()
    cluster.start_operator()
    status = cluster.wait_status("quickstart", lambda s: s.get("phase") in ("Succeeded", "Failed"), 120, "quickstart to finish")
    assert status["phase"] == "Succeeded", dump(api, "quickstart", NS)
    assert cluster.jobs("quickstart") == ["quickstart-sft-a1"]  # one Job, never a second
    sft = status["stages"][0]
    assert (sft["phase"], sft["attempts"], sft["failures"]) == ("Succeeded", 1, 0)
    # the checkpoint is committed in S3: its manifest (written last) exists
    uri = sft["checkpointUri"]
    assert uri == f"s3://{BUCKET}/{PREFIX}/{NS}/quickstart/sft/checkpoint-6" == status["outputModel"]
    assert f"{PREFIX}/{NS}/quickstart/sft/checkpoint-6/manifest.json" in s3_keys(cluster.endpoint, BUCKET, f"{PREFIX}/{NS}/quickstart/")
    assert sft["metrics"]["steps"] == 6
    assert status["observedGeneration"] == 1
    table = run_kubectl(api, "get", "aj", namespace=NS)
    assert table.returncode == 0, table.stderr
    row = next(line.split() for line in table.stdout.splitlines() if line.startswith("quickstart "))
    assert row[:3] == ["quickstart", "Succeeded", "sft"], table.stdout
    # Events go out after the status write: wait for the last one. An Event queued when the operator
    # was killed is lost (Events are best effort); none is doubled
    wait_until(lambda: "Succeeded" in [e["reason"] for e in events_of(api, "quickstart", NS)], 20)
    reasons = [e["reason"] for e in events_of(api, "quickstart", NS)]
    assert reasons.count("StageStarted") <= 1 and "StageSucceeded" in reasons and "Succeeded" in reasons
    # the restarted operator serves metrics and health
    assert cluster.operator.healthz()[0] == 200
    assert 'alignops_jobs{aj_namespace="default",phase="Succeeded"} 1.0' in cluster.operator.metrics()
    # kopf keeps no state on the object: no finalizer, no bookkeeping annotations
    meta = api.get(AJ, NS, "quickstart")["metadata"]
    assert not meta.get("finalizers") and not [k for k in meta.get("annotations") or {} if "kopf" in k]
    # owner references: the children belong to the AlignmentJob
    uid = api.get(AJ, NS, "quickstart")["metadata"]["uid"]
    owners = api.get(JOBS, NS, "quickstart-sft-a1")["metadata"]["ownerReferences"]
    assert [(o["kind"], o["uid"], o.get("controller")) for o in owners] == [("AlignmentJob", uid, True)]


def test_a_stage_failing_once_resumes_from_its_checkpoint(cluster: Cluster):
    # 60 steps: the kill, on seeing the first commit, lands long before the run could end
    apply_manifest(cluster.api, ci_copy("flaky", steps=60, checkpoint_every=10), NS)
    wait_until(lambda: cluster.committed_steps("flaky", "sft"), 90, interval=0.1,
               message=lambda: dump(cluster.api, "flaky", NS))
    run = next(r for r in cluster.agent.pods_of("flaky-sft-a1", NS) if r.process is not None)
    os.killpg(run.process.pid, signal.SIGKILL)  # a crash after a committed checkpoint
    status = cluster.wait_status("flaky", lambda s: s["stages"][0]["attempts"] == 2, 60, "a second attempt")
    resumed_from = max(cluster.committed_steps("flaky", "sft"))
    assert 10 <= resumed_from < 60
    sft = status["stages"][0]
    assert sft["failures"] == 1
    failed = [e["message"] for e in events_of(cluster.api, "flaky", NS) if e["reason"] == "AttemptFailed"]
    assert failed and "exit code 137" in failed[0], failed
    status = cluster.wait_status("flaky", lambda s: s.get("phase") in ("Succeeded", "Failed"), 120, "flaky to finish")
    assert status["phase"] == "Succeeded", dump(cluster.api, "flaky", NS)
    # attempt 2 counted on from the checkpoint: its first logged step follows the committed one
    steps = [r["step"] for r in cluster.pod_records("flaky-sft-a2") if "step" in r and "loss" in r]
    assert steps[0] == resumed_from + 1 and steps[-1] == 60, steps
    assert cluster.jobs("flaky") == ["flaky-sft-a1", "flaky-sft-a2"]
    wait_until(lambda: "Succeeded" in [e["reason"] for e in events_of(cluster.api, "flaky", NS)], 20)
    reasons = [e["reason"] for e in events_of(cluster.api, "flaky", NS)]
    assert reasons.count("StageStarted") == 2 and reasons.count("AttemptFailed") == 1 and "Succeeded" in reasons


def test_exit_78_fails_at_once_with_its_message_and_ttl_deletes_the_job(cluster: Cluster):
    document = ci_copy("misconfigured")
    del document["spec"]["stages"][0]["datasets"]  # valid manifest; the sft workload needs data: exit 78
    document["spec"]["ttlSecondsAfterFinished"] = 5
    apply_manifest(cluster.api, document, NS)
    status = cluster.wait_status("misconfigured", lambda s: s.get("phase") == "Failed", 90, "misconfigured to fail")
    failed = condition(status, "Failed")
    assert failed["reason"] == "ConfigurationError"
    assert "datasets.train is required" in failed["message"]
    assert status["stages"][0]["attempts"] == 1  # no retry
    assert cluster.jobs("misconfigured") == ["misconfigured-sft-a1"]
    finished = time.monotonic()
    cluster.api.wait_gone(AJ, NS, "misconfigured", timeout=30)
    assert time.monotonic() - finished < 30  # ttl 5 s; the bound only catches a TTL that never fires
    # deleting the AlignmentJob deleted its children (owner references)
    wait_until(lambda: not cluster.jobs("misconfigured") and not cluster.api.list(PODS, NS, "alignops.io/job=misconfigured"), 20)


def test_unschedulable_and_image_pull_failures_show_within_seconds(cluster: Cluster):
    cluster.agent.faults.unschedulable(r"^no-gpu-")
    cluster.agent.faults.image_pull(r"^bad-image-")
    try:
        no_gpu = ci_copy("no-gpu")
        no_gpu["spec"]["stages"][0]["resources"] = {"gpus": 1}
        bad_image = ci_copy("bad-image")
        bad_image["spec"]["stages"][0]["resources"] = {"image": "registry.example/missing:1"}
        started = time.monotonic()
        apply_manifest(cluster.api, no_gpu, NS)
        apply_manifest(cluster.api, bad_image, NS)
        unschedulable = cluster.wait_status("no-gpu", lambda s: condition(s, "Progressing").get("reason") == "Unschedulable",
                                            30, "Unschedulable")
        pull = cluster.wait_status("bad-image", lambda s: condition(s, "Progressing").get("reason") == "ImagePullBackOff",
                                   30, "ImagePullBackOff")
        assert time.monotonic() - started < 30
        assert "Insufficient nvidia.com/gpu" in condition(unschedulable, "Progressing")["message"]
        assert "registry.example/missing:1" in condition(pull, "Progressing")["message"]
        # the Event goes out after the condition is written
        wait_until(lambda: ("Warning", "Unschedulable") in [(e["type"], e["reason"]) for e in events_of(cluster.api, "no-gpu", NS)], 20)
    finally:
        cluster.agent.faults.clear()
        for name in ("no-gpu", "bad-image"):
            run_kubectl(cluster.api, "delete", "aj", name, "--wait=false", namespace=NS)
    for name in ("no-gpu", "bad-image"):
        cluster.api.wait_gone(AJ, NS, name, timeout=20)
        wait_until(lambda: not cluster.jobs(name), 20, message=f"the Jobs of {name} to be garbage-collected")


def test_suspend_checkpoints_and_resume_continues(cluster: Cluster):
    # 400 steps: suspended at step 3, the run is still going when the SIGTERM arrives, even on a fast CPU
    apply_manifest(cluster.api, ci_copy("pausable", steps=400, checkpoint_every=1000), NS)
    wait_until(lambda: any(r.phase == "Running" for r in cluster.agent.pods_of("pausable-sft-a1", NS))
               and len(cluster.pod_records("pausable-sft-a1")) >= 3, 90, interval=0.1,
               message=lambda: dump(cluster.api, "pausable", NS))
    patch = run_kubectl(cluster.api, "patch", "aj", "pausable", "--type=merge", "-p", '{"spec":{"suspend":true}}', namespace=NS)
    assert patch.returncode == 0, patch.stderr
    status = cluster.wait_status("pausable", lambda s: s.get("phase") == "Suspended", 20, "Suspended")
    assert condition(status, "Suspended")["status"] == "True"
    wait_until(lambda: cluster.api.get(JOBS, NS, "pausable-sft-a1") is None, 20)
    # the stopped run committed a checkpoint on SIGTERM (not at a checkpointEvery multiple)
    wait_until(lambda: not any(not r.finished for r in cluster.agent.pods_of("pausable-sft-a1", NS)), 60)
    stopped_at = max(cluster.committed_steps("pausable", "sft"))
    assert 0 < stopped_at < 400
    patch = run_kubectl(cluster.api, "patch", "aj", "pausable", "--type=merge", "-p", '{"spec":{"suspend":false}}', namespace=NS)
    assert patch.returncode == 0, patch.stderr
    status = cluster.wait_status("pausable", lambda s: s.get("phase") in ("Succeeded", "Failed"), 150, "pausable to finish")
    assert status["phase"] == "Succeeded", dump(cluster.api, "pausable", NS)
    sft = status["stages"][0]
    assert (sft["attempts"], sft["failures"]) == (2, 0)
    steps = [r["step"] for r in cluster.pod_records("pausable-sft-a2") if "step" in r and "loss" in r]
    assert steps[0] == stopped_at + 1 and steps[-1] == 400
    reasons = [e["reason"] for e in events_of(cluster.api, "pausable", NS)]
    assert "Suspended" in reasons and "Resumed" in reasons


def test_an_invalid_manifest_is_invalid_spec_naming_the_field(cluster: Cluster):
    document = ci_copy("typo")
    document["spec"]["stages"][0]["hyperparameters"]["learningRat"] = 0.1
    apply_manifest(cluster.api, document, NS)
    status = cluster.wait_status("typo", lambda s: s.get("phase") == "Failed", 15, "InvalidSpec")
    failed = condition(status, "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert "spec.stages[0].hyperparameters.learningRat" in failed["message"]
    assert cluster.jobs("typo") == []
    # fixing the manifest revives it (it would now run: remove it instead, the module is long enough)
    run_kubectl(cluster.api, "delete", "aj", "typo", "--wait=false", namespace=NS)
