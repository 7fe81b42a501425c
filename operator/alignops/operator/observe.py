"""What the operator sees of its children: compact, immutable views of Jobs and Pods (kept in kopf
indexes), and how a finished pod's termination state becomes the planner's ``RunOutcome`` (pure).

The result of a run is the termination message of its container: the workload writes its result
JSON (``checkpointUri``, ``metrics``, ``message``; at most 4 KB) to ``ALIGNOPS_RESULT_PATH``, which is
the container's ``terminationMessagePath``. The operator never reads storage or Secrets.

A run across nodes has one pod per completion index: it succeeded when every index's pod exited
0 (the result is index 0's, where rank 0 runs), and it failed as soon as any pod did
(``gang_outcome``: the most telling of the ended pods' outcomes names the failure).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Iterable, Mapping

from alignops.operator.names import LABEL_ATTEMPT, LABEL_JOB, LABEL_ROLE, LABEL_ROUND, LABEL_STAGE
from alignops.contract import EXIT_CONFIG, EXIT_SIGTERM, MESSAGE_LIMIT, REASON_RENDEZVOUS_TIMEOUT, StageResult
from alignops.planner import RunOutcome, parse_time

# container waiting reasons that mean "this will not start by itself": shown as the job's condition
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"  # label (and annotation) of an Indexed Job's pods
POD_PROBLEMS = {
    "ErrImagePull": "ImagePullBackOff",
    "ImagePullBackOff": "ImagePullBackOff",
    "InvalidImageName": "InvalidImageName",
    "CreateContainerConfigError": "CreateContainerConfigError",
    "CreateContainerError": "CreateContainerError",
    "RunContainerError": "RunContainerError",
}


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def moment(value: str | None) -> datetime | None:
    """An API time stamp (RFC 3339) as a datetime; None when absent or unreadable."""
    if not value:
        return None
    try:
        return parse_time(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class JobView:
    """A stage run's ``batch/v1`` Job, as far as reconciling needs it."""

    name: str
    aj: str
    stage: str
    attempt: int | None
    round: int | None = None
    role: str = "all"
    uid: str | None = None
    created: str | None = None
    deleting: bool = False
    suspended: bool = False
    nodes: int = 1  # completions of an Indexed Job (a run across nodes): one pod per node
    complete: bool = False
    failed: bool = False
    failed_reason: str | None = None
    failed_message: str | None = None

    @property
    def finished(self) -> bool:
        return self.complete or self.failed

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "JobView":
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        status = body.get("status") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
        failed = conditions.get("Failed")
        spec = body.get("spec") or {}
        return cls(
            name=meta.get("name", ""),
            aj=labels.get(LABEL_JOB, ""),
            stage=labels.get(LABEL_STAGE, ""),
            attempt=_int(labels.get(LABEL_ATTEMPT)),
            round=_int(labels.get(LABEL_ROUND)),
            role=labels.get(LABEL_ROLE, "all"),
            uid=meta.get("uid"),
            created=meta.get("creationTimestamp"),
            deleting=bool(meta.get("deletionTimestamp")),
            suspended=bool(spec.get("suspend")),
            nodes=(_int(spec.get("completions")) or 1) if spec.get("completionMode") == "Indexed" else 1,
            complete="Complete" in conditions,
            failed=failed is not None,
            failed_reason=failed.get("reason") if failed else None,
            failed_message=failed.get("message") if failed else None,
        )


@dataclass(frozen=True)
class Terminated:
    exit_code: int
    reason: str | None
    message: str | None
    signal: int | None = None
    finished_at: str | None = None


@dataclass(frozen=True)
class PodView:
    """A stage run's pod: where it is in its life and, once finished, how it ended."""

    name: str
    job: str  # the owning Job's name (label job-name)
    aj: str
    stage: str
    attempt: int | None
    index: int | None = None  # completion index of an Indexed Job's pod: its node rank
    phase: str = "Pending"
    created: str | None = None
    deleting: bool = False
    ip: str | None = None
    running_since: str | None = None
    unschedulable: str | None = None  # the scheduler's message
    waiting_reason: str | None = None
    waiting_message: str | None = None
    terminated: Terminated | None = None
    reason: str | None = None  # pod-level: Evicted, NodeLost, DeadlineExceeded, ...
    message: str | None = None

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def alive(self) -> bool:
        """Could still be running the workload (or about to): two runs of one stage never overlap."""
        return not self.finished

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "PodView":
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        status = body.get("status") or {}
        container = next(iter(status.get("containerStatuses") or []), {}) or {}
        state = container.get("state") or {}
        waiting = state.get("waiting") or {}
        running = state.get("running") or {}
        terminated = state.get("terminated")
        scheduled = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), {})
        unschedulable = None
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            unschedulable = scheduled.get("message") or "the scheduler found no node for the pod"
        owner = next((r.get("name") for r in meta.get("ownerReferences") or [] if r.get("kind") == "Job"), None)
        return cls(
            name=meta.get("name", ""),
            job=labels.get("job-name") or labels.get("batch.kubernetes.io/job-name") or owner or "",
            aj=labels.get(LABEL_JOB, ""),
            stage=labels.get(LABEL_STAGE, ""),
            attempt=_int(labels.get(LABEL_ATTEMPT)),
            index=_int(labels.get(COMPLETION_INDEX, (meta.get("annotations") or {}).get(COMPLETION_INDEX))),
            phase=status.get("phase") or "Pending",
            created=meta.get("creationTimestamp"),
            deleting=bool(meta.get("deletionTimestamp")),
            ip=status.get("podIP"),
            running_since=running.get("startedAt"),
            unschedulable=unschedulable,
            waiting_reason=waiting.get("reason"),
            waiting_message=waiting.get("message"),
            terminated=Terminated(
                exit_code=int(terminated.get("exitCode", 1)),
                reason=terminated.get("reason"),
                message=terminated.get("message"),
                signal=_int(terminated.get("signal")),
                finished_at=terminated.get("finishedAt"),
            ) if isinstance(terminated, dict) else None,
            reason=status.get("reason"),
            message=status.get("message"),
        )


def pod_outcome(pod: PodView) -> RunOutcome | None:
    """How a finished pod's run ended, for ``planner.record_outcome``; None while it has not ended.

    Exit 0: success (checkpoint and metrics from the result). 143: stopped by SIGTERM after a
    checkpoint (preemption, drain, suspend): resumed, not a failed attempt. 78: configuration error
    (fails the stage at once, with the workload's message). OOMKilled and other exit codes: a failed
    attempt, retried by the planner's rule. A pod that failed without a container state (evicted,
    node lost) is a failed attempt with the pod's reason.
    """
    if not pod.finished:
        return None
    term = pod.terminated
    if term is None:
        reason = pod.reason or "PodFailed"
        message = pod.message or f"pod {pod.name} failed before its container ran"
        return RunOutcome(exit_code=1, reason=reason, message=message[:MESSAGE_LIMIT])
    result = StageResult.decode(term.message)
    known_reason = result.reason if result is not None else None
    text = result.message if result is not None else (term.message or None)
    if text is not None:
        text = str(text)[:MESSAGE_LIMIT]
    result = result or StageResult(None)
    code = term.exit_code
    if code == 0:
        return RunOutcome(exit_code=0, checkpoint_uri=result.checkpoint_uri, metrics=result.metrics,
                          reason="Completed", message=text)
    if term.reason == "OOMKilled":
        return RunOutcome(exit_code=code, metrics=result.metrics, reason="OOMKilled",
                          message=text or "the container exceeded its memory limit (resources.memory)")
    if code == EXIT_SIGTERM:
        return RunOutcome(exit_code=code, metrics=result.metrics, reason="Terminated",
                          message=text or "stopped by SIGTERM after committing a checkpoint")
    if code == EXIT_CONFIG:
        return RunOutcome(exit_code=code, reason="ConfigurationError", message=text or "configuration error")
    detail = text or (f"killed by signal {term.signal}" if term.signal else term.reason or "")
    return RunOutcome(exit_code=code, metrics=result.metrics, reason=known_reason or "Error", message=detail or None)


def newest_per_index(pods: Iterable[PodView]) -> dict[int, PodView]:
    """The newest pod of each completion index (a pod without one counts as index 0): a pod the Job
    controller replaced (a disruption it ignores) no longer speaks for its index."""
    newest: dict[int, PodView] = {}
    for pod in sorted(pods, key=lambda p: (p.created or "", p.name)):
        newest[pod.index or 0] = pod
    return newest


# which ended pod names a failed run: a configuration error, then a pod that failed by itself, then
# a rendezvous that timed out (often because another pod failed first), then a pod that never ran
# (deleted while pending, evicted), then a SIGTERM stop (143, a commit: not a failure of the run)
def _telling(outcome: RunOutcome) -> int:
    if outcome.exit_code == EXIT_CONFIG:
        return 0
    if outcome.reason == REASON_RENDEZVOUS_TIMEOUT:
        return 2
    if outcome.exit_code == EXIT_SIGTERM and outcome.reason == "Terminated":
        return 4
    if outcome.reason in ("Error", "OOMKilled"):
        return 1
    return 3


def gang_outcome(pods: Mapping[int, PodView], nodes: int) -> RunOutcome | None:
    """How a run across ``nodes`` pods ended (``pods``: the newest pod of each index), or None while
    it goes on: success once every index's pod exited 0, with index 0's result; else, once a pod
    ended otherwise, the most telling ended pod's outcome (ties: the earliest to end), its message
    naming the pod and its node. A run whose pods are all gone without success lost its result."""
    ended = {index: pod_outcome(pod) for index, pod in pods.items() if pod.finished}
    if len(ended) == nodes and all(ended.get(i) is not None and ended[i].exit_code == 0 for i in range(nodes)):
        return ended[0]
    failed = [(index, o) for index, o in ended.items() if o is not None and o.exit_code != 0]
    if not failed:
        return None
    index, outcome = min(failed, key=lambda f: (_telling(f[1]), pods[f[0]].terminated.finished_at if pods[f[0]].terminated else "", f[0]))
    where = f"node {index} of {nodes} (pod {pods[index].name})"
    return replace(outcome, message=f"{where}: {outcome.message}"[:MESSAGE_LIMIT] if outcome.message else where)


def pod_problem(pod: PodView) -> tuple[str, str] | None:
    """(reason, message) when a pending pod cannot start by itself: unschedulable, image pull
    failures, a missing Secret/ConfigMap key. None while it is just starting."""
    if pod.finished:
        return None
    if pod.unschedulable:
        return "Unschedulable", pod.unschedulable
    if pod.waiting_reason in POD_PROBLEMS:
        return POD_PROBLEMS[pod.waiting_reason], pod.waiting_message or pod.waiting_reason
    return None


def seconds_between(start: str | None, end: str | None) -> float | None:
    a, b = moment(start), moment(end)
    if a is None or b is None:
        return None
    return max(0.0, (b - a).total_seconds())
