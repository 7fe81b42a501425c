"""The work queue between kopf's watch events and ``reconcile()``.

kopf handlers only call ``request(key)`` and return (no handler ever waits or sleeps). Per
AlignmentJob at most one reconcile runs at a time; requests that arrive meanwhile are coalesced
into one more pass. A reconcile may ask to be woken later (a retry's backoff, a TTL, the next
progress poll): one timer per job keeps the earliest wake-up. A resync timer requests every job
every ``resync_seconds`` (spread over the interval), so nothing depends on an event not being lost.
Failures are retried with exponential delay (1 s, 2 s, 4 s ... 5 min), or after the delay of a
``kopf.TemporaryError``.

This replaces kopf timers and daemons on purpose: both put a finalizer on every AlignmentJob (an
extra write per job, and a job that cannot be deleted while the operator is down), and a timer
reacts only at its interval.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping

import aiohttp
import kopf

from alignops.metrics.operator import OperatorMetrics
from alignops.operator.executor import Executor, Key, StaleObject
from alignops.operator.kube import KubeApi
from alignops.operator.observe import JobView, PodView
from alignops.operator.progress import fetch_progress
from alignops.operator.reconcile import Observed, Progress, reconcile
from alignops.operator.settings import OperatorSettings

log = logging.getLogger("alignops.operator")
Obj = dict[str, Any]
MAX_BACKOFF_SECONDS = 300.0
STALE_RETRIES = 5


@dataclass
class _Slot:
    running: bool = False
    dirty: bool = False
    timer: asyncio.TimerHandle | None = None
    due: float = 0.0
    failures: int = 0
    requested_at: float | None = None


def _resource_version(body: Mapping[str, Any] | None) -> int | None:
    try:
        return int((body or {}).get("metadata", {}).get("resourceVersion"))
    except (TypeError, ValueError):
        return None


class Controller:
    def __init__(self, settings: OperatorSettings, api: KubeApi | None = None, metrics: OperatorMetrics | None = None,
                 children: Callable[[Key], tuple[Iterable[JobView], Iterable[PodView]]] | None = None):
        self.settings = settings
        self.api = api or KubeApi(workers=settings.api_workers)
        self.metrics = metrics or OperatorMetrics()
        self.executor = Executor(self.api, settings, self.metrics)
        self.bodies: dict[Key, Obj] = {}
        self._children = children
        self._slots: dict[Key, _Slot] = {}
        self._tasks: set[asyncio.Task] = set()
        self._resync: asyncio.Task | None = None
        self._progress: dict[Key, dict[str, tuple[float, Progress | None]]] = {}  # pod -> (polled at, answer)
        self._session: aiohttp.ClientSession | None = None
        self.latencies: deque[float] = deque(maxlen=100_000)  # trigger -> reconcile applied, seconds
        self.reconciles = 0

    # -- wiring ---------------------------------------------------------------------------------------------
    def bind_indexes(self, jobs_index: Mapping[Key, Iterable[JobView]], pods_index: Mapping[Key, Iterable[PodView]]) -> None:
        """Read children from kopf's in-memory indexes (kept current by the watch streams)."""
        if self._children is None:
            self._children = lambda key: (tuple(jobs_index.get(key, ())), tuple(pods_index.get(key, ())))

    def start(self) -> None:
        self._resync = asyncio.get_running_loop().create_task(self._resync_loop())

    async def stop(self) -> None:
        for task in [self._resync, *self._tasks]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*[t for t in [self._resync, *self._tasks] if t is not None], return_exceptions=True)
        for slot in self._slots.values():
            if slot.timer is not None:
                slot.timer.cancel()
        await self.executor.drain()
        if self._session is not None:
            await self._session.close()

    # -- events in ------------------------------------------------------------------------------------------
    def observe_body(self, body: Obj) -> None:
        """Keep the freshest copy of an AlignmentJob: a watch event never replaces a newer object
        that this operator's own status write returned."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        known = self.bodies.get(key)
        new_rv, old_rv = _resource_version(body), _resource_version(known)
        if known is not None and new_rv is not None and old_rv is not None and new_rv < old_rv \
                and (known.get("metadata") or {}).get("uid") == meta.get("uid"):
            return
        self.bodies[key] = body

    def forget(self, key: Key) -> None:
        self.bodies.pop(key, None)
        self._progress.pop(key, None)
        self.executor.expectations.forget(key)
        slot = self._slots.pop(key, None)
        if slot is not None and slot.timer is not None:
            slot.timer.cancel()
        self.metrics.forget(*key)

    def request(self, key: Key, delay: float = 0.0) -> None:
        """Reconcile ``key`` now (or in ``delay`` seconds); never blocks."""
        loop = asyncio.get_running_loop()
        slot = self._slots.setdefault(key, _Slot())
        if delay > 0:
            due = loop.time() + delay
            if slot.timer is not None:
                if slot.due <= due:
                    return  # an earlier wake-up is already set
                slot.timer.cancel()
            slot.timer, slot.due = loop.call_later(delay, self._wake, key), due
            return
        if slot.requested_at is None:
            slot.requested_at = time.perf_counter()
        if slot.running:
            slot.dirty = True
            return
        slot.running = True
        task = loop.create_task(self._drain(key, slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _wake(self, key: Key) -> None:
        slot = self._slots.get(key)
        if slot is None:
            return
        slot.timer = None
        self.request(key)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            for key in list(self.bodies):
                self.request(key, delay=random.uniform(0.0, self.settings.resync_seconds))

    # -- the loop per job ----------------------------------------------------------------------------------
    async def _drain(self, key: Key, slot: _Slot) -> None:
        try:
            while True:
                slot.dirty = False
                requested_at, slot.requested_at = slot.requested_at, None
                delay = await self._reconcile_safely(key, slot)
                if requested_at is not None:
                    self.latencies.append(time.perf_counter() - requested_at)
                if delay is not None and key in self.bodies:
                    self.request(key, delay)
                if not slot.dirty or key not in self.bodies:
                    break
        finally:
            slot.running = False
            if key not in self.bodies and slot.timer is None and self._slots.get(key) is slot:
                del self._slots[key]  # a child's event for a job that is gone (or not seen yet)

    async def _reconcile_safely(self, key: Key, slot: _Slot) -> float | None:
        started = time.perf_counter()
        failed = False
        try:
            delay = await self.reconcile_once(key)
            slot.failures = 0
            return delay
        except kopf.TemporaryError as exc:
            failed = True
            slot.failures += 1
            log.warning("reconcile of %s/%s failed, will retry: %s", *key, exc)
            return exc.delay if exc.delay is not None else self._backoff(slot.failures)
        except Exception:  # noqa: BLE001 - a bug or an unexpected answer: retry, slower each time
            failed = True
            slot.failures += 1
            log.exception("reconcile of %s/%s failed", *key)
            return self._backoff(slot.failures)
        finally:
            self.reconciles += 1
            self.metrics.reconciled(time.perf_counter() - started, failed)

    @staticmethod
    def _backoff(failures: int) -> float:
        return min(2.0 ** (failures - 1), MAX_BACKOFF_SECONDS)

    def observed(self, key: Key) -> Observed:
        jobs, pods = self._children(key) if self._children is not None else ((), ())
        jobs, pods = list(jobs), list(pods)
        expectations = self.executor.expectations
        expectations.expire(key, time.monotonic())
        seen = {j.name for j in jobs}
        created = expectations.created.get(key, {})
        deleted = expectations.deleted.get(key, {})
        for name in [n for n in created if n in seen]:
            del created[name]  # the watch caught up
        for name in [n for n in deleted if n not in seen]:
            del deleted[name]
        # writes not visible yet: a created Job exists, a deleted one is going
        jobs += [JobView(name=name, aj=key[1], stage="", attempt=None) for name in created]
        jobs = [replace(j, deleting=True) if j.name in deleted else j for j in jobs]
        progress = {pod: value for pod, (_, value) in self._progress.get(key, {}).items() if value is not None}
        return Observed(jobs=tuple(jobs), pods=tuple(pods), progress=progress,
                        create_errors=dict(expectations.create_errors.get(key, {})))

    async def reconcile_once(self, key: Key) -> float | None:
        """One pass: poll progress if due, reconcile, apply. Returns when to come back (or None)."""
        for _ in range(STALE_RETRIES):
            body = self.bodies.get(key)
            if body is None:
                return None
            observed = self.observed(key)
            await self._poll_progress(key, body, observed)
            observed = self.observed(key)
            result = reconcile(body, observed, self.settings, datetime.now(timezone.utc))
            try:
                written, extra = await self.executor.apply(body, result)
            except StaleObject as stale:
                if stale.fresh is None:
                    self.forget(key)
                    return None
                self.bodies[key] = stale.fresh
                continue
            if written is not None:
                self.observe_body(written)
            delays = [d for d in (result.requeue_after, extra) if d is not None]
            return min(delays) if delays else None
        raise kopf.TemporaryError(f"{key[0]}/{key[1]} kept changing while it was reconciled", delay=1.0)

    # -- progress ------------------------------------------------------------------------------------------
    async def _poll_progress(self, key: Key, body: Obj, observed: Observed) -> None:
        """Poll ``/progress`` of running pods whose stage has progressDeadlineSeconds, at most every
        ``progress_poll_seconds`` per pod."""
        port = self.settings.stage_metrics_port
        known = self._progress.setdefault(key, {})
        live = {p.name for p in observed.pods}
        for name in [n for n in known if n not in live]:
            del known[name]
        if not port:
            return
        deadlines = {s.get("name"): s.get("progressDeadlineSeconds") for s in (body.get("spec") or {}).get("stages") or []}
        now = time.monotonic()
        # of a run across nodes only index 0's pod serves /progress (global rank 0 runs there)
        due = [p for p in observed.pods if p.phase == "Running" and p.ip and deadlines.get(p.stage) and not p.index
               and now - known.get(p.name, (float("-inf"), None))[0] >= self.settings.progress_poll_seconds]
        if not due:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession()
        answers = await asyncio.gather(*(fetch_progress(self._session, p.ip, port) for p in due))
        for pod, answer in zip(due, answers):
            known[pod.name] = (now, answer)
