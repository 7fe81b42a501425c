"""The thin executor: carries out one ``Reconciliation`` against the API server.

Order (see ``alignops.operator.reconcile``): the status first, as a merge patch with the object's
resourceVersion as precondition (409: the reconcile saw a stale object and is repeated on a fresh
one, with nothing else done); then the actions (children adopted with owner references, so deleting
the AlignmentJob deletes them); then Events and metrics. Creating what exists already (409) is
success: child names are deterministic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import kopf

from alignops.metrics.operator import OperatorMetrics
from alignops.operator.kube import ApiError, KubeApi, aj_path, batch_path, core_path
from alignops.operator.reconcile import (
    CreateError,
    CreateRun,
    DeleteAlignmentJob,
    DeleteRun,
    Event,
    Reconciliation,
    merge_patch,
)
from alignops.operator.settings import OperatorSettings
from alignops.planner import rfc3339, utcnow

log = logging.getLogger("alignops.operator")
Obj = dict[str, Any]
Key = tuple[str, str]  # an AlignmentJob's (namespace, name)
EXPECTATION_SECONDS = 60.0
COMPONENT = "alignops-operator"


class StaleObject(Exception):
    """The status precondition failed: the object changed since it was read."""

    def __init__(self, fresh: Obj | None):
        super().__init__("the AlignmentJob changed while it was reconciled")
        self.fresh = fresh


def is_permanent(exc: ApiError) -> bool:
    """The API server refused the object itself: retrying the same request cannot help."""
    return exc.status in (400, 422)


def temporary(exc: ApiError, what: str) -> kopf.TemporaryError:
    """A failed API call as kopf's TemporaryError, with the server's Retry-After hint (429) or none
    (the controller then backs off exponentially)."""
    delay = None
    details = (exc.body.get("details") or {}) if isinstance(exc.body, dict) else {}
    if exc.status == 429 and details.get("retryAfterSeconds"):
        delay = float(details["retryAfterSeconds"])
    return kopf.TemporaryError(f"{what}: {exc}", delay=delay)


@dataclass
class Expectations:
    """Writes the watch streams have not shown yet (the controller-runtime "expectations"): a child
    created a moment ago is not created again, one deleted is not deleted again. Keyed by the
    AlignmentJob (namespace, name), then the child's name."""

    created: dict[Key, dict[str, float]] = field(default_factory=dict)
    deleted: dict[Key, dict[str, float]] = field(default_factory=dict)
    create_errors: dict[Key, dict[str, CreateError]] = field(default_factory=dict)

    def expire(self, key: Key, now: float) -> None:
        for table in (self.created, self.deleted):
            entries = table.get(key, {})
            for name in [n for n, until in entries.items() if until < now]:
                del entries[name]

    def forget(self, key: Key) -> None:
        for table in (self.created, self.deleted, self.create_errors):
            table.pop(key, None)


class Executor:
    def __init__(self, api: KubeApi, settings: OperatorSettings, metrics: OperatorMetrics):
        self.api = api
        self.settings = settings
        self.metrics = metrics
        self.expectations = Expectations()
        self._events: asyncio.Queue | None = None
        self._poster: asyncio.Task | None = None

    async def apply(self, body: Mapping[str, Any], result: Reconciliation) -> tuple[Obj | None, float | None]:
        """Carry out ``result`` for the AlignmentJob ``body``. Returns (the object after the status
        write or None, an extra requeue delay or None). Raises StaleObject or kopf.TemporaryError."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        written: Obj | None = None
        requeue: float | None = None
        if result.status is not None:
            written = await self._write_status(body, result.status)
            if written is None:
                return None, None  # the AlignmentJob is gone
        owner = written or body
        for action in result.actions:
            if isinstance(action, CreateRun):
                if not await self._create_run(owner, action):
                    requeue = 0.5  # reconcile again: it shows the error (or fails a refused Job)
            elif isinstance(action, DeleteRun):
                await self._delete_run((namespace, name), action)
            elif isinstance(action, DeleteAlignmentJob):
                await self._delete_self(namespace, name)
        for event in result.events:
            self._post_later(owner, event)
        for obs in result.observations:
            self.metrics.observe(namespace, name, obs.kind, obs.stage, obs.value, obs.reason)
        if result.phase is not None:
            self.metrics.set_phase(namespace, name, result.phase)
        return written, requeue

    async def _write_status(self, body: Mapping[str, Any], status: Obj) -> Obj | None:
        meta = body["metadata"]
        patch = {"metadata": {"resourceVersion": meta.get("resourceVersion")},
                 "status": merge_patch(body.get("status") or {}, status)}
        path = aj_path(meta["namespace"], meta["name"], "status")
        try:
            return await self.api.merge_patch(path, patch)
        except ApiError as exc:
            if exc.status == 404:
                return None
            if exc.status == 409:
                raise StaleObject(await self.api.get(aj_path(meta["namespace"], meta["name"]))) from None
            raise temporary(exc, f"writing the status of {meta['namespace']}/{meta['name']}") from None

    async def _create_run(self, owner: Mapping[str, Any], action: CreateRun) -> bool:
        meta = owner["metadata"]
        key, namespace = (meta["namespace"], meta["name"]), meta["namespace"]
        configmap, job = dict(action.configmap), dict(action.job)
        service = dict(action.service) if action.service is not None else None
        kopf.adopt([configmap, job] + ([service] if service else []), owner=owner)
        try:
            # the ConfigMap first: the pod never waits in ContainerCreating for its config; the
            # Service before the Job: the pods' DNS names exist as soon as they do
            await self.api.create(core_path(namespace, "configmaps"), configmap)
            if service is not None:
                await self.api.create(core_path(namespace, "services"), service)
            await self.api.create(batch_path(namespace), job)
        except ApiError as exc:
            error = CreateError(f"{exc.status} {exc.reason}: {exc.message}"[:1024], is_permanent(exc))
            self.expectations.create_errors.setdefault(key, {})[action.name] = error
            log.warning("cannot create Job %s/%s: %s", namespace, action.name, exc)
            return False
        self.expectations.create_errors.get(key, {}).pop(action.name, None)
        self.expectations.created.setdefault(key, {})[action.name] = time.monotonic() + EXPECTATION_SECONDS
        return True

    async def _delete_run(self, key: Key, action: DeleteRun) -> None:
        namespace = key[0]
        if action.name in self.expectations.deleted.get(key, {}):
            return
        try:
            # Background: the Job goes now; its pod gets SIGTERM and terminationGracePeriodSeconds
            # (stage_grace_seconds) to commit a checkpoint, then the garbage collector removes it
            await self.api.delete(batch_path(namespace, action.name), propagation="Background")
            await self.api.delete(core_path(namespace, "configmaps", action.name), propagation="Background")
            if action.service:
                await self.api.delete(core_path(namespace, "services", action.name), propagation="Background")
        except ApiError as exc:
            raise temporary(exc, f"deleting Job {namespace}/{action.name}") from None
        self.expectations.deleted.setdefault(key, {})[action.name] = time.monotonic() + EXPECTATION_SECONDS
        self.expectations.created.get(key, {}).pop(action.name, None)

    async def _delete_self(self, namespace: str, name: str) -> None:
        try:
            await self.api.delete(aj_path(namespace, name), propagation="Background")
        except ApiError as exc:
            raise temporary(exc, f"deleting AlignmentJob {namespace}/{name}") from None

    async def post_event(self, obj: Mapping[str, Any], event: Event) -> None:
        """A core/v1 Event about the AlignmentJob (``kubectl describe aj`` shows it)."""
        meta = obj["metadata"]
        now = rfc3339(utcnow())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")},
            "reason": event.reason[:128],
            "message": event.message[:1024],
            "type": event.type,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": COMPONENT,
        }
        try:
            await self.api.create(core_path(meta["namespace"], "events"), body)
        except ApiError as exc:  # an Event is best effort: the status holds the truth
            log.info("cannot post event %s on %s/%s: %s", event.reason, meta["namespace"], meta["name"], exc)

    def _post_later(self, obj: Mapping[str, Any], event: Event) -> None:
        """Events go out one at a time from a queue, after the writes that matter: under a burst
        they never delay a Job's creation or a status."""
        if self._events is None:
            self._events = asyncio.Queue()
            self._poster = asyncio.get_running_loop().create_task(self._post_events())
        self._events.put_nowait((dict(obj), event))

    async def _post_events(self) -> None:
        assert self._events is not None
        while True:
            obj, event = await self._events.get()
            try:
                await self.post_event(obj, event)
            finally:
                self._events.task_done()

    async def drain(self, timeout: float = 5.0) -> None:
        """Post the queued Events (at shutdown), then stop the poster."""
        if self._events is not None:
            try:
                await asyncio.wait_for(self._events.join(), timeout)
            except asyncio.TimeoutError:
                log.warning("%d events were not posted before shutdown", self._events.qsize())
        if self._poster is not None:
            self._poster.cancel()
