"""
A test-side "kubelet + Job controller + scheduler" that runs Jobs' containers as local processes.

:class:`NodeAgent` talks to the API server over HTTP (like a real node would) and:

* watches ``batch/v1`` Jobs in all namespaces; for each Job that is not suspended it creates Pods
  (``<job>-<5 chars>``, the template's labels plus ``job-name`` / ``batch.kubernetes.io/job-name``,
  an ``ownerReference`` to the Job), honouring ``parallelism``, ``completions`` (also ``Indexed``:
  each index's pod gets the completion-index label and annotation, ``JOB_COMPLETION_INDEX`` and the
  hostname ``<job>-<index>``), ``backoffLimit`` (a failed pod is replaced by a new one;
  ``restartPolicy: OnFailure`` is treated like ``Never``), ``podFailurePolicy`` (exit-code and
  pod-condition rules: ``FailJob`` fails the Job at once with reason ``PodFailurePolicy``, ``Ignore``
  does not count the pod), ``activeDeadlineSeconds`` (pods are deleted, the Job fails with
  ``DeadlineExceeded``), ``suspend`` (no pods; running pods are deleted) and
  ``ttlSecondsAfterFinished``; it writes the Job's status like the real controller does
  (``active/ready/succeeded/failed``, ``startTime``, ``completionTime``, conditions
  ``SuccessCriteriaMet`` + ``Complete`` or ``FailureTarget`` + ``Failed`` with reason
  ``BackoffLimitExceeded`` / ``DeadlineExceeded``);
* runs each pod's first container as a local process: ``command`` + ``args`` (``$(VAR)`` expanded,
  ``python``/``python3`` replaced by ``sys.executable``, an image without a command can be mapped
  with ``agent.image_entrypoints``), with the container's ``env`` (values, ``secretKeyRef``,
  ``configMapKeyRef``, ``fieldRef``) and ``envFrom``; volumes are materialised in a per-pod
  directory (configMap/secret/projected: files; persistentVolumeClaim: a directory shared by all pods
  using the claim; emptyDir and others: an empty directory) and every ``mountPath`` (and the
  ``terminationMessagePath``) found in command, args, env values and ``workingDir`` is rewritten to
  the local directory.  A missing secret/configmap keeps the pod Pending with
  ``CreateContainerConfigError`` / ``ContainerCreating`` until it appears, as on a real node;
* writes the pod status: Pending -> Running -> Succeeded/Failed with
  ``containerStatuses[0].state.terminated`` (``exitCode``, ``reason`` Completed/Error/OOMKilled,
  ``message`` = the termination message file, at most 4096 bytes, or the log tail with
  ``FallbackToLogsOnError``);
* emulates the cluster DNS of pods with a ``subdomain``: every pod shares this machine's network, so
  an env value that is a pod's DNS name ``<hostname>.<subdomain>[.<namespace>[.svc[.cluster.local]]]``
  becomes ``127.0.0.1`` when a Service named ``<subdomain>`` exists in the pod's namespace (without
  one the name stays, and does not resolve, as on a cluster); ``HOSTNAME`` is the pod's hostname;
* on pod deletion (directly, or by the garbage collector when its Job is deleted with a cascading
  policy) sends SIGTERM to the process group, waits the grace period, then SIGKILL; writes the
  final status and completes the (graceful) deletion;
* captures stdout+stderr per pod (``agent.log_path(ns, pod)``, ``agent.logs(ns, pod)``; also served
  as ``kubectl logs`` when the emulator is in this process);
* fault injection by job (or bare pod) name, ``re.search`` semantics::

      agent.faults.unschedulable(r'^train-')   # Pending, PodScheduled=False/Unschedulable
      agent.faults.unschedulable(r'^train-', index=1)  # only index 1 of an Indexed Job
      agent.faults.image_pull(r'^rollout-')    # Pending, waiting ErrImagePull -> ImagePullBackOff
      agent.faults.oom(r'^sft-', after=0.5)    # killed, exitCode 137, reason OOMKilled
      agent.faults.clear()                     # pending pods then get scheduled / pulled

Bare pods (no Job owner) are scheduled and run too (``run_bare_pods``), without restarts.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import attrs

from .emulator import now_rfc3339

logger = logging.getLogger(__name__)

Obj = dict[str, Any]
_ALPHABET = 'bcdfghjklmnpqrstvwxz2456789'
_PYTHON = re.compile(r'^(?:.*/)?python(?:3(?:\.\d+)?)?$')
MAX_TERMINATION_MESSAGE = 4096


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f'{status}: {body}')
        self.status = status
        self.body = body


class _Client:
    """A minimal async Kubernetes client on aiohttp (JSON only)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip('/')
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> '_Client':
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                                             headers={'User-Agent': 'alignops-test-node-agent'})
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.session is not None
        await self.session.close()

    async def request(self, method: str, path: str, body: Any = None, params: Mapping[str, str] | None = None,
                      content_type: str = 'application/json') -> Any:
        assert self.session is not None
        data = json.dumps(body).encode() if body is not None else None
        async with self.session.request(method, self.url + path, data=data, params=params,
                                        headers={'Content-Type': content_type},
                                        timeout=aiohttp.ClientTimeout(total=30)) as resp:
            text = await resp.text()
            payload = json.loads(text) if text and resp.content_type == 'application/json' else text
            if resp.status >= 400:
                raise ApiError(resp.status, payload)
            return payload

    async def get(self, path: str) -> Obj | None:
        try:
            return await self.request('GET', path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def patch(self, path: str, patch: Obj) -> Obj | None:
        try:
            return await self.request('PATCH', path, patch, content_type='application/merge-patch+json')
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def delete(self, path: str, body: Obj | None = None, params: Mapping[str, str] | None = None) -> Obj | None:
        try:
            return await self.request('DELETE', path, body, params=params)
        except ApiError as e:
            if e.status in (404, 409):
                return None
            raise

    async def watch(self, path: str, on_event: Callable[[str, Obj], Any], on_ready: Callable[[], None]) -> None:
        """List + watch forever (resuming by resourceVersion, relisting on 410 Gone)."""
        assert self.session is not None
        rv: str | None = None
        while True:
            try:
                if rv is None:
                    listing = await self.request('GET', path)
                    rv = listing['metadata']['resourceVersion']
                    for item in listing.get('items', []):
                        await on_event('ADDED', item)
                    on_ready()
                params = {'watch': 'true', 'resourceVersion': rv, 'timeoutSeconds': '300'}
                async with self.session.get(self.url + path, params=params) as resp:
                    async for line in resp.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        if event['type'] == 'ERROR':
                            rv = None  # 410 Gone or alike: relist
                            break
                        if event['type'] == 'BOOKMARK':
                            continue
                        rv = event['object']['metadata'].get('resourceVersion', rv)
                        await on_event(event['type'], event['object'])
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError) as e:
                logger.debug('watch %s interrupted: %r', path, e)
                await asyncio.sleep(0.2)
            except Exception:
                logger.exception('watch %s failed', path)
                await asyncio.sleep(0.5)


# ---------------------------------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------------------------------

@attrs.define
class _Fault:
    kind: str
    pattern: re.Pattern[str]
    message: str | None = None
    after: float = 0.0
    index: int | None = None  # only this completion index of an Indexed Job (None: every pod)


class Faults:
    """Per-test fault injection, matched against the Job's name (or a bare pod's name)."""

    def __init__(self) -> None:
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()

    def unschedulable(self, name_regex: str, message: str | None = None, index: int | None = None) -> None:
        """Pods stay Pending: condition PodScheduled=False, reason Unschedulable (message derived
        from the pod's resource requests, e.g. ``0/1 nodes are available: 1 Insufficient nvidia.com/gpu.``).
        ``index``: only that completion index's pods (one node of a run across nodes never gets one)."""
        self._add(_Fault('unschedulable', re.compile(name_regex), message, index=index))

    def image_pull(self, name_regex: str, message: str | None = None) -> None:
        """Pods are scheduled but stay Pending: waiting ErrImagePull, then ImagePullBackOff."""
        self._add(_Fault('image_pull', re.compile(name_regex), message))

    def oom(self, name_regex: str, after: float = 0.0) -> None:
        """The process is SIGKILLed ``after`` seconds after it starts: exitCode 137, OOMKilled."""
        self._add(_Fault('oom', re.compile(name_regex), after=after))

    def clear(self, kind: str | None = None) -> None:
        with self._lock:
            self._faults = [f for f in self._faults if kind is not None and f.kind != kind]

    def _add(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def find(self, kind: str, name: str, index: int | None = None) -> _Fault | None:
        with self._lock:
            return next((f for f in self._faults if f.kind == kind and f.pattern.search(name)
                         and (f.index is None or f.index == index)), None)


# ---------------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------------

@attrs.define(eq=False)
class PodRun:
    namespace: str
    name: str
    uid: str
    job_uid: str | None
    index: int | None
    pod: Obj
    dir: Path
    log_path: Path
    phase: str = 'Pending'
    process: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    deleting: bool = False
    deleted: bool = False
    oom_killed: bool = False
    killed_by_signal: int | None = None
    waiting: tuple[str, str] | None = None  # the (reason, message) last written while Pending
    scheduled_event: bool = False
    spawning: bool = False  # between the last deletion check and the process's creation

    @property
    def finished(self) -> bool:
        return self.phase in ('Succeeded', 'Failed')


@attrs.define(eq=False)
class JobState:
    uid: str
    namespace: str
    name: str
    job: Obj
    pods: list[PodRun] = attrs.field(factory=list)
    succeeded: int = 0
    failed: int = 0
    succeeded_indexes: set[int] = attrs.field(factory=set)
    start_time: str | None = None
    start_mono: float | None = None
    finished: bool = False
    last_status: Obj | None = None
    next_pod_at: float = 0.0
    failure_target: tuple[str, str] | None = None  # (reason, message) of a podFailurePolicy FailJob rule
    lock: asyncio.Lock = attrs.field(factory=asyncio.Lock)


# ---------------------------------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------------------------------

class NodeAgent:
    """Runs Jobs' pods as local processes against the API server at ``api.url``.

    ``api`` is an :class:`~tests.k8s.server.ApiServer` (or anything with ``url``; with an
    ``emulator`` attribute the agent also serves ``kubectl logs``).  ``workdir`` holds one directory
    per pod (volumes, the termination message, ``<container>.log``).
    """

    def __init__(self, api: Any, workdir: str | Path | None = None, node_name: str = 'emulated-node',
                 retry_delay: float = 0.2, tick: float = 0.1, emit_events: bool = True,
                 run_bare_pods: bool = True, env: Mapping[str, str] | None = None) -> None:
        self.api = api
        self.url: str = api.url if hasattr(api, 'url') else str(api)
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix='node-agent-'))
        self.node_name = node_name
        self.retry_delay = retry_delay
        self.tick = tick
        self.emit_events = emit_events
        self.run_bare_pods = run_bare_pods
        #: Extra environment for every process (on top of this process's environment).
        self.env: dict[str, str] = dict(env or {})
        #: ``{image regex: argv}`` used when a container has no ``command`` (the image's ENTRYPOINT).
        self.image_entrypoints: dict[str, list[str]] = {}
        self.faults = Faults()
        self.jobs: dict[str, JobState] = {}
        self.pods: dict[tuple[str, str], PodRun] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._ready_parts: set[str] = set()
        self._stop: asyncio.Event | None = None
        self._client: _Client | None = None
        self._ip_counter = 1
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Tracebacks of the agent's own failures (assert it is empty at the end of a test).
        self.errors: list[str] = []

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, timeout: float = 20) -> 'NodeAgent':
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name='node-agent', daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError(f'the node agent did not start; errors: {self.errors}')
        emulator = getattr(self.api, 'emulator', None)
        if emulator is not None:
            emulator.log_provider = self._log_provider
        return self

    def stop(self, timeout: float = 15) -> None:
        """Stop watching and SIGKILL every process still running (the API is not touched)."""
        emulator = getattr(self.api, 'emulator', None)
        if emulator is not None and emulator.log_provider == self._log_provider:
            emulator.log_provider = None
        if self._loop is not None and self._stop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for run in list(self.pods.values()):  # belt and braces, e.g. if the loop died
            self._kill_group(run, signal.SIGKILL)

    def __enter__(self) -> 'NodeAgent':
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except Exception:
            self._record_error()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with _Client(self.url) as client:
            self._client = client
            tasks = [
                asyncio.create_task(client.watch('/apis/batch/v1/jobs', self._on_job, lambda: self._part_ready('jobs'))),
                asyncio.create_task(client.watch('/api/v1/pods', self._on_pod, lambda: self._part_ready('pods'))),
                asyncio.create_task(self._ticker()),
            ]
            try:
                await self._stop.wait()
            finally:
                for t in tasks:
                    t.cancel()
                procs = []
                for run in list(self.pods.values()):
                    self._kill_group(run, signal.SIGKILL)
                    if run.process is not None and run.process.returncode is None:
                        procs.append(run.process.wait())
                if procs:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(asyncio.gather(*procs, return_exceptions=True), timeout=5)
                pending = tasks + [r.task for r in self.pods.values() if r.task is not None] + list(self._tasks)
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                self._record_error()
        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _part_ready(self, part: str) -> None:
        self._ready_parts.add(part)
        if {'jobs', 'pods'} <= self._ready_parts:
            self._ready.set()

    def _record_error(self) -> None:
        import traceback
        tb = traceback.format_exc()
        self.errors.append(tb)
        logger.error('node agent error:\n%s', tb)

    # -- public helpers ----------------------------------------------------------------------------

    def log_path(self, namespace: str, pod: str) -> Path:
        """Where the pod's first container writes stdout+stderr."""
        run = self.pods.get((namespace, pod))
        if run is not None:
            return run.log_path
        return self.workdir / 'pods' / f'{namespace}_{pod}' / 'container.log'

    def logs(self, namespace: str, pod: str) -> str:
        path = self.log_path(namespace, pod)
        return path.read_text(errors='replace') if path.exists() else ''

    def pods_of(self, job_name: str, namespace: str = 'default') -> list[PodRun]:
        """The pods the agent created for a Job (oldest first)."""
        return [r for r in list(self.pods.values()) if r.namespace == namespace and
                r.pod['metadata'].get('labels', {}).get('job-name') == job_name]

    def pod_dir(self, namespace: str, pod: str) -> Path:
        return self.workdir / 'pods' / f'{namespace}_{pod}'

    def _log_provider(self, namespace: str, pod: str, container: str | None) -> str | None:
        path = self.log_path(namespace, pod)
        return path.read_text(errors='replace') if path.exists() else None

    # -- events from the API -----------------------------------------------------------------------

    async def _on_job(self, etype: str, job: Obj) -> None:
        try:
            uid = job['metadata']['uid']
            if etype == 'DELETED':
                self.jobs.pop(uid, None)
                return
            state = self.jobs.get(uid)
            if state is None:
                if self._job_finished(job):
                    return  # finished before we saw it (e.g. by a previous agent)
                state = self.jobs[uid] = JobState(uid, job['metadata']['namespace'], job['metadata']['name'], job)
            state.job = job
            await self._reconcile_job(state)
        except Exception:
            self._record_error()

    async def _on_pod(self, etype: str, pod: Obj) -> None:
        try:
            meta = pod['metadata']
            key = (meta['namespace'], meta['name'])
            run = self.pods.get(key)
            if run is not None and run.uid != meta.get('uid'):
                return
            if run is None:
                if etype != 'DELETED' and self.run_bare_pods and not self._job_owner(pod) and \
                        pod.get('status', {}).get('phase', 'Pending') == 'Pending' and \
                        not meta.get('deletionTimestamp') and pod.get('spec', {}).get('nodeName') in (None, '', self.node_name):
                    await self._adopt_bare_pod(pod)
                return
            run.pod = pod
            if etype == 'DELETED':
                run.deleted = True
                if not run.deleting:
                    self._spawn(self._terminate(run, grace=None))
            elif meta.get('deletionTimestamp') and not run.deleting:
                self._spawn(self._terminate(run, grace=meta.get('deletionGracePeriodSeconds')))
        except Exception:
            self._record_error()

    @staticmethod
    def _job_owner(pod: Obj) -> Obj | None:
        for ref in pod['metadata'].get('ownerReferences') or []:
            if ref.get('kind') == 'Job' and ref.get('controller'):
                return ref
        return None

    @staticmethod
    def _job_finished(job: Obj) -> bool:
        return any(c.get('type') in ('Complete', 'Failed') and c.get('status') == 'True'
                   for c in job.get('status', {}).get('conditions') or [])

    # -- the Job controller ------------------------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            for state in list(self.jobs.values()):
                try:
                    await self._reconcile_job(state)
                except Exception:
                    self._record_error()
            for run in list(self.pods.values()):
                if run.phase == 'Pending' and run.task is None and not run.deleting and not run.deleted:
                    run.task = asyncio.create_task(self._pod_lifecycle(run))

    async def _reconcile_job(self, state: JobState) -> None:
        async with state.lock:
            await self._reconcile_job_locked(state)

    async def _reconcile_job_locked(self, state: JobState) -> None:
        job = state.job
        spec = job.get('spec', {})
        if state.finished or job['metadata'].get('deletionTimestamp') or self._job_finished(job):
            state.finished = True
            return
        active = [r for r in state.pods if not r.finished and not r.deleting]
        if spec.get('suspend'):
            for run in active:
                await self._client_delete_pod(run)
            if state.start_time is not None:
                await self._write_job_status(state, suspended=True)
            return

        # Finish?
        completions = int(spec.get('completions', 1) or 1)
        indexed = spec.get('completionMode') == 'Indexed'
        done = len(state.succeeded_indexes) if indexed else state.succeeded
        backoff_limit = int(spec.get('backoffLimit', 6))
        deadline = spec.get('activeDeadlineSeconds')
        if done >= completions:
            await self._finish_job(state, 'Complete', None, None)
            return
        if state.failure_target is not None:
            await self._finish_job(state, 'Failed', *state.failure_target)
            return
        if state.failed > backoff_limit:
            await self._finish_job(state, 'Failed', 'BackoffLimitExceeded', 'Job has reached the specified backoff limit')
            return
        if deadline is not None and state.start_mono is not None and time.monotonic() - state.start_mono >= float(deadline):
            await self._finish_job(state, 'Failed', 'DeadlineExceeded', 'Job was active longer than specified deadline')
            return

        # Create pods up to parallelism.
        parallelism = int(spec.get('parallelism', 1) if spec.get('parallelism') is not None else 1)
        wanted = min(parallelism, completions - done) - len(active)
        if wanted > 0 and time.monotonic() >= state.next_pod_at:
            for _ in range(wanted):
                index = None
                if indexed:
                    busy = state.succeeded_indexes | {r.index for r in active}
                    index = next((i for i in range(completions) if i not in busy), None)
                    if index is None:
                        break
                run = await self._create_job_pod(state, index)
                if run is not None:
                    active.append(run)
        await self._write_job_status(state)

    async def _finish_job(self, state: JobState, ctype: str, reason: str | None, message: str | None) -> None:
        state.finished = True
        await self._write_job_status(state, final=(ctype, reason, message))
        for run in [r for r in state.pods if not r.finished and not r.deleting]:
            await self._client_delete_pod(run)
        await self._event(state.job, 'Normal' if ctype == 'Complete' else 'Warning',
                          'Completed' if ctype == 'Complete' else reason or 'Failed',
                          'Job completed' if ctype == 'Complete' else message or 'Job failed')
        ttl = state.job.get('spec', {}).get('ttlSecondsAfterFinished')
        if ttl is not None:
            async def _expire() -> None:
                await asyncio.sleep(float(ttl))
                assert self._client is not None
                await self._client.delete(self._job_path(state), {'propagationPolicy': 'Background'})
            self._spawn(_expire())

    def _job_path(self, state: JobState) -> str:
        return f'/apis/batch/v1/namespaces/{state.namespace}/jobs/{state.name}'

    async def _write_job_status(self, state: JobState, final: tuple[str, str | None, str | None] | None = None,
                                suspended: bool = False) -> None:
        assert self._client is not None
        if state.finished and final is None:
            return
        active = [r for r in state.pods if not r.finished and not r.deleting and not r.deleted]
        terminating = [r for r in state.pods if r.deleting and not r.finished]
        status: Obj = {
            'active': len(active) or None,
            'ready': sum(1 for r in active if r.phase == 'Running'),
            'terminating': len(terminating),
            'succeeded': state.succeeded or None,
            'failed': state.failed or None,
            'startTime': state.start_time,
            'uncountedTerminatedPods': {},
        }
        if state.job.get('spec', {}).get('completionMode') == 'Indexed' and state.succeeded_indexes:
            status['completedIndexes'] = _compress_indexes(state.succeeded_indexes)
        conditions = list((state.last_status or {}).get('conditions') or [])
        now = now_rfc3339()
        if suspended and not any(c['type'] == 'Suspended' for c in conditions):
            conditions.append({'type': 'Suspended', 'status': 'True', 'reason': 'JobSuspended',
                               'message': 'Job suspended', 'lastProbeTime': now, 'lastTransitionTime': now})
        if final is not None:
            ctype, reason, message = final
            interim = 'SuccessCriteriaMet' if ctype == 'Complete' else 'FailureTarget'
            for t, r, m in ((interim, reason or 'CompletionsReached', message or 'Reached expected number of succeeded pods'),
                            (ctype, reason or 'CompletionsReached', message or 'Reached expected number of succeeded pods')):
                conditions.append({'type': t, 'status': 'True', 'reason': r, 'message': m,
                                   'lastProbeTime': now, 'lastTransitionTime': now})
            status['active'] = None
            status['ready'] = 0
            if ctype == 'Complete':
                status['completionTime'] = now
        status['conditions'] = conditions or None
        if status == state.last_status:
            return
        state.last_status = status
        await self._client.patch(self._job_path(state) + '/status', {'status': status})

    async def _create_job_pod(self, state: JobState, index: int | None) -> PodRun | None:
        assert self._client is not None
        job = state.job
        template = job['spec'].get('template') or {}
        tmeta = template.get('metadata') or {}
        base = state.name[:58]
        name = f'{base}-{"".join(random.choice(_ALPHABET) for _ in range(5))}'
        labels = dict(tmeta.get('labels') or {})
        labels.setdefault('job-name', state.name)
        labels.setdefault('batch.kubernetes.io/job-name', state.name)
        labels.setdefault('controller-uid', state.uid)
        labels.setdefault('batch.kubernetes.io/controller-uid', state.uid)
        annotations = dict(tmeta.get('annotations') or {})
        spec = json.loads(json.dumps(template.get('spec') or {}))
        if index is not None:
            annotations['batch.kubernetes.io/job-completion-index'] = str(index)
            labels['batch.kubernetes.io/job-completion-index'] = str(index)
            for c in spec.get('containers') or []:
                c.setdefault('env', []).insert(0, {'name': 'JOB_COMPLETION_INDEX', 'value': str(index)})
            spec.setdefault('hostname', f'{state.name}-{index}')  # as the Job controller names Indexed pods' hosts
        unschedulable = self.faults.find('unschedulable', state.name, index)
        if not unschedulable:
            spec['nodeName'] = self.node_name
        pod = {
            'apiVersion': 'v1', 'kind': 'Pod',
            'metadata': {'name': name, 'namespace': state.namespace, 'labels': labels, 'annotations': annotations,
                         'ownerReferences': [{'apiVersion': 'batch/v1', 'kind': 'Job', 'name': state.name,
                                              'uid': state.uid, 'controller': True, 'blockOwnerDeletion': True}]},
            'spec': spec,
        }
        try:
            created = await self._client.request('POST', f'/api/v1/namespaces/{state.namespace}/pods', pod)
        except ApiError as e:
            logger.warning('cannot create a pod for job %s/%s: %s', state.namespace, state.name, e)
            await self._event(job, 'Warning', 'FailedCreate', f'Error creating: {e.body}')
            state.next_pod_at = time.monotonic() + 1.0
            return None
        if state.start_time is None:
            state.start_time = now_rfc3339()
            state.start_mono = time.monotonic()
        run = self._new_run(created, state.uid, index)
        state.pods.append(run)
        await self._event(job, 'Normal', 'SuccessfulCreate', f'Created pod: {name}')
        run.task = asyncio.create_task(self._pod_lifecycle(run))
        return run

    def _new_run(self, pod: Obj, job_uid: str | None, index: int | None) -> PodRun:
        meta = pod['metadata']
        pod_dir = self.pod_dir(meta['namespace'], meta['name'])
        pod_dir.mkdir(parents=True, exist_ok=True)
        containers = pod.get('spec', {}).get('containers') or [{}]
        run = PodRun(meta['namespace'], meta['name'], meta['uid'], job_uid, index, pod, pod_dir,
                     pod_dir / f'{containers[0].get("name", "container")}.log')
        self.pods[(run.namespace, run.name)] = run
        return run

    async def _adopt_bare_pod(self, pod: Obj) -> None:
        assert self._client is not None
        meta = pod['metadata']
        if not pod.get('spec', {}).get('nodeName') and not self.faults.find('unschedulable', meta['name']):
            pod = await self._client.patch(f'/api/v1/namespaces/{meta["namespace"]}/pods/{meta["name"]}',
                                           {'spec': {'nodeName': self.node_name}}) or pod
        if (meta['namespace'], meta['name']) in self.pods:
            return
        run = self._new_run(pod, None, None)
        run.task = asyncio.create_task(self._pod_lifecycle(run))

    async def _client_delete_pod(self, run: PodRun) -> None:
        assert self._client is not None
        await self._client.delete(f'/api/v1/namespaces/{run.namespace}/pods/{run.name}',
                                  {'propagationPolicy': 'Background'})

    def _on_pod_finished(self, run: PodRun) -> None:
        state = self.jobs.get(run.job_uid or '')
        if state is None or state.finished:
            return
        if run.phase == 'Succeeded':
            state.succeeded += 1
            if run.index is not None:
                state.succeeded_indexes.add(run.index)
        elif not (state.job.get('spec', {}).get('suspend')):
            action, rule = self._pod_failure_action(state.job, run)
            if action == 'Ignore':
                return  # not counted: the index gets a new pod
            state.failed += 1
            state.next_pod_at = time.monotonic() + self.retry_delay
            if action == 'FailJob':
                state.failure_target = ('PodFailurePolicy', f'Container {rule} for pod {run.namespace}/{run.name} failed with '
                                                            f'exit code {run.exit_code} matching FailJob rule')

    @staticmethod
    def _pod_failure_action(job: Obj, run: PodRun) -> tuple[str, str]:
        """The action of the first podFailurePolicy rule a failed pod matches ('Count' when none)."""
        conditions = {(c.get('type'), c.get('status')) for c in (run.pod.get('status') or {}).get('conditions') or []}
        container = ((run.pod.get('spec') or {}).get('containers') or [{}])[0].get('name', '')
        for rule in ((job.get('spec') or {}).get('podFailurePolicy') or {}).get('rules') or []:
            codes = rule.get('onExitCodes')
            if codes is not None and run.exit_code is not None and codes.get('containerName') in (None, container) \
                    and ((run.exit_code in codes.get('values', [])) == (codes.get('operator') == 'In')):
                return rule['action'], container
            if any((c.get('type'), c.get('status', 'True')) in conditions for c in rule.get('onPodConditions') or []):
                return rule['action'], container
        return 'Count', container

    # -- the kubelet -------------------------------------------------------------------------------

    def _pod_path(self, run: PodRun) -> str:
        return f'/api/v1/namespaces/{run.namespace}/pods/{run.name}'

    async def _patch_pod_status(self, run: PodRun, status: Obj) -> None:
        assert self._client is not None
        if run.deleted:
            return
        result = await self._client.patch(self._pod_path(run) + '/status', {'status': status})
        if result is None:
            run.deleted = True
        else:
            run.pod = result

    def _owner_name(self, run: PodRun) -> str:
        return run.pod['metadata'].get('labels', {}).get('job-name') or run.name

    async def _pod_lifecycle(self, run: PodRun) -> None:
        try:
            await self._pod_lifecycle_inner(run)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the agent's own failure: fail the pod visibly, do not retry forever
            self._record_error()
            if run.process is None and not run.finished:
                run.exit_code, run.reason, run.message = 128, 'StartError', f'node agent failure: {e!r}'
                with contextlib.suppress(Exception):
                    await self._finish_pod(run, (run.pod.get('spec', {}).get('containers') or [{}])[0],
                                           self._cond('PodScheduled', 'True'), '127.0.0.1')
        finally:
            run.task = None if not run.finished and not run.deleting else run.task

    async def _pod_lifecycle_inner(self, run: PodRun) -> None:
        container = (run.pod.get('spec', {}).get('containers') or [{}])[0]
        owner_name = self._owner_name(run)
        now = now_rfc3339()

        # Scheduling.
        fault = self.faults.find('unschedulable', owner_name, run.index)
        if fault is not None or not run.pod.get('spec', {}).get('nodeName'):
            if fault is None:  # the fault was cleared: bind the pod now
                assert self._client is not None
                await self._client.patch(self._pod_path(run), {'spec': {'nodeName': self.node_name}})
            else:
                message = fault.message or self._unschedulable_message(run.pod)
                if run.waiting != ('Unschedulable', message):
                    run.waiting = ('Unschedulable', message)
                    await self._patch_pod_status(run, {'phase': 'Pending', 'conditions': [
                        {'type': 'PodScheduled', 'status': 'False', 'reason': 'Unschedulable', 'message': message,
                         'lastProbeTime': None, 'lastTransitionTime': now}]})
                    await self._event(run.pod, 'Warning', 'FailedScheduling', message, component='default-scheduler')
                await asyncio.sleep(0.3)
                return  # the ticker re-tries Pending pods
        scheduled = {'type': 'PodScheduled', 'status': 'True', 'lastProbeTime': None, 'lastTransitionTime': now}
        ip = self._next_ip()
        if not run.scheduled_event:
            run.scheduled_event = True
            await self._event(run.pod, 'Normal', 'Scheduled', f'Successfully assigned {run.namespace}/{run.name} '
                                                              f'to {self.node_name}', component='default-scheduler')

        # Image pull.
        fault = self.faults.find('image_pull', owner_name)
        if fault is not None:
            image = container.get('image', '')
            first = run.waiting is None or run.waiting[0] != 'ErrImagePull' and run.waiting[0] != 'ImagePullBackOff'
            reason = 'ErrImagePull' if first else 'ImagePullBackOff'
            message = fault.message or (
                f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": failed to resolve '
                f'reference "{image}": {image}: not found' if first else f'Back-off pulling image "{image}"')
            if run.waiting != (reason, message):
                run.waiting = (reason, message)
                await self._patch_pod_status(run, self._pending_status(run, container, scheduled, ip, reason, message))
                if first:
                    await self._event(run.pod, 'Warning', 'Failed', f'Failed to pull image "{image}": {message}')
            await asyncio.sleep(0.3)
            return

        # Configuration: env and volumes (missing secrets/configmaps keep the pod Pending).
        try:
            argv, env, cwd, message_file = await self._prepare(run, container)
        except _NotReady as e:
            if run.waiting != (e.reason, e.message):
                run.waiting = (e.reason, e.message)
                await self._patch_pod_status(run, self._pending_status(run, container, scheduled, ip, e.reason, e.message))
            await asyncio.sleep(0.3)
            return

        if run.deleting or run.deleted:
            return
        run.started_at = now_rfc3339()
        run.spawning = True  # from here on, a deletion waits for the process instead of cancelling us
        with open(run.log_path, 'ab') as log:
            try:
                run.process = await asyncio.create_subprocess_exec(
                    *argv, stdout=log, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                    env=env, cwd=cwd, start_new_session=True)
            except OSError as e:
                log.write(f'failed to start {argv!r}: {e}\n'.encode())
                run.exit_code, run.reason, run.message = 128, 'StartError', f'failed to start container: {e}'
            finally:
                run.spawning = False
        if run.process is None:
            await self._finish_pod(run, container, scheduled, ip)
            return
        await self._patch_pod_status(run, {
            'phase': 'Running', 'hostIP': '127.0.0.1', 'podIP': ip, 'podIPs': [{'ip': ip}], 'startTime': run.started_at,
            'conditions': [self._cond('Initialized', 'True'), self._cond('Ready', 'True'),
                           self._cond('ContainersReady', 'True'), scheduled],
            'containerStatuses': [self._container_status(container, True, {'running': {'startedAt': run.started_at}})]})
        run.phase = 'Running'
        await self._event(run.pod, 'Normal', 'Started', f'Started container {container.get("name", "container")}')
        state = self.jobs.get(run.job_uid or '')
        if state is not None:
            await self._reconcile_job(state)  # all Job status writes happen under the job's lock

        oom = self.faults.find('oom', owner_name)
        if oom is not None:
            async def _oom() -> None:
                await asyncio.sleep(oom.after)
                if run.process is not None and run.process.returncode is None:
                    run.oom_killed = True
                    self._kill_group(run, signal.SIGKILL)
            self._spawn(_oom())

        code = await run.process.wait()
        if code < 0:
            run.killed_by_signal = -code
            code = 128 - code
        run.exit_code = code
        if run.oom_killed:
            run.reason, run.exit_code = 'OOMKilled', 137
        else:
            run.reason = 'Completed' if code == 0 else 'Error'
        run.message = self._termination_message(message_file, container, run)
        await self._finish_pod(run, container, scheduled, ip)

    async def _finish_pod(self, run: PodRun, container: Obj, scheduled: Obj, ip: str) -> None:
        run.finished_at = now_rfc3339()
        run.phase = 'Succeeded' if run.exit_code == 0 else 'Failed'
        self._on_pod_finished(run)  # count it together with the phase change (no await in between)
        terminated: Obj = {'exitCode': run.exit_code, 'reason': run.reason, 'startedAt': run.started_at,
                           'finishedAt': run.finished_at, 'containerID': f'emulated://{run.uid}'}
        if run.message:
            terminated['message'] = run.message
        if run.killed_by_signal and not run.oom_killed:
            terminated['signal'] = run.killed_by_signal
        status: Obj = {
            'phase': run.phase, 'hostIP': '127.0.0.1', 'podIP': ip, 'startTime': run.started_at,
            'conditions': [self._cond('Initialized', 'True'), self._cond('Ready', 'False', 'PodCompleted'),
                           self._cond('ContainersReady', 'False', 'PodCompleted'), scheduled],
            'containerStatuses': [self._container_status(container, False, {'terminated': terminated})]}
        if run.oom_killed:
            status['reason'] = None
        if not run.deleted:
            await self._patch_pod_status(run, status)
        state = self.jobs.get(run.job_uid or '')
        if state is not None:
            await self._reconcile_job(state)
        if run.deleting and not run.deleted:  # finish the graceful deletion, as the kubelet does
            assert self._client is not None
            await self._client.delete(self._pod_path(run), {'gracePeriodSeconds': 0, 'preconditions': {'uid': run.uid}})

    async def _terminate(self, run: PodRun, grace: int | None) -> None:
        """Stop the pod's process: SIGTERM, ``grace`` seconds, SIGKILL (the pod is being deleted)."""
        if run.deleting and grace is None:
            return
        first = not run.deleting
        run.deleting = True
        if grace is None:
            grace = int(run.pod.get('spec', {}).get('terminationGracePeriodSeconds', 30))
        while run.spawning:
            await asyncio.sleep(0.01)
        if run.process is None or run.process.returncode is not None:
            if run.process is None and not run.finished:
                if run.task is not None:
                    run.task.cancel()  # still pending (unschedulable, image pull, config): drop it
                run.phase = 'Failed'
                self._on_pod_finished(run)
                state = self.jobs.get(run.job_uid or '')
                if state is not None:
                    await self._reconcile_job(state)
            if not run.deleted and first and (run.finished or run.process is None):
                assert self._client is not None  # the kubelet completes the graceful deletion
                await self._client.delete(self._pod_path(run), {'gracePeriodSeconds': 0, 'preconditions': {'uid': run.uid}})
            return
        if first:
            await self._event(run.pod, 'Normal', 'Killing', f'Stopping container {run.pod["spec"]["containers"][0]["name"]}')
            self._kill_group(run, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(run.process.wait()), timeout=max(grace, 0))
        except asyncio.TimeoutError:
            self._kill_group(run, signal.SIGKILL)

    @staticmethod
    def _kill_group(run: PodRun, sig: int) -> None:
        proc = run.process
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    # -- pod preparation ---------------------------------------------------------------------------

    async def _prepare(self, run: PodRun, container: Obj) -> tuple[list[str], dict[str, str], str, Path]:
        assert self._client is not None
        pod = run.pod
        spec = pod.get('spec', {})
        mounts: dict[str, Path] = {}
        volumes = {v.get('name'): v for v in spec.get('volumes') or []}
        for m in container.get('volumeMounts') or []:
            vol = volumes.get(m.get('name'), {'name': m.get('name'), 'emptyDir': {}})
            local = await self._materialise_volume(run, vol)
            if m.get('subPath'):
                local = local / m['subPath']
                if not local.exists() and not any(k in vol for k in ('configMap', 'secret', 'projected')):
                    local.mkdir(parents=True, exist_ok=True)
            mounts[m['mountPath'].rstrip('/') or '/'] = local
        message_path = container.get('terminationMessagePath') or '/dev/termination-log'
        message_file = run.dir / 'termination-log'
        message_file.write_bytes(b'')
        mounts[message_path] = message_file

        # Environment (the order matters for $(VAR) references).
        env: dict[str, str] = {}
        for src in container.get('envFrom') or []:
            prefix = src.get('prefix', '')
            if 'configMapRef' in src:
                data = await self._configmap_data(run, src['configMapRef'], whole=True)
            elif 'secretRef' in src:
                data = await self._secret_data(run, src['secretRef'], whole=True)
            else:
                continue
            for k, v in (data or {}).items():
                env[prefix + str(k)] = str(v)
        for item in container.get('env') or []:
            name = str(item.get('name'))
            if 'value' in item:
                env[name] = _expand(str(item.get('value', '')), env)
            elif 'valueFrom' in item:
                value = await self._env_value_from(run, item['valueFrom'])
                if value is not None:
                    env[name] = value
            else:
                env[name] = ''
        env = {k: _rewrite_paths(v, mounts) for k, v in env.items()}
        env = await self._resolve_pod_names(run, env)

        command = [_expand(str(a), env) for a in container.get('command') or []]
        args = [_expand(str(a), env) for a in container.get('args') or []]
        if not command:
            image = container.get('image', '')
            entry = next((argv for pattern, argv in self.image_entrypoints.items() if re.search(pattern, image)), None)
            command = list(entry or [])
        argv = [_rewrite_paths(a, mounts) for a in command + args]
        if not argv:
            raise _NotReady('CreateContainerError', f'no command specified for image {container.get("image")!r} '
                                                    f'(set agent.image_entrypoints)')
        if _PYTHON.match(argv[0]):
            argv[0] = sys.executable

        full_env = dict(os.environ)
        for var in ('KUBERNETES_SERVICE_HOST', 'KUBERNETES_SERVICE_PORT', 'PYTEST_CURRENT_TEST'):
            full_env.pop(var, None)
        full_env.setdefault('PYTHONUNBUFFERED', '1')
        full_env['HOSTNAME'] = spec.get('hostname') or run.name
        full_env.update(self.env)
        full_env.update(env)
        workdir = container.get('workingDir')
        cwd = _rewrite_paths(workdir, mounts) if workdir else str(run.dir)
        if not Path(cwd).is_dir():
            cwd = str(run.dir)
        return argv, full_env, cwd, message_file

    async def _resolve_pod_names(self, run: PodRun, env: dict[str, str]) -> dict[str, str]:
        """The cluster DNS of pods with a subdomain, for env values: ``<host>.<service>[.<ns>[.svc[...]]]``
        is this machine (every pod here shares its network) when that headless Service exists."""
        assert self._client is not None
        pattern = re.compile(rf'[a-z0-9]([-a-z0-9]*[a-z0-9])?\.(?P<svc>[a-z]([-a-z0-9]*[a-z0-9])?)'
                             rf'(\.{re.escape(run.namespace)}(\.svc(\.cluster\.local)?)?)?')
        out = dict(env)
        for key, value in env.items():
            match = pattern.fullmatch(value)
            if match and await self._client.get(f'/api/v1/namespaces/{run.namespace}/services/{match.group("svc")}') is not None:
                out[key] = '127.0.0.1'
        return out

    async def _materialise_volume(self, run: PodRun, vol: Obj) -> Path:
        name = vol.get('name', 'volume')
        target = run.dir / f'vol-{name}'
        if 'persistentVolumeClaim' in vol:
            claim = vol['persistentVolumeClaim'].get('claimName', name)
            shared = self.workdir / 'pvc' / run.namespace / claim
            shared.mkdir(parents=True, exist_ok=True)
            return shared
        if target.exists():
            return target
        # filled in a staging directory and renamed: a ConfigMap not there yet raises _NotReady and
        # leaves nothing behind, so the next try mounts it (as a kubelet retries the mount)
        final, target = target, run.dir / f'.vol-{name}.partial'
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        if 'configMap' in vol:
            data = await self._configmap_data(run, vol['configMap'], whole=True, volume=True)
            self._write_items(target, data or {}, vol['configMap'].get('items'))
        elif 'secret' in vol:
            ref = dict(vol['secret'], name=vol['secret'].get('secretName'))
            data = await self._secret_data(run, ref, whole=True, volume=True)
            self._write_items(target, data or {}, vol['secret'].get('items'))
        elif 'projected' in vol:
            for source in vol['projected'].get('sources') or []:
                if 'configMap' in source:
                    data = await self._configmap_data(run, source['configMap'], whole=True, volume=True)
                    self._write_items(target, data or {}, source['configMap'].get('items'))
                elif 'secret' in source:
                    data = await self._secret_data(run, source['secret'], whole=True, volume=True)
                    self._write_items(target, data or {}, source['secret'].get('items'))
        target.rename(final)
        return final

    @staticmethod
    def _write_items(target: Path, data: Mapping[str, str | bytes], items: list[Obj] | None) -> None:
        selected = [(i['key'], i.get('path', i['key'])) for i in items] if items else [(k, k) for k in data]
        for key, path in selected:
            if key not in data:
                continue
            dest = target / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            value = data[key]
            dest.write_bytes(value if isinstance(value, bytes) else value.encode())

    async def _configmap_data(self, run: PodRun, ref: Obj, whole: bool = False, volume: bool = False) -> dict[str, Any] | None:
        assert self._client is not None
        name = ref.get('name')
        cm = await self._client.get(f'/api/v1/namespaces/{run.namespace}/configmaps/{name}')
        if cm is None:
            if ref.get('optional'):
                return None
            raise _NotReady('ContainerCreating' if volume else 'CreateContainerConfigError', f'configmap "{name}" not found')
        data: dict[str, Any] = dict(cm.get('data') or {})
        for k, v in (cm.get('binaryData') or {}).items():
            data[k] = base64.b64decode(v)
        return data

    async def _secret_data(self, run: PodRun, ref: Obj, whole: bool = False, volume: bool = False) -> dict[str, Any] | None:
        assert self._client is not None
        name = ref.get('name')
        secret = await self._client.get(f'/api/v1/namespaces/{run.namespace}/secrets/{name}')
        if secret is None:
            if ref.get('optional'):
                return None
            raise _NotReady('ContainerCreating' if volume else 'CreateContainerConfigError', f'secret "{name}" not found')
        data: dict[str, Any] = {k: base64.b64decode(v) for k, v in (secret.get('data') or {}).items()}
        for k, v in (secret.get('stringData') or {}).items():
            data[k] = v.encode()
        if not volume:
            data = {k: v.decode(errors='replace') if isinstance(v, bytes) else v for k, v in data.items()}
        return data

    async def _env_value_from(self, run: PodRun, source: Obj) -> str | None:
        if 'secretKeyRef' in source or 'configMapKeyRef' in source:
            is_secret = 'secretKeyRef' in source
            ref = source['secretKeyRef' if is_secret else 'configMapKeyRef']
            data = await (self._secret_data(run, ref) if is_secret else self._configmap_data(run, ref))
            if data is None:
                return None
            if ref.get('key') not in data:
                if ref.get('optional'):
                    return None
                kind = 'secret' if is_secret else 'configmap'
                raise _NotReady('CreateContainerConfigError', f'couldn\'t find key {ref.get("key")} in {kind.capitalize()} '
                                                              f'{run.namespace}/{ref.get("name")}')
            value = data[ref['key']]
            return value.decode(errors='replace') if isinstance(value, bytes) else str(value)
        if 'fieldRef' in source:
            path = source['fieldRef'].get('fieldPath', '')
            meta = run.pod['metadata']
            if m := re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path):
                return str((meta.get(m.group(1)) or {}).get(m.group(2), ''))
            simple = {'metadata.name': meta.get('name'), 'metadata.namespace': meta.get('namespace'),
                      'metadata.uid': meta.get('uid'), 'spec.nodeName': self.node_name,
                      'spec.serviceAccountName': run.pod.get('spec', {}).get('serviceAccountName', 'default'),
                      'status.hostIP': '127.0.0.1', 'status.podIP': '127.0.0.1'}
            return str(simple.get(path, ''))
        if 'resourceFieldRef' in source:
            ref = source['resourceFieldRef']
            res = ref.get('resource', '')
            kind, _, rname = res.partition('.')
            container = next((c for c in run.pod['spec'].get('containers', []) if c.get('name') == ref.get('containerName')),
                             run.pod['spec'].get('containers', [{}])[0])
            return str((container.get('resources', {}).get(kind) or {}).get(rname, '0'))
        return None

    def _termination_message(self, path: Path, container: Obj, run: PodRun) -> str | None:
        data = path.read_bytes()[:MAX_TERMINATION_MESSAGE] if path.exists() and path.is_file() else b''
        if not data and run.exit_code and container.get('terminationMessagePolicy') == 'FallbackToLogsOnError':
            logs = run.log_path.read_bytes() if run.log_path.exists() else b''
            data = b''.join(logs.splitlines(keepends=True)[-80:])[-2048:]
        return data.decode(errors='replace') or None

    # -- status helpers ----------------------------------------------------------------------------

    def _next_ip(self) -> str:
        self._ip_counter += 1
        return f'10.244.0.{self._ip_counter % 250 + 2}'

    @staticmethod
    def _cond(ctype: str, status: str, reason: str | None = None) -> Obj:
        cond: Obj = {'type': ctype, 'status': status, 'lastProbeTime': None, 'lastTransitionTime': now_rfc3339()}
        if reason:
            cond['reason'] = reason
        return cond

    @staticmethod
    def _container_status(container: Obj, ready: bool, state: Obj) -> Obj:
        image = container.get('image', '')
        return {'name': container.get('name', 'container'), 'image': image, 'imageID': f'emulated://{image}',
                'ready': ready, 'started': 'running' in state, 'restartCount': 0, 'state': state,
                'lastState': {}, 'containerID': 'emulated://' + container.get('name', 'container')}

    def _pending_status(self, run: PodRun, container: Obj, scheduled: Obj, ip: str, reason: str, message: str) -> Obj:
        return {'phase': 'Pending', 'hostIP': '127.0.0.1', 'podIP': ip, 'startTime': now_rfc3339(),
                'conditions': [self._cond('Initialized', 'True'),
                               self._cond('Ready', 'False', 'ContainersNotReady'),
                               self._cond('ContainersReady', 'False', 'ContainersNotReady'), scheduled],
                'containerStatuses': [dict(self._container_status(container, False, {
                    'waiting': {'reason': reason, 'message': message}}), started=False)]}

    @staticmethod
    def _unschedulable_message(pod: Obj) -> str:
        wanted: set[str] = set()
        for c in pod.get('spec', {}).get('containers') or []:
            res = c.get('resources') or {}
            wanted |= set((res.get('limits') or {}).keys()) | set((res.get('requests') or {}).keys())
        extended = sorted(r for r in wanted if r not in ('cpu', 'memory', 'ephemeral-storage'))
        what = extended[0] if extended else ('memory' if 'memory' in wanted else 'cpu')
        return (f'0/1 nodes are available: 1 Insufficient {what}. preemption: 0/1 nodes are available: '
                f'1 No preemption victims found for incoming pod.')

    async def _event(self, obj: Obj, etype: str, reason: str, message: str, component: str | None = None) -> None:
        if not self.emit_events or self._client is None:
            return
        meta = obj['metadata']
        now = now_rfc3339()
        event = {
            'apiVersion': 'v1', 'kind': 'Event',
            'metadata': {'generateName': f'{meta["name"]}.', 'namespace': meta.get('namespace', 'default')},
            'involvedObject': {'apiVersion': obj.get('apiVersion'), 'kind': obj.get('kind'), 'name': meta['name'],
                               'namespace': meta.get('namespace'), 'uid': meta.get('uid')},
            'reason': reason, 'message': message, 'type': etype, 'count': 1,
            'firstTimestamp': now, 'lastTimestamp': now,
            'source': {'component': component or ('job-controller' if obj.get('kind') == 'Job' else 'kubelet')},
        }
        with contextlib.suppress(ApiError, aiohttp.ClientError):
            await self._client.request('POST', f'/api/v1/namespaces/{event["metadata"]["namespace"]}/events', event)


class _NotReady(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion (``$$(VAR)`` escapes, unknown references stay as they are)."""
    return re.sub(r'\$\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)',
                  lambda m: m.group(0)[1:] if m.group(0).startswith('$$') else env.get(m.group(2), m.group(0)), text)


def _rewrite_paths(text: str, mounts: Mapping[str, Path]) -> str:
    """Replace every occurrence of a mount path (longest first, in one pass) by its local path."""
    paths = sorted((m for m in mounts if m != '/'), key=len, reverse=True)
    if not paths:
        return text
    pattern = r'(?<![\w.\-])(' + '|'.join(re.escape(m) for m in paths) + r')(?=$|/|[^\w.\-])'
    return re.sub(pattern, lambda m: str(mounts[m.group(1)]), text)


def _compress_indexes(indexes: set[int]) -> str:
    parts: list[str] = []
    for i in sorted(indexes):
        if parts and '-' not in parts[-1].split(',')[-1] and int(parts[-1]) == i - 1:
            parts[-1] = f'{parts[-1]}-{i}'
        elif parts and '-' in parts[-1] and int(parts[-1].split('-')[1]) == i - 1:
            parts[-1] = f'{parts[-1].split("-")[0]}-{i}'
        else:
            parts.append(str(i))
    return ','.join(parts)
