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
import subprocess
import sys
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
from s3_fixtures import free_port, running_moto_server

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

    def pod_records(self, job_name: str, index: int | None = None) -> list[dict]:
        """The metrics records of a Job's newest pod (of completion index ``index``)."""
        runs = [r for r in self.agent.pods_of(job_name, NS) if index is None or r.index == index]
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
            # runs across nodes: their pods share this machine's network, so a port of their own,
            # and a short rendezvous timeout for the test of one that never completes
            "rendezvous_port": str(free_port()),
            "rendezvous_timeout_seconds": "20",
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


# -- a stage across nodes: an Indexed Job of one pod per node, all or nothing -----------------------------

def _one_node_two_processes(document: dict, workdir: Path) -> tuple[subprocess.Popen, Path]:
    """The same stage as one pod with two processes would run it (``resources.gpus: 2`` on the CPU:
    two gloo workers), started here as ``alignops run`` starts a stage: the baseline."""
    from alignops.api import parse_job
    from alignops.planner import Defaults, initial_status, resolve_run

    document = json.loads(json.dumps(document))
    document["spec"]["stages"][0]["resources"] = {"gpus": 2}
    job = parse_job(document)
    config = resolve_run(job, initial_status(job), "sft", 1, Defaults(storage_uri=f"file://{workdir / 'store'}"))
    assert (config.distributed.nodes, config.distributed.processes_per_node) == (1, 2)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json())
    env = {**os.environ, **pod_env(), "ALIGNOPS_METRICS_LOG": str(workdir / "metrics.jsonl"),
           "ALIGNOPS_RESULT_PATH": str(workdir / "result.json"), "ALIGNOPS_SCRATCH": str(workdir)}
    process = subprocess.Popen([sys.executable, "-m", "alignops.workloads", str(workdir / "config.json")], env=env,
                               stdout=subprocess.DEVNULL, stderr=open(workdir / "stderr.log", "wb"), start_new_session=True)
    return process, workdir / "metrics.jsonl"


def _losses(records: list[dict]) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records if "loss" in r and "step" in r}


def test_a_stage_on_two_nodes_trains_like_two_processes_on_one_and_a_killed_pod_retries_every_node(cluster: Cluster):
    """2 nodes x 1 process (two pods of one Indexed Job, meeting at index 0's DNS name) learn what
    1 node x 2 processes learns, step for step. SIGKILL of node 1's pod fails the whole attempt;
    the operator retries both pods from the last checkpoint, one extra attempt, no duplicate Job."""
    document = ci_copy("gang", steps=60, checkpoint_every=10, resources={"nodes": 2})
    baseline, baseline_log = _one_node_two_processes(document, cluster.workdir / "gang-baseline")
    try:
        apply_manifest(cluster.api, document, NS)
        wait_until(lambda: cluster.committed_steps("gang", "sft"), 150, interval=0.1,
                   message=lambda: dump(cluster.api, "gang", NS) + cluster.agent.logs(NS, cluster.agent.pods_of("gang-sft-a1", NS)[0].name)[-3000:])
        node1 = next(r for r in cluster.agent.pods_of("gang-sft-a1", NS) if r.index == 1 and r.process is not None)
        os.killpg(node1.process.pid, signal.SIGKILL)  # node 1 crashes after a commit
        status = cluster.wait_status("gang", lambda s: s["stages"][0]["attempts"] == 2, 90, "a second attempt")
        resumed_from = max(cluster.committed_steps("gang", "sft"))
        assert 10 <= resumed_from < 60
        sft = status["stages"][0]
        assert (sft["failures"], sft["gpus"]) == (1, "2x0")
        failed = [e["message"] for e in events_of(cluster.api, "gang", NS) if e["reason"] == "AttemptFailed"]
        assert failed and "node 1 of 2" in failed[0] and "exit code 137" in failed[0], failed
        status = cluster.wait_status("gang", lambda s: s.get("phase") in ("Succeeded", "Failed"), 150, "gang to finish")
        assert status["phase"] == "Succeeded", dump(cluster.api, "gang", NS)
        assert baseline.wait(timeout=300) == 0, (cluster.workdir / "gang-baseline" / "stderr.log").read_text()[-3000:]
    finally:
        if baseline.poll() is None:
            os.killpg(baseline.pid, signal.SIGKILL)
    sft = status["stages"][0]
    assert (sft["attempts"], sft["failures"]) == (2, 1)
    assert sft["checkpointUri"] == f"s3://{BUCKET}/{PREFIX}/{NS}/gang/sft/checkpoint-60" and sft["metrics"]["worldSize"] == 2
    assert cluster.jobs("gang") == ["gang-sft-a1", "gang-sft-a2"]  # one Job per attempt, never a second
    # both runs on the two nodes, and the baseline on one: the same loss at every step each logged
    first, second = cluster.pod_records("gang-sft-a1", index=0), cluster.pod_records("gang-sft-a2", index=0)
    assert _losses(second) and min(_losses(second)) == resumed_from + 1 and max(_losses(second)) == 60
    ours = {**{s: v for s, v in _losses(first).items() if s <= resumed_from}, **_losses(second)}
    theirs = _losses([json.loads(line) for line in baseline_log.read_text().splitlines()])
    assert sorted(ours) == list(range(1, 61)) == sorted(theirs)
    for step_ in ours:
        assert ours[step_] == pytest.approx(theirs[step_], rel=1e-5), (step_, ours[step_], theirs[step_])
    # every logged step reports each process's own step time (the per-rank straggler series)
    assert all(len(r["rank_step_time"]) == 2 for r in second if "loss" in r)
    # the pods found index 0 by its DNS name, through the run's headless Service, owned by the job
    uid = cluster.api.get(AJ, NS, "gang")["metadata"]["uid"]
    service = cluster.api.get("v1/services", NS, "gang-sft-a2")
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"] == {"batch.kubernetes.io/job-name": "gang-sft-a2"}
    assert [(o["kind"], o["uid"]) for o in service["metadata"]["ownerReferences"]] == [("AlignmentJob", uid)]
    pods = {r.index: r for r in cluster.agent.pods_of("gang-sft-a2", NS)}
    assert pods[1].pod["spec"]["hostname"] == "gang-sft-a2-1" and pods[1].pod["spec"]["subdomain"] == "gang-sft-a2"
    table = run_kubectl(cluster.api, "get", "aj", "gang", namespace=NS)
    assert table.stdout.split("\n")[0].split()[:4] == ["NAME", "PHASE", "STAGE", "GPUS"]
    assert table.stdout.split("\n")[1].split()[:4] == ["gang", "Succeeded", "sft", "2x0"], table.stdout


def test_a_rendezvous_that_never_completes_ends_in_rendezvous_timeout_and_a_retry(cluster: Cluster):
    """Node 1's pod never gets a node: the condition names it while node 0 waits at the rendezvous;
    after the rendezvous timeout (20 s here) the attempt fails with reason RendezvousTimeout (no hang)
    and the stage is retried."""
    cluster.agent.faults.unschedulable(r"^lonely-sft-", index=1)
    try:
        document = ci_copy("lonely", resources={"nodes": 2})
        document["spec"]["stages"][0]["backoffLimit"] = 1
        apply_manifest(cluster.api, document, NS)
        waiting = cluster.wait_status("lonely", lambda s: condition(s, "Progressing").get("reason") == "Unschedulable", 60,
                                      "node 1 to be shown unschedulable")
        assert "node 1 of 2 (pod lonely-sft-a1-" in condition(waiting, "Progressing")["message"]
        status = cluster.wait_status("lonely", lambda s: s["stages"][0].get("reason") == "RendezvousTimeout", 120,
                                     "the rendezvous to time out")
        sft = status["stages"][0]
        assert (sft["phase"], sft["attempts"], sft["failures"]) == ("Retrying", 1, 1)
        assert "did not complete in 20 s" in sft["message"] and "1/2 clients joined" in sft["message"], sft["message"]
        progressing = condition(status, "Progressing")
        assert progressing["reason"] == "RendezvousTimeout" and "retrying in 10 s from the last checkpoint" in progressing["message"]
        cluster.wait_status("lonely", lambda s: s["stages"][0]["attempts"] == 2, 60, "the retry")
        # the status counts the attempt as the operator creates its Job: wait for the Job itself
        wait_until(lambda: cluster.jobs("lonely") == ["lonely-sft-a1", "lonely-sft-a2"], 30, message="the retry's Job (and no other)")
    finally:
        cluster.agent.faults.clear()
        run_kubectl(cluster.api, "delete", "aj", "lonely", "--wait=false", namespace=NS)
    cluster.api.wait_gone(AJ, NS, "lonely", timeout=20)
    wait_until(lambda: not cluster.jobs("lonely") and not cluster.api.list("v1/services", NS, "alignops.io/job=lonely"), 30,
               message="the children of lonely to be garbage-collected")
