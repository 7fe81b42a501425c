"""The operator's one domain function: ``reconcile(job_obj, observed, settings, now)``.

Level-based and pure: from an AlignmentJob (spec, status, annotations) and what exists of its
children (Jobs and Pods found by label, plus what the executor knows of its own recent writes), it
returns the new status and the actions that bring the cluster to it. The shared planner decides
stage order, retries, reruns after a spec change and config resolution (``plan_reruns``,
``next_action``, ``mark_started``, ``record_outcome``, ``resolve_run``); this module only maps
Kubernetes objects to the planner's inputs and back.

A spec change is level-based like everything else: every reconcile asks ``plan_reruns`` whether a
stage's recorded fingerprint still matches the spec. A stage that no longer does (and every stage
after it) is reset in the status; its running Job, no longer any stage's current run, is deleted as
superseded (its pod gets SIGTERM and commits to the old spec's key), and once that pod is gone the
stage starts again from its inputs under its ``rerun-<n>`` key.

Protocol with the executor (``alignops.operator.executor``): the status is written first, with the
object's resourceVersion as a precondition, and the actions run only if that write succeeded. A
stage run's attempt number is therefore durable before its Job exists, and child names are
deterministic: an operator restarted at any moment recreates a missing Job under the same name (a
second create answers 409) and never starts a second one. A reconcile that worked on a stale copy
of the object fails its precondition and is repeated on a fresh copy.

A run's outcome is recorded once: a stage run is *current* while its stage is Running and the
stage's ``jobName`` is the name the planner's position (attempt, round, role) gives; recording the
outcome moves that position (or the phase), so the finished Job no longer counts.

A run across nodes (an Indexed Job, one pod per node) is all or nothing: it succeeds when every
pod did, and fails when any pod fails. The Job controller stops the other pods then (backoffLimit
0, podFailurePolicy); the operator gives their final states ``GANG_SETTLE_SECONDS`` to arrive (the
most telling one names the failure: a configuration error over a crash over a rendezvous timeout),
deletes the Job if it is still active after that, and records one outcome for the whole run: the
planner retries the whole stage from its last checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, Callable, Iterator, Literal, Mapping

from pydantic import ValidationError

from alignops.api.job import AlignmentJob
from alignops.api.status import JobStatus, StageStatus
from alignops.api.validation import FieldError, InvalidManifest, parse_job
from alignops.contract import StageRunConfig
from alignops.operator.admission import cluster_errors
from alignops.operator.builders import build_run_configmap, build_run_service, build_stage_job
from alignops.operator.names import KUEUE_QUEUE_LABEL, RETRY_ANNOTATION, child_name
from alignops.operator.observe import (
    JobView,
    PodView,
    gang_outcome,
    moment,
    newest_per_index,
    pod_outcome,
    pod_problem,
    seconds_between,
)
from alignops.operator.settings import OperatorSettings
from alignops.planner import (
    EXIT_CONFIG,
    EXIT_SIGTERM,
    Defaults,
    Finished,
    RunOutcome,
    StartRun,
    Wait,
    initial_status,
    mark_started,
    next_action,
    parse_time,
    plan_reruns,
    record_outcome,
    resolve_run,
    retry_failed,
    rfc3339,
    set_condition,
)

Obj = dict[str, Any]
FINAL = ("Succeeded", "Failed")
# Progressing=False reasons that get a Warning event when they appear
PROBLEMS = frozenset({"Unschedulable", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                      "CreateContainerError", "RunContainerError", "CreateFailed", "InvalidSpec"})
CREATE_RETRY_SECONDS = 10.0
POD_STATUS_WAIT_SECONDS = 2.0
PREVIOUS_RUN_WAIT_SECONDS = 5.0
# after a pod of a run across nodes failed: how long the other pods' final states have to arrive
# (a rank that lost its peer fails within moments; a SIGTERM stop waits for rank 0's commit instead)
GANG_SETTLE_SECONDS = 5.0


@dataclass(frozen=True)
class Progress:
    """A running pod's progress as its ``/progress`` endpoint reported it."""

    step: int | None
    stale_seconds: float  # the pod's now - lastProgressTime: no clock sync needed


@dataclass(frozen=True)
class CreateError:
    """Why the executor could not create a run's Job. ``permanent``: the API server refused the
    object itself (400/422: it can never be created as built), not a passing condition."""

    message: str
    permanent: bool = False


@dataclass(frozen=True)
class Observed:
    """The children of one AlignmentJob as the operator sees them."""

    jobs: tuple[JobView, ...] = ()
    pods: tuple[PodView, ...] = ()
    progress: Mapping[str, Progress] = field(default_factory=dict)  # by pod name
    create_errors: Mapping[str, CreateError] = field(default_factory=dict)  # by child name: the last create error


@dataclass(frozen=True)
class CreateRun:
    name: str
    stage: str
    configmap: Obj
    job: Obj
    service: Obj | None = None  # the headless Service of a run across nodes


@dataclass(frozen=True)
class DeleteRun:
    """Delete a stage run's Job (propagationPolicy Background: its pods get SIGTERM and their grace
    period to commit a checkpoint), its ConfigMap, and the Service of a run across nodes."""

    name: str
    stage: str
    reason: str
    service: bool = False


@dataclass(frozen=True)
class DeleteAlignmentJob:
    reason: str


# what reconcile asks of the cluster (planner.Action is what the planner asks of an executor)
ClusterAction = CreateRun | DeleteRun | DeleteAlignmentJob


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Observation:
    """A metrics sample for the executor: ``attempt`` and ``failure`` count, ``duration`` and
    ``first_pod`` are seconds."""

    kind: Literal["attempt", "failure", "duration", "first_pod"]
    stage: str
    value: float = 1.0
    reason: str | None = None


@dataclass
class Reconciliation:
    status: Obj | None = None  # the new status (wire form) when it differs from the object's
    actions: list[ClusterAction] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    requeue_after: float | None = None
    phase: str | None = None

    def wake_in(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


# -- helpers --------------------------------------------------------------------------------------------

def _parse_status(wire: Mapping[str, Any] | None) -> JobStatus:
    if not wire:
        return JobStatus()
    try:
        return JobStatus.model_validate(dict(wire))
    except ValidationError:
        known = set(JobStatus.model_fields) | {f.alias for f in JobStatus.model_fields.values() if f.alias}
        try:  # fields written by something else (an older operator, kopf): keep what we can read
            return JobStatus.model_validate({k: v for k, v in wire.items() if k in known})
        except ValidationError:
            return JobStatus()


def _manifest(job_obj: Mapping[str, Any]) -> Obj:
    meta = dict(job_obj.get("metadata") or {})
    keep = {k: meta[k] for k in ("name", "namespace", "labels", "annotations", "generation", "uid") if k in meta}
    return {"apiVersion": job_obj.get("apiVersion"), "kind": job_obj.get("kind"), "metadata": keep, "spec": job_obj.get("spec")}


def _defaults(job: AlignmentJob, settings: OperatorSettings) -> Defaults:
    return Defaults(storage_uri=settings.default_storage_uri or "", namespace=job.metadata.namespace or "default",
                    storage_endpoint=settings.default_storage_endpoint)


def run_nodes(observed: StageStatus) -> int:
    """The nodes of the stage's current (or last started) run, as the status recorded them when it
    started (``gpus`` is ``<nodes>x<GPUs>``): a spec changed since applies to the next run."""
    return int(observed.gpus.split("x")[0]) if observed.gpus else 1


def expected_run_name(job_name: str, observed: StageStatus) -> str:
    """The child name of the stage's current (or last started) run, from its planner position."""
    return child_name(job_name, observed.name, observed.attempts, observed.round, observed.role or "all", run_nodes(observed))


def is_current(job_name: str, observed: StageStatus) -> bool:
    """The stage has a run whose outcome is not recorded yet."""
    return observed.phase == "Running" and observed.attempts > 0 and observed.job_name == expected_run_name(job_name, observed)


def _run_label(observed: StageStatus) -> str:
    text = f"stage {observed.name} attempt {observed.attempts}"
    if observed.round is not None:
        text += f" (round {observed.round} {observed.role})"
    return text


def _failed_condition_reason(status: JobStatus) -> str | None:
    cond = status.condition("Failed")
    return cond.reason if cond is not None and cond.status == "True" else None


# -- the reconcile -------------------------------------------------------------------------------------

def reconcile(job_obj: Mapping[str, Any], observed: Observed, settings: OperatorSettings, now: datetime) -> Reconciliation:
    """The new status of ``job_obj`` and the actions that realise it (see the module docstring)."""
    meta = job_obj.get("metadata") or {}
    result = Reconciliation()
    if meta.get("deletionTimestamp"):
        return result  # owner references let the garbage collector delete the children
    old_wire = dict(job_obj.get("status") or {})
    old = _parse_status(old_wire)
    generation = meta.get("generation")
    try:
        job = parse_job(_manifest(job_obj))
        errors = cluster_errors(job, settings)
        if errors:
            raise InvalidManifest(errors)
    except InvalidManifest as exc:
        status = _invalid(old, exc.errors, generation, now)
        ttl = (job_obj.get("spec") or {}).get("ttlSecondsAfterFinished") if isinstance(job_obj.get("spec"), dict) else None
        if isinstance(ttl, int) and not isinstance(ttl, bool) and ttl >= 0:
            _expire(ttl, status, now, result)
    else:
        status = _reconcile_valid(job, old, observed, settings, now, result)
    _finish(old, old_wire, status, result)
    return result


def _invalid(old: JobStatus, errors: list[FieldError], generation: int | None, now: datetime) -> JobStatus:
    """InvalidSpec: a job that never started fails (a later valid spec revives it); a started job
    keeps its state and refuses the new spec."""
    status = old.model_copy(deep=True)
    message = "; ".join(str(e) for e in errors) or "the manifest is invalid"
    started = any(s.attempts > 0 for s in status.stages)
    if status.phase in FINAL and _failed_condition_reason(status) != "InvalidSpec":
        return status
    if started and status.phase not in FINAL:
        set_condition(status, "Progressing", False, "InvalidSpec", f"the new spec was not applied: {message}", now, generation)
        return status
    status.phase = "Failed"
    status.completion_time = status.completion_time or rfc3339(now)
    status.observed_generation = generation
    set_condition(status, "Failed", True, "InvalidSpec", message, now, generation)
    set_condition(status, "Progressing", False, "InvalidSpec", message, now, generation)
    return status


def _reconcile_valid(job: AlignmentJob, old: JobStatus, observed: Observed, settings: OperatorSettings,
                     now: datetime, result: Reconciliation) -> JobStatus:
    generation = job.metadata.generation
    status = old.model_copy(deep=True)
    if not status.stages:
        status.stages = initial_status(job).stages
    if status.phase == "Failed" and _failed_condition_reason(status) == "InvalidSpec":
        # the spec was fixed: start over from what had run (nothing, for a job that never started)
        status.phase = "Running" if any(s.attempts for s in status.stages) else "Pending"
        status.completion_time = None
        status.conditions = [c for c in status.conditions if c.type != "Failed"]
        set_condition(status, "Progressing", True, "SpecAccepted", "the corrected spec was accepted", now, generation)

    token = (job.metadata.annotations or {}).get(RETRY_ANNOTATION)
    if token is not None and token != status.retry_token:
        status.retry_token = token
        if status.phase == "Failed":
            status = retry_failed(status)
            set_condition(status, "Progressing", True, "RetryRequested",
                          f"{RETRY_ANNOTATION}={token}: the failed stage runs again from its last checkpoint", now, generation)
            result.events.append(Event("Normal", "RetryRequested", f"annotation {RETRY_ANNOTATION}={token!r}: retrying the failed stage"))

    # the spec in hand decides: changed stages (and those after them) rerun, added ones run
    status, _ = plan_reruns(job, status, now=now)
    status.observed_generation = generation
    _supersede(job, status, observed, result)

    if status.phase in FINAL:
        _cleanup(job, status, observed, settings, result)
        _expire(job.spec.ttl_seconds_after_finished, status, now, result)
        return status

    for observed_stage in list(status.stages):
        if is_current(job.name, observed_stage):
            status = _observe_run(job, status, observed_stage.name, observed, settings, now, result)

    if job.spec.suspend:
        _suspend(job, status, now, result)
    elif not any(is_current(job.name, s) for s in status.stages):
        status = _start_next(job, status, observed, settings, now, result)

    _cleanup(job, status, observed, settings, result)
    _expire(job.spec.ttl_seconds_after_finished, status, now, result)
    return status


def _supersede(job: AlignmentJob, status: JobStatus, observed: Observed, result: Reconciliation) -> None:
    """Delete the Jobs still running that are no stage's current run: a stage reset for a rerun, or
    removed from the spec. A Job whose pod has finished is left alone (its outcome was read, or
    it is kept for ``kubectl logs``)."""
    current = {s.job_name for s in status.stages if is_current(job.name, s)}
    for child in observed.jobs:
        if not child.stage or child.name in current or child.finished or child.deleting:
            continue
        pods = [p for p in observed.pods if p.job == child.name]
        if pods and not any(p.alive for p in pods):
            continue
        result.actions.append(DeleteRun(child.name, child.stage, "Superseded"))


def _create_run(job: AlignmentJob, config: StageRunConfig, settings: OperatorSettings, name: str) -> CreateRun:
    return CreateRun(name, config.stage, build_run_configmap(job, config, name), build_stage_job(job, config, settings, name),
                     build_run_service(job, config, settings, name))


# -- reading a stage's current run back: what is seen -> what follows -------------------------------------

@dataclass(frozen=True)
class RunView:
    """What is seen of a stage's current run: its Job, its pod (across nodes: index 0's, where rank
    0 runs), the newest pod of each node, the last error creating the Job."""

    job: JobView | None = None
    pod: PodView | None = None
    create_error: CreateError | None = None
    pods: Mapping[int, PodView] = field(default_factory=dict)
    nodes: int = 1

    @classmethod
    def of(cls, name: str, observed: Observed, nodes: int = 1) -> "RunView":
        job = next((j for j in reversed(observed.jobs) if j.name == name), None)  # the last view of a name wins
        nodes = job.nodes if job is not None and job.nodes > 1 else nodes
        mine = [p for p in observed.pods if p.job == name]
        if nodes > 1:
            pods = newest_per_index(mine)
            return cls(job, pods.get(0), observed.create_errors.get(name), pods, nodes)
        newest = max(mine, key=lambda p: (p.created or "", p.name), default=None)
        return cls(job, newest, observed.create_errors.get(name), {0: newest} if newest else {}, 1)

    @property
    def across_nodes(self) -> bool:
        return self.nodes > 1

    @property
    def alive(self) -> list[PodView]:
        return [p for p in self.pods.values() if p.alive]

    @cached_property
    def outcome(self) -> RunOutcome | None:
        """How the run ended as far as its pods show (None: not yet)."""
        if not self.across_nodes:
            return pod_outcome(self.pod) if self.pod is not None else None
        if self.job is not None and self.job.complete and self.pod is not None and self.pod.finished:
            return pod_outcome(self.pod)  # every index succeeded: the Job controller says so
        outcome = gang_outcome(self.pods, self.nodes)
        if outcome is None and self.job is None and self.pods and not self.alive:
            return RunOutcome(exit_code=1, reason="ResultLost", message=f"the Job was deleted before all {self.nodes} nodes succeeded")
        return outcome

    @property
    def pod_finished(self) -> bool:
        """The run ended and no pod of it runs any more."""
        return self.outcome is not None and not self.alive

    @property
    def node_failed(self) -> bool:
        """Across nodes: a pod failed while others still run (they are being stopped)."""
        return self.across_nodes and self.outcome is not None and self.outcome.exit_code != 0 and bool(self.alive)


@dataclass
class CurrentRun:
    """A stage's current run and what a response may read (the job, settings, progress) or add to
    (the status, the reconciliation)."""

    job: AlignmentJob
    status: JobStatus
    current: StageStatus
    observed: Observed
    settings: OperatorSettings
    now: datetime
    result: Reconciliation

    @property
    def name(self) -> str:
        return self.current.job_name

    @property
    def label(self) -> str:
        return _run_label(self.current)

    def set_progressing(self, ok: bool, reason: str, message: str) -> None:
        set_condition(self.status, "Progressing", ok, reason, message, self.now, self.job.metadata.generation)

    def delete(self, seen: RunView, reason: str) -> None:
        self.result.actions.append(DeleteRun(self.name, self.current.name, reason, service=seen.across_nodes))


@dataclass(frozen=True)
class RunRule:
    """A row of ``RUN_RULES``: when ``applies`` to what is seen, ``respond`` acts and returns the
    run's outcome to record, or None while the run goes on."""

    name: str
    applies: Callable[[RunView], bool]
    respond: Callable[[CurrentRun, RunView], RunOutcome | None]


def _pod_result(run: CurrentRun, seen: RunView) -> RunOutcome | None:
    return seen.outcome


def _wait(run: CurrentRun, seen: RunView) -> None:
    return None  # the watch wakes the next pass when the pod or the Job goes


def _refused(run: CurrentRun, seen: RunView) -> RunOutcome:
    return RunOutcome(exit_code=EXIT_CONFIG, reason="JobRejected",
                      message=f"the API server refused Job {run.name}: {seen.create_error.message}")


def _create_again(run: CurrentRun, seen: RunView) -> None:
    # deleted, or the operator stopped between writing the status and creating it: the same name
    # and attempt, so a second create answers 409 and never starts a second run
    current = run.current
    config = resolve_run(run.job, run.status, current.name, current.attempts, _defaults(run.job, run.settings),
                         current.role or "all", current.round)
    run.result.actions.append(_create_run(run.job, config, run.settings, run.name))
    if seen.create_error is not None:
        run.set_progressing(False, "CreateFailed", f"{run.label}: cannot create Job {run.name}: {seen.create_error.message}")
        run.result.wake_in(CREATE_RETRY_SECONDS)


def _deadline_exceeded(run: CurrentRun, seen: RunView) -> RunOutcome:
    # the Job controller stopped the pod (it may even have exited 143 after a checkpoint): a failure
    deadline = run.job.stage(run.current.name).active_deadline_seconds
    return RunOutcome(exit_code=1, reason="DeadlineExceeded",
                      message=f"{run.label} ran longer than activeDeadlineSeconds ({deadline} s)")


def _node_failed(run: CurrentRun, seen: RunView) -> RunOutcome | None:
    """A pod of a run across nodes failed while others run: the whole run failed. Their final
    states get GANG_SETTLE_SECONDS (a SIGTERM stop: the grace period, for rank 0's commit) from the
    first pod's end; then the outcome is recorded, and a Job the Job controller has not failed
    itself (which stops the other pods) is deleted."""
    outcome = seen.outcome
    ended = [moment(p.terminated.finished_at) for p in seen.pods.values() if p.finished and p.terminated]
    first_end = min((t for t in ended if t is not None), default=run.now)
    settle = run.settings.stage_grace_seconds if outcome.exit_code == EXIT_SIGTERM else GANG_SETTLE_SECONDS
    left = (first_end + timedelta(seconds=settle) - run.now).total_seconds()
    if left > 0:
        run.set_progressing(True, "StageStopping", f"{run.label} failed on {outcome.message}; "
                                                   f"waiting for its {len(seen.alive)} other pod(s) to stop")
        run.result.wake_in(left)
        return None
    if seen.job is not None and not seen.job.finished:
        run.delete(seen, outcome.reason or "NodeFailed")
    return outcome


def _result_lost(run: CurrentRun, seen: RunView) -> RunOutcome:
    reason = "ResultLost" if seen.job.complete else (seen.job.failed_reason or "Error")
    return RunOutcome(exit_code=1, reason=reason,
                      message=seen.job.failed_message or f"Job {run.name} finished but its pod, and with it the result, is gone")


def _wait_for_pod_status(run: CurrentRun, seen: RunView) -> None:
    run.result.wake_in(POD_STATUS_WAIT_SECONDS)  # the pod's final status is on its way


def _running(run: CurrentRun, seen: RunView) -> RunOutcome | None:
    _show_progress(run, seen)
    stalled = _stalled(run.job.stage(run.current.name), seen.pod, run.observed, run.settings, run.result)
    if stalled is None:
        return None
    run.delete(seen, "Stalled")
    return RunOutcome(exit_code=1, reason="Stalled", message=f"{run.label}: {stalled}")


# First match wins: a row may assume that no row above it matched (from "Job being deleted" on, the
# Job exists). The last row matches whatever is left.
RUN_RULES: tuple[RunRule, ...] = (
    # someone deleted the Job: its finished pod still holds the result
    RunRule("pod outlived its Job", lambda seen: seen.job is None and seen.pod_finished, _pod_result),
    RunRule("Job gone, pod stopping", lambda seen: seen.job is None and bool(seen.alive), _wait),
    RunRule("Job refused", lambda seen: seen.job is None and seen.create_error is not None and seen.create_error.permanent, _refused),
    RunRule("Job missing", lambda seen: seen.job is None, _create_again),
    RunRule("Job being deleted", lambda seen: seen.job.deleting, _wait),
    RunRule("deadline exceeded", lambda seen: seen.job.failed and seen.job.failed_reason == "DeadlineExceeded", _deadline_exceeded),
    RunRule("pod finished", lambda seen: seen.pod_finished, _pod_result),
    RunRule("a node failed, the others stopping", lambda seen: seen.node_failed, _node_failed),
    RunRule("Job finished, pod gone", lambda seen: seen.job.finished and not seen.alive and seen.outcome is None, _result_lost),
    RunRule("Job finished, pod status pending", lambda seen: seen.job.finished, _wait_for_pod_status),
    RunRule("running", lambda seen: True, _running),
)


def match_run_rule(seen: RunView) -> RunRule:
    return next(rule for rule in RUN_RULES if rule.applies(seen))


def _observe_run(job: AlignmentJob, status: JobStatus, stage_name: str, observed: Observed,
                 settings: OperatorSettings, now: datetime, result: Reconciliation) -> JobStatus:
    """Read the current run of a stage back: record its outcome once it ended, or show where it is."""
    run = CurrentRun(job, status, status.stage(stage_name), observed, settings, now, result)
    seen = RunView.of(run.name, observed, run_nodes(run.current))
    outcome = match_run_rule(seen).respond(run, seen)
    return status if outcome is None else record_outcome(job, status, stage_name, outcome, now)


def _show_progress(run: CurrentRun, seen: RunView) -> None:
    child, pod = seen.job, seen.pod
    label = run.label
    if not seen.pods and child.suspended:
        queue = (run.job.metadata.labels or {}).get(KUEUE_QUEUE_LABEL)
        detail = f"waits for admission by Kueue (queue {queue})" if queue else "is suspended"
        run.set_progressing(True, "Queued", f"{label}: Job {child.name} {detail}")
        return
    waiting = [(i, p) for i, p in sorted(seen.pods.items()) if p.phase == "Pending"]
    problems = [(i, p, pod_problem(p)) for i, p in waiting if pod_problem(p) is not None]
    if problems:
        index, waiting_pod, (reason, message) = problems[0]
        if seen.across_nodes:  # the others wait at the rendezvous meanwhile, and hold their GPUs
            message = f"node {index} of {seen.nodes} (pod {waiting_pod.name}): {message}"
        run.set_progressing(False, reason, f"{label}: {message}")
        return
    if pod is None or waiting or len(seen.pods) < seen.nodes:
        run.set_progressing(True, "StageStarting", f"{label}: starting (Job {child.name})")
        return
    where = f"pod {pod.name}" if not seen.across_nodes else f"{seen.nodes} nodes: pod {pod.name} and {seen.nodes - 1} more"
    message = f"{label} running ({where})"
    before = run.status.condition("Progressing")
    if before is None or before.reason != "StageRunning" or before.message != message:
        waited = seconds_between(child.created, pod.running_since)
        if waited is not None:
            run.result.observations.append(Observation("first_pod", run.current.name, waited))
    run.set_progressing(True, "StageRunning", message)


def _stalled(stage, pod: PodView | None, observed: Observed, settings: OperatorSettings, result: Reconciliation) -> str | None:
    """Why a running pod counts as stalled, or None. Progress comes from the pod's ``/progress``
    (polled by the executor): no step (and no start) for ``progressDeadlineSeconds``."""
    deadline = stage.progress_deadline_seconds
    if not deadline or not settings.stage_metrics_port or pod is None or pod.phase != "Running":
        return None
    result.wake_in(min(settings.progress_poll_seconds, deadline / 2))
    progress = observed.progress.get(pod.name)
    if progress is None or progress.stale_seconds < deadline:
        return None
    where = f"last step {progress.step}" if progress.step is not None else "no step yet"
    return (f"no progress for {progress.stale_seconds:.0f} s ({where}; progressDeadlineSeconds {deadline}): "
            "stopped and restarted from the last checkpoint")


def _suspend(job: AlignmentJob, status: JobStatus, now: datetime, result: Reconciliation) -> None:
    generation = job.metadata.generation
    for observed_stage in status.stages:
        if observed_stage.phase != "Running":
            continue
        if is_current(job.name, observed_stage):
            result.actions.append(DeleteRun(observed_stage.job_name, observed_stage.name, "Suspended",
                                            service=run_nodes(observed_stage) > 1))
        observed_stage.phase = "Suspended"
        observed_stage.reason = "Suspended"
        observed_stage.message = "stopped by spec.suspend: the run commits a checkpoint on SIGTERM and the next one resumes from it"
    status.phase = "Suspended"
    set_condition(status, "Suspended", True, "SuspendRequested", "spec.suspend is true: no stage runs until it is false", now, generation)
    set_condition(status, "Progressing", False, "Suspended", "spec.suspend is true", now, generation)


def _start_next(job: AlignmentJob, status: JobStatus, observed: Observed, settings: OperatorSettings,
                now: datetime, result: Reconciliation) -> JobStatus:
    generation = job.metadata.generation
    action = next_action(job, status, _defaults(job, settings), now)
    if isinstance(action, Wait):
        result.wake_in(action.seconds)
        return status
    if isinstance(action, Finished):
        if action.phase == "Succeeded" and status.phase != "Succeeded":  # e.g. the last unstarted stage was removed
            status.phase = "Succeeded"
            status.completion_time = status.completion_time or rfc3339(now)
            set_condition(status, "Succeeded", True, "AllStagesSucceeded", f"{len(status.stages)} stages succeeded", now, generation)
            set_condition(status, "Progressing", False, "Finished", "", now, generation)
        return status
    if not isinstance(action, StartRun):
        return status
    config = action.config
    alive = [p for p in observed.pods if p.stage == config.stage and p.alive]
    if alive:
        # an earlier run of this stage is still stopping (suspend, stall, a deleted Job): two runs
        # of one stage never write checkpoints at the same time
        set_condition(status, "Progressing", True, "WaitingForPreviousRun",
                      f"stage {config.stage}: waiting for pod {alive[0].name} of an earlier run to stop", now, generation)
        result.wake_in(PREVIOUS_RUN_WAIT_SECONDS)
        return status
    name = child_name(config.job.name, config.stage, config.attempt, config.round, config.role, config.distributed.nodes)
    status = mark_started(job, status, config.stage, now, job_name=name)
    started = status.stage(config.stage)
    if not any(j.name == name for j in observed.jobs):
        result.actions.append(_create_run(job, config, settings, name))
    set_condition(status, "Progressing", True, "StageStarting", f"{_run_label(started)}: starting (Job {name})", now, generation)
    return status


def _cleanup(job: AlignmentJob, status: JobStatus, observed: Observed, settings: OperatorSettings, result: Reconciliation) -> None:
    """Keep the newest ``failed_jobs_kept`` failed Jobs of each stage (for ``kubectl logs``)."""
    for observed_stage in status.stages:
        failed = [j for j in observed.jobs if j.stage == observed_stage.name and j.failed and not j.deleting]
        failed.sort(key=lambda j: (j.attempt or 0, j.created or ""), reverse=True)
        for old_job in failed[settings.failed_jobs_kept:]:
            result.actions.append(DeleteRun(old_job.name, observed_stage.name, "Cleanup", service=old_job.nodes > 1))


def _expire(ttl: int | None, status: JobStatus, now: datetime, result: Reconciliation) -> None:
    """``ttlSecondsAfterFinished``: delete the finished job when it expires, else wake up then."""
    if ttl is None or status.phase not in FINAL or not status.completion_time:
        return
    expires = parse_time(status.completion_time) + timedelta(seconds=ttl)
    if now >= expires:
        result.actions.append(DeleteAlignmentJob("TTLExpired"))
        result.events.append(Event("Normal", "TTLExpired", f"deleted {ttl} s after it finished (ttlSecondsAfterFinished); "
                                                          "nothing in storage is deleted"))
    else:
        result.wake_in((expires - now).total_seconds())


# -- what changed: events and metrics -------------------------------------------------------------------

def _stage_changes(old: JobStatus, new: JobStatus) -> Iterator[tuple[StageStatus, StageStatus]]:
    """(before, now) for each stage of ``new``; a stage new to the status starts from nothing."""
    before = {s.name: s for s in old.stages}
    for stage in new.stages:
        yield before.get(stage.name) or StageStatus(name=stage.name), stage


def transition_events(old: JobStatus, new: JobStatus) -> list[Event]:
    """One Kubernetes Event per transition between two statuses."""
    events: list[Event] = []
    for prev, stage in _stage_changes(old, new):
        label = _run_label(stage)
        if stage.rerun > prev.rerun:
            events.append(Event("Normal", "StageRerun", stage.message or f"stage {stage.name} reruns from its inputs"))
        if stage.attempts > prev.attempts:
            events.append(Event("Normal", "StageStarted", f"{label} started: Job {stage.job_name}"))
        if stage.failures > prev.failures:
            # the planner's own account: reason, exit code, the workload's message, what happens next
            detail = new.condition("Failed" if stage.phase == "Failed" else "Progressing")
            text = detail.message if detail is not None and detail.message else f"{label} failed: {stage.reason}: {stage.message or ''}"
            events.append(Event("Warning", "AttemptFailed", text))
        if stage.phase != prev.phase:
            if stage.phase == "Succeeded":
                events.append(Event("Normal", "StageSucceeded", f"stage {stage.name} succeeded: checkpoint {stage.checkpoint_uri}"))
            elif stage.phase == "Failed":
                events.append(Event("Warning", "StageFailed", f"stage {stage.name} failed: {stage.reason}: {stage.message or ''}".rstrip(": ")))
            elif stage.phase == "Suspended":
                events.append(Event("Normal", "StageSuspended", f"{label} stopped: {stage.message or stage.reason}"))
    if new.phase != old.phase:
        failed = new.condition("Failed")
        if new.phase == "Succeeded":
            events.append(Event("Normal", "Succeeded", f"all {len(new.stages)} stages succeeded; output model {new.output_model}"))
        elif new.phase == "Failed":
            events.append(Event("Warning", failed.reason if failed else "Failed", failed.message if failed else "the job failed"))
        elif new.phase == "Suspended":
            events.append(Event("Normal", "Suspended", "the job is suspended"))
        elif old.phase == "Suspended":
            events.append(Event("Normal", "Resumed", "the job resumed from its last checkpoints"))
    cond, prev_cond = new.condition("Progressing"), old.condition("Progressing")
    if cond is not None and cond.status == "False" and cond.reason in PROBLEMS and new.phase != "Failed" and (
            prev_cond is None or (prev_cond.reason, prev_cond.message) != (cond.reason, cond.message)):
        events.append(Event("Warning", cond.reason, cond.message))
    return events


def transition_observations(old: JobStatus, new: JobStatus) -> list[Observation]:
    out: list[Observation] = []
    for prev, stage in _stage_changes(old, new):
        if stage.attempts > prev.attempts:
            out.append(Observation("attempt", stage.name, float(stage.attempts - prev.attempts)))
        if stage.failures > prev.failures:
            out.append(Observation("failure", stage.name, float(stage.failures - prev.failures), reason=stage.reason or "Error"))
        if stage.phase in FINAL and stage.phase != prev.phase:
            seconds = seconds_between(stage.start_time, stage.completion_time)
            if seconds is not None:
                out.append(Observation("duration", stage.name, seconds))
    return out


def _finish(old: JobStatus, old_wire: Mapping[str, Any], status: JobStatus, result: Reconciliation) -> None:
    for condition in status.conditions:
        before = old.condition(condition.type)
        if before is not None and before.status == condition.status:
            # a condition's lastTransitionTime moves only when its status does, whatever one pass
            # set in between
            condition.last_transition_time = before.last_transition_time
    result.events = result.events + transition_events(old, status)
    result.observations = result.observations + transition_observations(old, status)
    wire = status.to_wire()
    result.status = wire if wire != dict(old_wire) else None
    result.phase = status.phase


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> Obj:
    """The JSON merge patch (RFC 7386) turning ``old`` into ``new``: removed keys become null,
    lists are replaced whole."""
    patch: Obj = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif value != before or key not in old:
            patch[key] = value
    return patch
