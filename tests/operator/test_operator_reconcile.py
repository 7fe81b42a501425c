"""reconcile(): from an AlignmentJob and its observed children to a status and actions, with no
cluster. Children are given in the API's own shapes (as a kubelet and the Job controller write
them) and go through the same views the operator's indexes keep."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone

import pytest
from operator_manifests import job_manifest, stage_manifest

from alignops.operator.observe import JobView, PodView, pod_outcome
from alignops.operator.reconcile import (
    RUN_RULES,
    CreateError,
    CreateRun,
    DeleteAlignmentJob,
    DeleteRun,
    Observed,
    Progress,
    RunView,
    match_run_rule,
    merge_patch,
    reconcile,
)

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


def ts(seconds: float = 0) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def job_obj(name: str, stage: str = "sft", attempt: int = 1, created: float = 0, conditions: list | None = None,
            suspend: bool = False, aj: str = "demo", deleting: bool = False, nodes: int = 1) -> JobView:
    meta = {"name": name, "uid": f"uid-{name}", "creationTimestamp": ts(created),
            "labels": {"alignops.io/job": aj, "alignops.io/stage": stage, "alignops.io/attempt": str(attempt)}}
    if deleting:
        meta["deletionTimestamp"] = ts(created + 1)
    spec = {"suspend": suspend}
    if nodes > 1:  # a run across nodes: an Indexed Job, one pod per node
        spec.update(completionMode="Indexed", completions=nodes, parallelism=nodes)
    return JobView.from_body({"metadata": meta, "spec": spec, "status": {"conditions": conditions or []}})


def failed_condition(reason: str = "BackoffLimitExceeded", message: str = "Job has reached the specified backoff limit") -> list:
    return [{"type": "Failed", "status": "True", "reason": reason, "message": message}]


def pod_obj(job: str, stage: str = "sft", attempt: int = 1, phase: str = "Running", state: dict | None = None,
            conditions: list | None = None, created: float = 1, deleting: bool = False, aj: str = "demo",
            index: int | None = None, **status) -> PodView:
    meta = {"name": f"{job}-x7k2p" if index is None else f"{job}-{index}-x7k2p", "creationTimestamp": ts(created),
            "labels": {"job-name": job, "alignops.io/job": aj, "alignops.io/stage": stage, "alignops.io/attempt": str(attempt)}}
    if index is not None:  # as the Job controller labels (and annotates) an Indexed Job's pods
        meta["labels"]["batch.kubernetes.io/job-completion-index"] = str(index)
        meta["annotations"] = {"batch.kubernetes.io/job-completion-index": str(index)}
    if deleting:
        meta["deletionTimestamp"] = ts(created + 1)
    body = {"metadata": meta, "status": {"phase": phase, "podIP": "10.244.0.7", "conditions": conditions or [], **status}}
    if state is not None:
        body["status"]["containerStatuses"] = [{"name": "stage", "state": state}]
    return PodView.from_body(body)


def terminated(exit_code: int, reason: str = "Error", message: dict | str | None = None, **extra) -> dict:
    state = {"terminated": {"exitCode": exit_code, "reason": reason, **extra}}
    if message is not None:
        state["terminated"]["message"] = message if isinstance(message, str) else json.dumps(message)
    return state


def step(doc: dict, observed: Observed, settings, seconds: float = 0):
    """One reconcile at T0 + seconds; the new status is written back into ``doc`` as the executor would."""
    result = reconcile(doc, observed, settings, T0 + timedelta(seconds=seconds))
    if result.status is not None:
        doc["status"] = result.status
        doc["metadata"]["resourceVersion"] = str(int(doc["metadata"]["resourceVersion"]) + 1)
    return result


def cond(doc: dict, type_: str) -> dict:
    return next(c for c in doc["status"]["conditions"] if c["type"] == type_)


def stage(doc: dict, name: str = "sft") -> dict:
    return next(s for s in doc["status"]["stages"] if s["name"] == name)


def started(settings, doc: dict | None = None) -> dict:
    doc = doc or job_manifest()
    step(doc, Observed(), settings)
    return doc


# -- starting ------------------------------------------------------------------------------------------

def test_a_new_job_starts_its_first_stage(settings):
    doc = job_manifest()
    result = step(doc, Observed(), settings)
    assert [type(a) for a in result.actions] == [CreateRun]
    create = result.actions[0]
    assert create.name == "demo-sft-a1" and create.job["metadata"]["name"] == "demo-sft-a1"
    config = json.loads(create.configmap["data"]["config.json"])
    assert config["attempt"] == 1 and config["storage"]["uri"] == "s3://alignops-ci/root"
    assert config["stage_key"] == "ml-team/demo/sft"  # the run config's keys are snake_case (alignops.contract)
    assert doc["status"]["phase"] == "Running"
    assert doc["status"]["observedGeneration"] == 1
    assert stage(doc)["attempts"] == 1 and stage(doc)["jobName"] == "demo-sft-a1"
    assert set(stage(doc)["specFingerprint"]) == {"method", "baseModel", "inputs", "datasets", "hyperparameters"}
    assert cond(doc, "Progressing")["reason"] == "StageStarting"
    assert [(e.reason, e.type) for e in result.events] == [("StageStarted", "Normal")]
    assert [(o.kind, o.stage) for o in result.observations] == [("attempt", "sft")]


def test_reconciling_again_changes_nothing(settings):
    doc = started(settings)
    again = step(doc, Observed(jobs=(job_obj("demo-sft-a1"),)), settings, 1)
    assert again.status is None and again.actions == [] and again.events == []


def test_a_missing_job_of_a_running_stage_is_created_again_under_its_name(settings):
    # the operator wrote the status and stopped before creating the Job: no second attempt
    doc = started(settings)
    result = step(doc, Observed(), settings, 5)
    assert [a.name for a in result.actions if isinstance(a, CreateRun)] == ["demo-sft-a1"]
    assert stage(doc)["attempts"] == 1


def test_a_running_pod_shows_and_measures_time_to_first_pod(settings):
    doc = started(settings)
    pod = pod_obj("demo-sft-a1", state={"running": {"startedAt": ts(7)}})
    result = step(doc, Observed(jobs=(job_obj("demo-sft-a1", created=2),), pods=(pod,)), settings, 8)
    assert cond(doc, "Progressing")["reason"] == "StageRunning"
    assert cond(doc, "Progressing")["message"] == "stage sft attempt 1 running (pod demo-sft-a1-x7k2p)"
    # Job created at T0+2 s, container running at T0+7 s: 5 s
    assert [(o.kind, o.value) for o in result.observations] == [("first_pod", 5.0)]
    again = step(doc, Observed(jobs=(job_obj("demo-sft-a1", created=2),), pods=(pod,)), settings, 9)
    assert again.observations == [] and again.status is None


# -- outcomes ------------------------------------------------------------------------------------------

def test_success_records_checkpoint_and_starts_the_next_stage_on_it(settings):
    doc = started(settings, job_manifest(stages=[stage_manifest("sft", "sft"),
                                                 stage_manifest("sft", "polish", policy={"fromStage": "sft"})]))
    result_json = {"checkpointUri": "s3://alignops-ci/root/ml-team/demo/sft/checkpoint-6", "metrics": {"loss": 1.25}}
    pod = pod_obj("demo-sft-a1", phase="Succeeded", state=terminated(0, "Completed", result_json))
    result = step(doc, Observed(jobs=(job_obj("demo-sft-a1"),), pods=(pod,)), settings, 60)
    assert stage(doc, "sft")["phase"] == "Succeeded"
    assert stage(doc, "sft")["checkpointUri"] == result_json["checkpointUri"]
    assert stage(doc, "sft")["metrics"] == {"loss": 1.25}
    create = next(a for a in result.actions if isinstance(a, CreateRun))
    assert create.name == "demo-polish-a1"
    assert json.loads(create.configmap["data"]["config.json"])["inputs"]["policy"] == result_json["checkpointUri"]
    reasons = [e.reason for e in result.events]
    assert reasons == ["StageSucceeded", "StageStarted"]
    assert ("duration", "sft", 60.0) in [(o.kind, o.stage, o.value) for o in result.observations]


def test_last_stage_success_finishes_the_job(settings):
    doc = started(settings)
    pod = pod_obj("demo-sft-a1", phase="Succeeded", state=terminated(0, "Completed", {"checkpointUri": "s3://b/ckpt", "metrics": {}}))
    result = step(doc, Observed(jobs=(job_obj("demo-sft-a1"),), pods=(pod,)), settings, 30)
    assert doc["status"]["phase"] == "Succeeded"
    assert doc["status"]["outputModel"] == "s3://b/ckpt"
    assert cond(doc, "Succeeded")["status"] == "True"
    assert "Succeeded" in [e.reason for e in result.events]
    assert not any(isinstance(a, CreateRun) for a in result.actions)


def test_a_failed_attempt_is_retried_after_exponential_backoff(settings):
    doc = started(settings)
    pod = pod_obj("demo-sft-a1", phase="Failed", state=terminated(1, "Error", {"checkpointUri": None, "metrics": {},
                                                                             "message": "RuntimeError: CUDA error"}))
    observed = Observed(jobs=(job_obj("demo-sft-a1", conditions=failed_condition()),), pods=(pod,))
    result = step(doc, observed, settings, 100)
    assert stage(doc)["phase"] == "Retrying" and stage(doc)["failures"] == 1
    # planner.retry_delay(1) = 10 s after the failure at T0+100 s
    assert stage(doc)["retryAfter"] == ts(110)
    assert result.requeue_after == pytest.approx(10.0)
    assert cond(doc, "Progressing")["reason"] == "Error"
    assert "exit code 1" in cond(doc, "Progressing")["message"] and "CUDA error" in cond(doc, "Progressing")["message"]
    assert [e.reason for e in result.events] == ["AttemptFailed"]
    assert ("failure", "Error") in [(o.kind, o.reason) for o in result.observations]
    early = step(doc, observed, settings, 105)
    assert early.actions == [] and early.requeue_after == pytest.approx(5.0)
    later = step(doc, observed, settings, 110)
    assert [a.name for a in later.actions if isinstance(a, CreateRun)] == ["demo-sft-a2"]
    assert stage(doc)["attempts"] == 2 and stage(doc)["phase"] == "Running"


def test_backoff_limit_exhausted_fails_the_job(settings):
    doc = started(settings, job_manifest(stages=[stage_manifest("sft", "sft", backoffLimit=0)]))
    pod = pod_obj("demo-sft-a1", phase="Failed", state=terminated(1))
    step(doc, Observed(jobs=(job_obj("demo-sft-a1", conditions=failed_condition()),), pods=(pod,)), settings, 10)
    assert doc["status"]["phase"] == "Failed"
    assert cond(doc, "Failed")["reason"] == "BackoffLimitExceeded"


def test_exit_78_fails_at_once_with_the_workload_message(settings):
    doc = started(settings)
    message = "configuration error: datasets.train is required for this stage"
    pod = pod_obj("demo-sft-a1", phase="Failed", state=terminated(78, "Error", {"checkpointUri": None, "metrics": {}, "message": message}))
    result = step(doc, Observed(jobs=(job_obj("demo-sft-a1", conditions=failed_condition()),), pods=(pod,)), settings, 10)
    assert doc["status"]["phase"] == "Failed"
    assert stage(doc)["phase"] == "Failed" and stage(doc)["failures"] == 1
    assert cond(doc, "Failed")["reason"] == "ConfigurationError"
    assert message in cond(doc, "Failed")["message"]
    assert ("Warning", "ConfigurationError") in [(e.type, e.reason) for e in result.events]
    assert not any(isinstance(a, CreateRun) for a in result.actions)


def test_oom_killed_is_a_failed_attempt_with_its_reason(settings):
    doc = started(settings)
    pod = pod_obj("demo-sft-a1", phase="Failed", state=terminated(137, "OOMKilled"))
    step(doc, Observed(jobs=(job_obj("demo-sft-a1", conditions=failed_condition()),), pods=(pod,)), settings, 10)
    assert stage(doc)["reason"] == "OOMKilled" and stage(doc)["phase"] == "Retrying"
    assert cond(doc, "Progressing")["reason"] == "OOMKilled"


def test_exit_143_resumes_without_counting_a_failure(settings):
    doc = started(settings)
    pod = pod_obj("demo-sft-a1", phase="Failed", state=terminated(143, "Error", {"checkpointUri": None, "metrics": {},
                                                                               "message": "stopped at step 40"}))
    result = step(doc, Observed(jobs=(job_obj("demo-sft-a1", conditions=failed_condition()),), pods=(pod,)), settings, 10)
    assert stage(doc)["failures"] == 0
    assert stage(doc)["attempts"] == 2 and stage(doc)["jobName"] == "demo-sft-a2"
    assert [a.name for a in result.actions if isinstance(a, CreateRun)] == ["demo-sft-a2"]
    assert not [o for o in result.observations if o.kind == "failure"]


def test_deadline_exceeded_is_a_failure_even_if_the_pod_checkpointed(settings):
    doc = started(settings, job_manifest(stages=[stage_manifest("sft", "sft", activeDeadlineSeconds=60)]))
    pod = pod_obj("demo-sft-a1", phase="Failed", state=terminated(143))
    job = job_obj("demo-sft-a1", conditions=failed_condition("DeadlineExceeded", "Job was active longer than specified deadline"))
    step(doc, Observed(jobs=(job,), pods=(pod,)), settings, 70)
    assert stage(doc)["reason"] == "DeadlineExceeded" and stage(doc)["failures"] == 1
    assert "activeDeadlineSeconds (60 s)" in cond(doc, "Progressing")["message"]


def test_an_evicted_pod_is_a_failed_attempt_with_the_pod_reason(settings):
    doc = started(settings)
    pod = pod_obj("demo-sft-a1", phase="Failed", reason="Evicted", message="The node was low on resource: memory.")
    step(doc, Observed(jobs=(job_obj("demo-sft-a1", conditions=failed_condition()),), pods=(pod,)), settings, 10)
    assert stage(doc)["reason"] == "Evicted"
    assert "low on resource" in stage(doc)["message"]


# -- pods that cannot start ----------------------------------------------------------------------------

def test_unschedulable_pod_is_shown_with_the_scheduler_message(settings):
    doc = started(settings)
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    pod = pod_obj("demo-sft-a1", phase="Pending",
                  conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}])
    result = step(doc, Observed(jobs=(job_obj("demo-sft-a1"),), pods=(pod,)), settings, 3)
    progressing = cond(doc, "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "Unschedulable")
    assert progressing["message"] == f"stage sft attempt 1: {message}"
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "Unschedulable")]


@pytest.mark.parametrize("waiting", ["ErrImagePull", "ImagePullBackOff"])
def test_image_pull_failures_are_shown_as_image_pull_back_off(settings, waiting):
    doc = started(settings)
    pod = pod_obj("demo-sft-a1", phase="Pending", state={"waiting": {"reason": waiting, "message": 'pull "x:1": not found'}})
    step(doc, Observed(jobs=(job_obj("demo-sft-a1"),), pods=(pod,)), settings, 3)
    assert cond(doc, "Progressing")["reason"] == "ImagePullBackOff"
    assert 'pull "x:1": not found' in cond(doc, "Progressing")["message"]


def test_a_kueue_suspended_job_is_queued(settings):
    doc = job_manifest()
    doc["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a"}
    result = step(doc, Observed(), settings)
    assert result.actions[0].job["spec"]["suspend"] is True
    step(doc, Observed(jobs=(job_obj("demo-sft-a1", suspend=True),)), settings, 2)
    assert cond(doc, "Progressing")["reason"] == "Queued"
    assert "Kueue (queue team-a)" in cond(doc, "Progressing")["message"]


def test_a_permanently_refused_job_fails_the_stage(settings):
    doc = started(settings)
    errors = {"demo-sft-a1": CreateError('422 Invalid: Job.batch "demo-sft-a1" is invalid', permanent=True)}
    step(doc, Observed(create_errors=errors), settings, 1)
    assert doc["status"]["phase"] == "Failed"
    assert cond(doc, "Failed")["reason"] == "JobRejected"


def test_a_temporary_create_error_is_shown_and_retried(settings):
    doc = started(settings)
    result = step(doc, Observed(create_errors={"demo-sft-a1": CreateError("403 Forbidden: exceeded quota")}), settings, 1)
    assert cond(doc, "Progressing")["reason"] == "CreateFailed"
    assert [a.name for a in result.actions if isinstance(a, CreateRun)] == ["demo-sft-a1"]
    assert result.requeue_after == 10.0


# -- the run rules: one case per row of RUN_RULES ---------------------------------------------------------

RUN = "demo-sft-a1"  # the current run of the started quickstart-like job
_running_pod = pod_obj(RUN, state={"running": {"startedAt": ts(5)}})
_failed_pod = pod_obj(RUN, phase="Failed", state=terminated(1))
_complete = [{"type": "Complete", "status": "True"}]
# row -> (what is seen of the run, what the stage shows after it: phase, reason, action types, requeue_after).
# A Retrying stage waits planner.retry_delay(1) = 10 s.
RUN_CASES = {
    "pod outlived its Job": (Observed(pods=(_failed_pod,)), ("Retrying", "Error", [], 10.0)),
    "Job gone, pod stopping": (Observed(pods=(_running_pod,)), ("Running", None, [], None)),
    "Job refused": (Observed(create_errors={RUN: CreateError("422 Invalid", permanent=True)}), ("Failed", "JobRejected", [], None)),
    "Job missing": (Observed(), ("Running", None, [CreateRun], None)),
    # its pod's end is not read while the Job goes: the next pass sees the Job gone
    "Job being deleted": (Observed(jobs=(job_obj(RUN, deleting=True),), pods=(_failed_pod,)), ("Running", None, [], None)),
    "deadline exceeded": (Observed(jobs=(job_obj(RUN, conditions=failed_condition("DeadlineExceeded")),),
                                   pods=(pod_obj(RUN, phase="Failed", state=terminated(143)),)),
                          ("Retrying", "DeadlineExceeded", [], 10.0)),
    "pod finished": (Observed(jobs=(job_obj(RUN, conditions=failed_condition()),),
                              pods=(pod_obj(RUN, phase="Failed", state=terminated(137, "OOMKilled")),)),
                     ("Retrying", "OOMKilled", [], 10.0)),
    "Job finished, pod gone": (Observed(jobs=(job_obj(RUN, conditions=_complete),)), ("Retrying", "ResultLost", [], 10.0)),
    "Job finished, pod status pending": (Observed(jobs=(job_obj(RUN, conditions=_complete),), pods=(_running_pod,)),
                                         ("Running", None, [], 2.0)),
    # node 1 of 2 was killed at T0+8 s, node 0 still runs: its end gets GANG_SETTLE_SECONDS (5 s) to arrive
    "a node failed, the others stopping": (Observed(jobs=(job_obj(RUN, nodes=2),), pods=(
        pod_obj(RUN, index=0, state={"running": {"startedAt": ts(5)}}),
        pod_obj(RUN, index=1, phase="Failed", state=terminated(137, finishedAt=ts(8))))), ("Running", None, [], 3.0)),
    "running": (Observed(jobs=(job_obj(RUN),), pods=(_running_pod,)), ("Running", None, [], None)),
}


@pytest.mark.parametrize("rule", RUN_RULES, ids=[r.name for r in RUN_RULES])
def test_each_run_rule_is_the_first_match_for_its_case_and_acts(settings, rule):
    observed, (phase, reason, actions, requeue_after) = RUN_CASES[rule.name]
    assert match_run_rule(RunView.of(RUN, observed)) is rule
    doc = started(settings)
    result = step(doc, observed, settings, 10)
    assert (stage(doc)["phase"], stage(doc).get("reason")) == (phase, reason)
    assert [type(a) for a in result.actions] == actions
    assert result.requeue_after == (pytest.approx(requeue_after) if requeue_after is not None else None)


def test_every_run_rule_has_a_case():
    names = [r.name for r in RUN_RULES]
    assert len(set(names)) == len(names), names
    assert set(RUN_CASES) == set(names)


# -- stalls, suspend, TTL, cleanup ---------------------------------------------------------------------

def test_a_stalled_pod_is_stopped_and_retried(settings):
    doc = started(settings, job_manifest(stages=[stage_manifest("sft", "sft", progressDeadlineSeconds=300)]))
    pod = pod_obj("demo-sft-a1", state={"running": {"startedAt": ts(5)}})
    observed = Observed(jobs=(job_obj("demo-sft-a1"),), pods=(pod,), progress={pod.name: Progress(step=40, stale_seconds=299)})
    fresh = step(doc, observed, settings, 400)
    assert not any(isinstance(a, DeleteRun) for a in fresh.actions)
    assert fresh.requeue_after == 30.0  # min(progress_poll_seconds 30, deadline / 2)
    observed = Observed(jobs=observed.jobs, pods=observed.pods, progress={pod.name: Progress(step=40, stale_seconds=301)})
    result = step(doc, observed, settings, 430)
    assert [(a.name, a.reason) for a in result.actions if isinstance(a, DeleteRun)] == [("demo-sft-a1", "Stalled")]
    assert stage(doc)["reason"] == "Stalled" and stage(doc)["phase"] == "Retrying"
    assert "last step 40" in stage(doc)["message"]


def test_suspend_stops_the_run_and_resume_waits_for_its_pod(settings):
    doc = started(settings)
    running = pod_obj("demo-sft-a1", state={"running": {"startedAt": ts(5)}})
    doc["spec"]["suspend"] = True
    doc["metadata"]["generation"] = 2
    result = step(doc, Observed(jobs=(job_obj("demo-sft-a1"),), pods=(running,)), settings, 20)
    assert [(a.name, a.reason) for a in result.actions if isinstance(a, DeleteRun)] == [("demo-sft-a1", "Suspended")]
    assert doc["status"]["phase"] == "Suspended" and stage(doc)["phase"] == "Suspended"
    assert cond(doc, "Suspended")["status"] == "True"
    assert "Suspended" in [e.reason for e in result.events]
    doc["spec"]["suspend"] = False
    doc["metadata"]["generation"] = 3
    stopping = pod_obj("demo-sft-a1", state={"running": {"startedAt": ts(5)}}, deleting=True)
    waiting = step(doc, Observed(pods=(stopping,)), settings, 25)
    assert waiting.actions == [] and cond(doc, "Progressing")["reason"] == "WaitingForPreviousRun"
    resumed = step(doc, Observed(), settings, 40)
    assert [a.name for a in resumed.actions if isinstance(a, CreateRun)] == ["demo-sft-a2"]
    assert stage(doc)["failures"] == 0 and doc["status"]["phase"] == "Running"
    assert "Resumed" in [e.reason for e in resumed.events]


def test_ttl_deletes_a_finished_job_when_it_expires(settings):
    doc = started(settings, job_manifest(ttlSecondsAfterFinished=30))
    pod = pod_obj("demo-sft-a1", phase="Succeeded", state=terminated(0, "Completed", {"checkpointUri": "s3://b/c", "metrics": {}}))
    observed = Observed(jobs=(job_obj("demo-sft-a1"),), pods=(pod,))
    finished = step(doc, observed, settings, 100)
    assert finished.requeue_after == pytest.approx(30.0)
    assert not any(isinstance(a, DeleteAlignmentJob) for a in finished.actions)
    expired = step(doc, observed, settings, 130)
    assert [type(a) for a in expired.actions] == [DeleteAlignmentJob]
    assert [e.reason for e in expired.events] == ["TTLExpired"]


def test_only_the_newest_failed_jobs_are_kept(settings):
    doc = started(settings, job_manifest(stages=[stage_manifest("sft", "sft", backoffLimit=10)]))
    doc["status"]["stages"][0].update(attempts=5, failures=4, jobName="demo-sft-a5")
    jobs = tuple(job_obj(f"demo-sft-a{n}", attempt=n, conditions=failed_condition()) for n in range(1, 5)) + (job_obj("demo-sft-a5", attempt=5),)
    result = step(doc, Observed(jobs=jobs), settings, 10)
    # failed_jobs_kept = 3: attempts 4, 3, 2 stay; attempt 1 goes
    assert sorted(a.name for a in result.actions if isinstance(a, DeleteRun)) == ["demo-sft-a1"]


# -- spec: invalid, refused changes, retry --------------------------------------------------------------

def test_an_invalid_manifest_fails_with_invalid_spec_naming_the_field(settings):
    doc = job_manifest(stages=[stage_manifest("sft", "sft", hyperparameters={"learningRat": 0.1})])
    result = step(doc, Observed(), settings)
    assert doc["status"]["phase"] == "Failed"
    failed = cond(doc, "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert "spec.stages[0].hyperparameters.learningRat" in failed["message"]
    assert result.actions == []
    assert ("Warning", "InvalidSpec") in [(e.type, e.reason) for e in result.events]


def test_local_storage_is_refused_in_a_cluster(settings):
    doc = job_manifest(storage={"uri": "file:///tmp/runs"})
    step(doc, Observed(), settings)
    assert cond(doc, "Failed")["reason"] == "InvalidSpec"
    assert cond(doc, "Failed")["message"].startswith("spec.storage.uri: local paths (file://)")


def test_no_storage_anywhere_is_invalid(settings):
    doc = job_manifest()
    step(doc, Observed(), settings.model_copy(update={"default_storage_uri": None}))
    assert "spec.storage: required" in cond(doc, "Failed")["message"]


def test_a_corrected_spec_revives_an_invalid_job(settings):
    doc = job_manifest(storage={"uri": "file:///tmp/runs"})
    step(doc, Observed(), settings)
    doc["spec"]["storage"] = {"uri": "s3://fixed-bucket/runs"}
    doc["metadata"]["generation"] = 2
    result = step(doc, Observed(), settings, 10)
    assert [a.name for a in result.actions if isinstance(a, CreateRun)] == ["demo-sft-a1"]
    assert doc["status"]["phase"] == "Running" and not any(c["type"] == "Failed" for c in doc["status"]["conditions"])


def test_changing_a_started_stage_reruns_it_from_its_inputs_under_a_new_key(settings):
    doc = started(settings, job_manifest(stages=[stage_manifest("sft", "sft", backoffLimit=1)]))
    pod = pod_obj("demo-sft-a1", phase="Failed", state=terminated(1))
    observed = Observed(jobs=(job_obj("demo-sft-a1", conditions=failed_condition()),), pods=(pod,))
    step(doc, observed, settings, 10)  # attempt 1 failed: retry after 10 s
    doc["spec"]["stages"][0]["hyperparameters"] = {"learningRate": 0.5}
    doc["metadata"]["generation"] = 2
    changed = step(doc, observed, settings, 12)  # no backoff: the old attempts were for another spec
    assert doc["status"]["observedGeneration"] == 2
    create = next(a for a in changed.actions if isinstance(a, CreateRun))
    config = json.loads(create.configmap["data"]["config.json"])
    # a new Job name (attempts keep counting) and a new key: nothing of the old spec is resumed
    assert create.name == "demo-sft-a2" and config["stage_key"] == "ml-team/demo/sft/rerun-1"
    assert config["hyperparameters"]["learningRate"] == 0.5
    assert (stage(doc)["rerun"], stage(doc)["failures"], stage(doc)["phase"]) == (1, 0, "Running")
    rerun = next(e for e in changed.events if e.reason == "StageRerun")
    assert rerun.message == "stage sft reruns from its inputs: its hyperparameters changed since it ran"
    again = step(doc, Observed(jobs=observed.jobs + (job_obj("demo-sft-a2", attempt=2),), pods=(pod,)), settings, 13)
    assert again.status is None and again.actions == []  # level-based: recorded once, nothing more to do


def test_a_change_to_a_running_stage_stops_its_run_and_starts_the_new_one_after(settings):
    doc = started(settings)
    alive = pod_obj("demo-sft-a1", state={"running": {"startedAt": ts(5)}})
    running = Observed(jobs=(job_obj("demo-sft-a1"),), pods=(alive,))
    step(doc, running, settings, 10)
    doc["spec"]["model"]["architecture"]["layers"] = 3
    doc["metadata"]["generation"] = 2
    changed = step(doc, running, settings, 20)
    assert [(a.name, a.reason) for a in changed.actions if isinstance(a, DeleteRun)] == [("demo-sft-a1", "Superseded")]
    assert not any(isinstance(a, CreateRun) for a in changed.actions)  # two runs of a stage never overlap
    assert cond(doc, "Progressing")["reason"] == "WaitingForPreviousRun"
    assert "baseModel changed" in stage(doc)["message"]
    # the old pod ends (exit 143 after its checkpoint): its outcome is of the old spec, never recorded
    stopped = pod_obj("demo-sft-a1", phase="Failed", state=terminated(143, "Error", {"checkpointUri": "s3://old", "metrics": {"loss": 9.0}}))
    after = step(doc, Observed(jobs=(job_obj("demo-sft-a1", deleting=True),), pods=(stopped,)), settings, 30)
    assert [a.name for a in after.actions if isinstance(a, CreateRun)] == ["demo-sft-a2"]
    assert stage(doc)["metrics"] == {} and stage(doc).get("checkpointUri") is None


def test_a_finished_job_reruns_a_changed_stage_and_the_stages_after_it(settings):
    doc = started(settings, job_manifest(stages=[stage_manifest("sft", "sft"),
                                                 stage_manifest("sft", "polish", policy={"fromStage": "sft"})]))
    jobs, pods = [], []
    for name, seconds in (("sft", 10), ("polish", 20)):
        jobs.append(job_obj(f"demo-{name}-a1", stage=name, conditions=[{"type": "Complete", "status": "True"}]))
        pods.append(pod_obj(f"demo-{name}-a1", stage=name, phase="Succeeded",
                            state=terminated(0, "Completed", {"checkpointUri": f"s3://b/{name}/checkpoint-4", "metrics": {"loss": 1.0}})))
        step(doc, Observed(jobs=tuple(jobs), pods=tuple(pods)), settings, seconds)
    assert doc["status"]["phase"] == "Succeeded"
    doc["spec"]["stages"][0]["hyperparameters"] = {"learningRate": 0.01}
    doc["metadata"]["generation"] = 2
    result = step(doc, Observed(jobs=tuple(jobs), pods=tuple(pods)), settings, 30)
    assert doc["status"]["phase"] == "Running" and "completionTime" not in doc["status"]
    assert not any(c["type"] == "Succeeded" for c in doc["status"]["conditions"])
    assert doc["status"].get("outputModel") is None  # no result of the old spec is reported
    assert (stage(doc, "polish")["phase"], stage(doc, "polish")["metrics"]) == ("Pending", {})
    assert [a.name for a in result.actions if isinstance(a, CreateRun)] == ["demo-sft-a2"]
    assert [e.message for e in result.events if e.reason == "StageRerun"] == [
        "stage sft reruns from its inputs: its hyperparameters changed since it ran",
        "stage polish reruns: stage sft before it reruns"]


def test_a_stage_added_to_a_finished_job_runs(settings):
    doc = started(settings)
    job = job_obj("demo-sft-a1", conditions=[{"type": "Complete", "status": "True"}])
    pod = pod_obj("demo-sft-a1", phase="Succeeded", state=terminated(0, "Completed", {"checkpointUri": "s3://b/sft/checkpoint-4", "metrics": {}}))
    step(doc, Observed(jobs=(job,), pods=(pod,)), settings, 10)
    assert doc["status"]["phase"] == "Succeeded"
    doc["spec"]["stages"].append(stage_manifest("sft", "more", policy={"fromStage": "sft"}))
    doc["metadata"]["generation"] = 2
    result = step(doc, Observed(jobs=(job,), pods=(pod,)), settings, 20)
    assert doc["status"]["phase"] == "Running" and stage(doc)["phase"] == "Succeeded"  # sft is not rerun
    create = next(a for a in result.actions if isinstance(a, CreateRun))
    assert create.name == "demo-more-a1"
    assert json.loads(create.configmap["data"]["config.json"])["inputs"]["policy"] == "s3://b/sft/checkpoint-4"


def test_safe_changes_apply_to_the_next_attempt_and_new_stages(settings):
    doc = started(settings)
    doc["spec"]["stages"][0]["resources"] = {"cpu": "4"}
    doc["spec"]["stages"][0]["hyperparameters"] = {"logEvery": 1, "keepCheckpoints": 5}  # no result depends on them
    doc["spec"]["stages"].append(stage_manifest("sft", "more", policy={"fromStage": "sft"}))
    doc["metadata"]["generation"] = 2
    result = step(doc, Observed(jobs=(job_obj("demo-sft-a1"),)), settings, 5)
    assert doc["status"]["observedGeneration"] == 2
    assert [s["name"] for s in doc["status"]["stages"]] == ["sft", "more"]
    assert stage(doc)["rerun"] == 0 and not any(isinstance(a, DeleteRun) for a in result.actions)
    # applied: the running stage shows its own progress (its Job exists, no pod yet)
    assert (cond(doc, "Progressing")["status"], cond(doc, "Progressing")["reason"]) == ("True", "StageStarting")


def test_a_stage_inserted_before_a_started_one_runs_and_reruns_what_takes_its_output(settings):
    doc = started(settings)
    doc["spec"]["stages"].insert(0, stage_manifest("sft", "warmup"))
    doc["metadata"]["generation"] = 2
    untouched = step(doc, Observed(jobs=(job_obj("demo-sft-a1"),)), settings, 5)
    assert [s["name"] for s in doc["status"]["stages"]] == ["warmup", "sft"]
    assert stage(doc)["phase"] == "Running" and untouched.actions == []  # sft does not read warmup's output
    doc["spec"]["stages"][1]["policy"] = {"fromStage": "warmup"}
    doc["metadata"]["generation"] = 3
    moved = step(doc, Observed(jobs=(job_obj("demo-sft-a1"),)), settings, 6)
    assert [(a.name, a.reason) for a in moved.actions if isinstance(a, DeleteRun)] == [("demo-sft-a1", "Superseded")]
    assert stage(doc)["phase"] == "Pending" and "its inputs changed" in stage(doc)["message"]


def test_removing_a_running_stage_deletes_its_job(settings):
    doc = started(settings, job_manifest(stages=[stage_manifest("sft", "sft"), stage_manifest("sft", "other")]))
    running = Observed(jobs=(job_obj("demo-sft-a1"),), pods=(pod_obj("demo-sft-a1", state={"running": {}}),))
    doc["spec"]["stages"] = [doc["spec"]["stages"][1]]
    doc["metadata"]["generation"] = 2
    result = step(doc, running, settings, 5)
    assert [(a.name, a.reason) for a in result.actions if isinstance(a, DeleteRun)] == [("demo-sft-a1", "Superseded")]
    assert [s["name"] for s in doc["status"]["stages"]] == ["other"]


def test_the_retry_annotation_retries_a_failed_job_once_per_value(settings):
    doc = started(settings, job_manifest(stages=[stage_manifest("sft", "sft", backoffLimit=0)]))
    pod = pod_obj("demo-sft-a1", phase="Failed", state=terminated(1))
    observed = Observed(jobs=(job_obj("demo-sft-a1", conditions=failed_condition()),), pods=(pod,))
    step(doc, observed, settings, 10)
    assert doc["status"]["phase"] == "Failed"
    doc["metadata"]["annotations"] = {"alignops.io/retry": "1"}
    result = step(doc, observed, settings, 20)
    assert doc["status"]["retryToken"] == "1"
    assert [a.name for a in result.actions if isinstance(a, CreateRun)] == ["demo-sft-a2"]
    assert "RetryRequested" in [e.reason for e in result.events]
    failed_again = pod_obj("demo-sft-a2", attempt=2, phase="Failed", state=terminated(1))
    observed = Observed(jobs=observed.jobs + (job_obj("demo-sft-a2", attempt=2, conditions=failed_condition()),),
                        pods=(pod, failed_again))
    step(doc, observed, settings, 30)
    assert doc["status"]["phase"] == "Failed"
    same_value = step(doc, observed, settings, 40)
    assert not any(isinstance(a, CreateRun) for a in same_value.actions) and doc["status"]["phase"] == "Failed"


def test_deleting_job_is_left_to_the_garbage_collector(settings):
    doc = started(settings)
    doc["metadata"]["deletionTimestamp"] = ts(5)
    result = step(doc, Observed(), settings, 5)
    assert result.status is None and result.actions == []


# -- helpers -------------------------------------------------------------------------------------------

def test_merge_patch_nulls_removed_keys_and_replaces_lists():
    old = {"phase": "Running", "stages": [{"name": "a"}], "extra": {"x": 1, "y": 2}, "gone": 1}
    new = {"phase": "Failed", "stages": [{"name": "a"}, {"name": "b"}], "extra": {"x": 1}}
    assert merge_patch(old, new) == {"gone": None, "phase": "Failed", "stages": [{"name": "a"}, {"name": "b"}], "extra": {"y": None}}


def test_pod_outcome_reads_the_result_json_and_signals():
    ok = pod_outcome(pod_obj("j", phase="Succeeded", state=terminated(0, "Completed", {"checkpointUri": "s3://b/k", "metrics": {"loss": "0.5"}})))
    assert (ok.exit_code, ok.checkpoint_uri, ok.metrics) == (0, "s3://b/k", {"loss": 0.5})
    killed = pod_outcome(pod_obj("j", phase="Failed", state=terminated(137, "Error", signal=9)))
    assert (killed.reason, killed.message) == ("Error", "killed by signal 9")
    plain = pod_outcome(pod_obj("j", phase="Failed", state=terminated(2, "Error", "Traceback: boom")))
    assert plain.message == "Traceback: boom"  # not JSON: the message itself
    assert pod_outcome(pod_obj("j", phase="Running", state={"running": {}})) is None


def test_ttl_also_deletes_a_job_that_failed_as_invalid(settings):
    doc = job_manifest(storage={"uri": "file:///tmp/runs"}, ttlSecondsAfterFinished=60)
    first = step(doc, Observed(), settings)
    assert first.requeue_after == pytest.approx(60.0)
    expired = step(doc, Observed(), settings, 61)
    assert [type(a) for a in expired.actions] == [DeleteAlignmentJob]


@pytest.mark.skipif("rl" not in __import__("alignops.api.stages", fromlist=["STAGE_TYPES"]).STAGE_TYPES, reason="no rl stage type")
def test_a_split_rl_stage_runs_rollout_and_train_jobs_per_round(settings):
    doc = started(settings, job_manifest(stages=[stage_manifest("rl", "rl", hyperparameters={"placement": "split", "rounds": 2})]))
    assert stage(doc, "rl")["jobName"] == "demo-rl-a1-r1-rollout"
    names, observed_jobs, observed_pods = [], [], []
    expected = ["demo-rl-a2-r1-train", "demo-rl-a3-r2-rollout", "demo-rl-a4-r2-train"]
    current = "demo-rl-a1-r1-rollout"
    for attempt, name in enumerate(expected, start=1):
        observed_jobs.append(job_obj(current, stage="rl", attempt=attempt))
        observed_pods.append(pod_obj(current, stage="rl", attempt=attempt, phase="Succeeded",
                                     state=terminated(0, "Completed", {"checkpointUri": f"s3://b/{current}", "metrics": {}})))
        result = step(doc, Observed(jobs=tuple(observed_jobs), pods=tuple(observed_pods)), settings, 10 * attempt)
        names += [a.name for a in result.actions if isinstance(a, CreateRun)]
        # the finished run is recorded once: reconciling again starts nothing new
        again = step(doc, Observed(jobs=tuple(observed_jobs) + (job_obj(name, stage="rl", attempt=attempt + 1),),
                                   pods=tuple(observed_pods)), settings, 10 * attempt + 1)
        assert not any(isinstance(a, CreateRun) for a in again.actions)
        current = name
    assert names == expected
    rollout = next(a for a in step(doc, Observed(), settings, 100).actions if isinstance(a, CreateRun))
    assert rollout.name == "demo-rl-a4-r2-train"  # recreated under its name if missing, not a new run
    observed_jobs.append(job_obj(current, stage="rl", attempt=4))
    observed_pods.append(pod_obj(current, stage="rl", attempt=4, phase="Succeeded",
                                 state=terminated(0, "Completed", {"checkpointUri": "s3://b/final", "metrics": {}})))
    step(doc, Observed(jobs=tuple(observed_jobs), pods=tuple(observed_pods)), settings, 200)
    assert doc["status"]["phase"] == "Succeeded" and stage(doc, "rl")["checkpointUri"] == "s3://b/final"


# -- runs across nodes: one Indexed Job, all or nothing --------------------------------------------------

def across_nodes(settings, nodes: int = 2, **stage) -> dict:
    """A started job whose sft stage runs on ``nodes`` nodes x 1 GPU."""
    sft = stage_manifest("sft", "sft", resources={"nodes": nodes, "gpus": 1}, hyperparameters={"batchSize": 6 * nodes}, **stage)
    return started(settings, job_manifest(stages=[sft]))


def result_json(message: str | None = None, reason: str | None = None, checkpoint: str | None = None) -> dict:
    return {"checkpointUri": checkpoint, "metrics": {"loss": 0.5} if checkpoint else {},
            **({"message": message} if message else {}), **({"reason": reason} if reason else {})}


def test_a_run_across_nodes_creates_a_service_and_shows_nodes_x_gpus(settings):
    doc = job_manifest(stages=[stage_manifest("sft", "sft", resources={"nodes": 3, "gpus": 8}, hyperparameters={"batchSize": 24})])
    result = step(doc, Observed(), settings)
    (create,) = result.actions
    assert create.job["spec"]["completionMode"] == "Indexed" and create.job["spec"]["completions"] == 3
    assert create.service["metadata"]["name"] == create.name == "demo-sft-a1"
    assert (stage(doc)["gpus"], doc["status"]["currentGpus"]) == ("3x8", "3x8")
    # the pods come up one by one; node 2 cannot be placed: the condition says which node waits
    message = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    pods = (pod_obj(RUN, index=0, state={"running": {"startedAt": ts(5)}}), pod_obj(RUN, index=1, state={"running": {"startedAt": ts(5)}}),
            pod_obj(RUN, index=2, phase="Pending",
                    conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]))
    result = step(doc, Observed(jobs=(job_obj(RUN, nodes=3),), pods=pods[:2]), settings, 3)
    assert cond(doc, "Progressing")["reason"] == "StageStarting"  # node 2 has no pod yet
    result = step(doc, Observed(jobs=(job_obj(RUN, nodes=3),), pods=pods), settings, 4)
    assert (cond(doc, "Progressing")["status"], cond(doc, "Progressing")["reason"]) == ("False", "Unschedulable")
    assert cond(doc, "Progressing")["message"] == f"stage sft attempt 1: node 2 of 3 (pod {RUN}-2-x7k2p): {message}"
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "Unschedulable")]
    running = pods[:2] + (pod_obj(RUN, index=2, state={"running": {"startedAt": ts(9)}}),)
    step(doc, Observed(jobs=(job_obj(RUN, nodes=3),), pods=running), settings, 10)
    assert cond(doc, "Progressing")["message"] == f"stage sft attempt 1 running (3 nodes: pod {RUN}-0-x7k2p and 2 more)"


def test_a_run_across_nodes_succeeds_with_index_0s_result_once_every_node_did(settings):
    doc = across_nodes(settings)
    ok = result_json(checkpoint="s3://alignops-ci/root/ml-team/demo/sft/checkpoint-6")
    node0 = pod_obj(RUN, index=0, phase="Succeeded", state=terminated(0, "Completed", ok, finishedAt=ts(20)))
    node1_running = pod_obj(RUN, index=1, state={"running": {"startedAt": ts(5)}})
    step(doc, Observed(jobs=(job_obj(RUN, nodes=2),), pods=(node0, node1_running)), settings, 21)
    assert stage(doc)["phase"] == "Running"  # node 1 has not finished: no success yet
    node1 = pod_obj(RUN, index=1, phase="Succeeded", state=terminated(0, "Completed", finishedAt=ts(21)))  # no result: only rank 0 writes one
    step(doc, Observed(jobs=(job_obj(RUN, nodes=2),), pods=(node0, node1)), settings, 22)
    assert stage(doc)["phase"] == "Succeeded" and stage(doc)["checkpointUri"] == ok["checkpointUri"]
    assert stage(doc)["metrics"] == {"loss": 0.5}


@pytest.mark.parametrize("job_failed", [False, True], ids=["job-active", "job-failed-by-its-controller"])
def test_one_failed_node_fails_the_whole_run_and_the_rest_is_stopped(settings, job_failed):
    doc = across_nodes(settings)
    conditions = failed_condition("PodFailurePolicy", "Container stage for pod demo-sft-a1-1-x7k2p failed with exit code 137") if job_failed else None
    job = job_obj(RUN, nodes=2, conditions=conditions)
    killed = pod_obj(RUN, index=1, phase="Failed", state=terminated(137, finishedAt=ts(30), signal=9))
    node0 = pod_obj(RUN, index=0, state={"running": {"startedAt": ts(5)}})
    waiting = step(doc, Observed(jobs=(job,), pods=(node0, killed)), settings, 31)
    assert waiting.actions == [] and waiting.requeue_after == pytest.approx(4.0)
    assert cond(doc, "Progressing")["reason"] == "StageStopping"
    assert f"node 1 of 2 (pod {RUN}-1-x7k2p)" in cond(doc, "Progressing")["message"]
    # node 0 still has not stopped 5 s after node 1 ended: the run is failed now, and the Job goes
    # unless its controller failed it (it stops the other pods itself; the failed Job stays for logs)
    result = step(doc, Observed(jobs=(job,), pods=(node0, killed)), settings, 35)
    deletes = [(a.name, a.service) for a in result.actions if isinstance(a, DeleteRun)]
    assert deletes == ([] if job_failed else [(RUN, True)])
    assert (stage(doc)["phase"], stage(doc)["reason"], stage(doc)["failures"]) == ("Retrying", "Error", 1)
    assert stage(doc)["message"] == f"node 1 of 2 (pod {RUN}-1-x7k2p): killed by signal 9"
    assert "exit code 137" in cond(doc, "Progressing")["message"]
    assert [e.reason for e in result.events] == ["AttemptFailed"]
    # the whole stage is retried after the backoff, once every pod of the failed run is gone
    retry = step(doc, Observed(jobs=(job,), pods=(pod_obj(RUN, index=0, phase="Running", deleting=True), killed)), settings, 46)
    assert not any(isinstance(a, CreateRun) for a in retry.actions)
    assert cond(doc, "Progressing")["reason"] == "WaitingForPreviousRun"
    retry = step(doc, Observed(jobs=(job,), pods=(killed,)), settings, 47)
    (create,) = [a for a in retry.actions if isinstance(a, CreateRun)]
    assert create.name == "demo-sft-a2" and create.service is not None and create.job["spec"]["completions"] == 2


def test_the_most_telling_node_names_the_failure(settings):
    # node 0 lost its peer (exit 1), node 1 found a configuration error (78): the run fails at once, as 78
    doc = across_nodes(settings)
    lost = pod_obj(RUN, index=0, phase="Failed", state=terminated(1, finishedAt=ts(20), message=result_json("RuntimeError: Connection closed by peer")))
    config = pod_obj(RUN, index=1, phase="Failed", state=terminated(78, finishedAt=ts(21), message=result_json("configuration error: no datasets.train")))
    step(doc, Observed(jobs=(job_obj(RUN, nodes=2, conditions=failed_condition("PodFailurePolicy")),), pods=(lost, config)), settings, 22)
    assert doc["status"]["phase"] == "Failed" and cond(doc, "Failed")["reason"] == "ConfigurationError"
    assert "node 1 of 2" in cond(doc, "Failed")["message"] and "no datasets.train" in cond(doc, "Failed")["message"]


def test_a_rendezvous_that_times_out_is_its_own_reason_and_retried(settings):
    """Node 1 never started (unschedulable); node 0 waited ALIGNOPS_RENDEZVOUS_TIMEOUT and failed with
    the result's reason RendezvousTimeout, which the status and the condition carry."""
    doc = across_nodes(settings)
    message = "rendezvous of 2 nodes at demo-sft-a1-0.demo-sft-a1:29500 (this is node 0) did not complete in 900 s"
    timed_out = pod_obj(RUN, index=0, phase="Failed", state=terminated(1, finishedAt=ts(900), message=result_json(message, "RendezvousTimeout")))
    pending = pod_obj(RUN, index=1, phase="Pending",
                      conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/2 nodes are available"}])
    job = job_obj(RUN, nodes=2, conditions=failed_condition("PodFailurePolicy"))
    step(doc, Observed(jobs=(job,), pods=(timed_out, pending)), settings, 901)
    assert stage(doc)["phase"] == "Running"  # the pending pod is being deleted: its state may still come
    result = step(doc, Observed(jobs=(job,), pods=(timed_out,)), settings, 902)  # gone (deleted while pending)
    assert (stage(doc)["phase"], stage(doc)["reason"]) == ("Retrying", "RendezvousTimeout")
    progressing = cond(doc, "Progressing")
    assert progressing["reason"] == "RendezvousTimeout" and "retrying in 10 s" in progressing["message"]
    assert message in stage(doc)["message"]
    assert ("failure", "RendezvousTimeout") in [(o.kind, o.reason) for o in result.observations]


def test_a_sigterm_to_one_node_stops_every_node_and_resumes_without_a_failure(settings):
    """Preemption of node 1: every rank stops at one step, rank 0 commits, all exit 143."""
    doc = across_nodes(settings)
    stopped = [pod_obj(RUN, index=i, phase="Failed", state=terminated(143, finishedAt=ts(40 + i),
                                                                     message=result_json("stopped at step 40") if i == 0 else None))
               for i in range(2)]
    early = step(doc, Observed(jobs=(job_obj(RUN, nodes=2),), pods=(pod_obj(RUN, index=0, state={"running": {"startedAt": ts(5)}}), stopped[1])),
                 settings, 42)
    # a stop waits for rank 0's commit (the grace period), not GANG_SETTLE_SECONDS
    assert early.actions == [] and early.requeue_after == pytest.approx(settings.stage_grace_seconds - 1)
    result = step(doc, Observed(jobs=(job_obj(RUN, nodes=2, conditions=failed_condition()),), pods=tuple(stopped)), settings, 43)
    assert (stage(doc)["failures"], stage(doc)["attempts"]) == (0, 2)
    assert [a.name for a in result.actions if isinstance(a, CreateRun)] == ["demo-sft-a2"]


def test_suspending_a_run_across_nodes_deletes_its_service_too(settings):
    doc = across_nodes(settings)
    doc["spec"]["suspend"] = True
    doc["metadata"]["generation"] = 2
    result = step(doc, Observed(jobs=(job_obj(RUN, nodes=2),), pods=(pod_obj(RUN, index=0), pod_obj(RUN, index=1))), settings, 20)
    assert [(a.name, a.reason, a.service) for a in result.actions if isinstance(a, DeleteRun)] == [(RUN, "Suspended", True)]


def test_a_changed_node_count_applies_to_the_next_run_and_keeps_the_current_one(settings):
    """Names of runs across nodes keep room for their pods' hostnames; the current run is found by
    the node count it started with, whatever the spec says now."""
    long = "a-rather-long-alignment-job-name-for-team-x"  # 43 characters: <job>-sft-a1 = 50, fits either way
    sft = stage_manifest("sft", "supervised-finetune", resources={"nodes": 2}, hyperparameters={"batchSize": 12})
    doc = started(settings, job_manifest(long, stages=[sft]))
    name = stage(doc, "supervised-finetune")["jobName"]
    assert len(name) <= 61 and len(f"{name}-1") <= 63 and stage(doc, "supervised-finetune")["gpus"] == "2x0"
    doc["spec"]["stages"][0]["resources"] = {"nodes": 1}  # resources may change; they apply to the next attempt
    doc["metadata"]["generation"] = 2
    running = tuple(pod_obj(name, stage="supervised-finetune", aj=long, index=i, state={"running": {"startedAt": ts(5)}}) for i in range(2))
    result = step(doc, Observed(jobs=(job_obj(name, stage="supervised-finetune", aj=long, nodes=2),), pods=running), settings, 10)
    assert not any(isinstance(a, CreateRun) for a in result.actions)
    assert stage(doc, "supervised-finetune")["phase"] == "Running" and cond(doc, "Progressing")["reason"] == "StageRunning"
