"""
A stateful Kubernetes API server for tests, built on ``kmock.KubernetesEmulator`` (kmock 0.8).

kmock 0.8 keeps objects in memory and serves discovery, but misses most of the semantics that kopf,
the ``kubernetes`` client and ``kubectl`` rely on (see /work/shared/TESTING.md).  This subclass keeps
kmock's storage (``emulator.objects[...]`` with the history of every object) and its reaction DSL
(``emulator['post /api/v1/namespaces/ns/pods'] << 500`` still works and is consulted first), but
replaces the request handling with a small API server:

* metadata: ``uid``, ``resourceVersion`` (one monotonic counter, also on lists and watch events),
  ``creationTimestamp``, ``generation`` (bumped when anything outside metadata/status changes),
  ``generateName``; names, labels and a few built-in types (Pod, Job) are validated and defaulted
  like the real API server does (e.g. a Job's ``restartPolicy`` must be Never/OnFailure);
* verbs: get, list, watch (with ``resourceVersion`` resumption and 410 Gone, ``timeoutSeconds``,
  ``sendInitialEvents``), create (201; 409 AlreadyExists), PUT (with the optimistic-concurrency
  409), PATCH as merge / JSON (422 on a failed ``test``) / strategic (built-ins only; 415 for custom
  resources, like the real server) / server-side apply (approximated as a merge), delete and
  deletecollection, ``dryRun=All``;
* the ``status`` subresource: writes to the object never change ``status``, writes to ``/status``
  change nothing but ``status``;
* label selectors (``a=b,c!=d,e,!f,g in (x,y),h notin (z)``) and field selectors on any dotted path
  (``metadata.name=x,status.phase!=Running``), on lists and watches;
* deletion: finalizers and ``deletionTimestamp``; graceful deletion of pods bound to a node
  (``spec.nodeName``: the "kubelet" -- see node_agent.py -- finishes it); namespaces terminate their
  content; propagation policies Background / Foreground / Orphan with a garbage collector that
  deletes dependents by their ``ownerReferences``.  As on a real server, a batch/v1 Job deleted
  *without* a propagation policy orphans its pods (``job_default_propagation``);
* discovery as kubectl expects it (core ``groupVersion: v1``, clean subresource entries), lists with
  ``kind: <Kind>List``, server-side Table printing (``kubectl get`` columns, CRD printer columns);
* creating a CustomResourceDefinition through the API registers its resource type (like the real
  server); ``register_crd`` / ``register_custom_resource`` do it from the test side.

Everything runs in one asyncio loop; mutations happen synchronously inside it, so no locks are
needed.  From other threads use :meth:`ClusterEmulator.call` (the server wrapper exposes helpers).
"""
from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import json
import logging
import random
import re
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml
from kmock._internal import rendering

from . import k8s_protobuf

logger = logging.getLogger(__name__)

Obj = dict[str, Any]
Key = tuple[kmock.resource, str | None, str]

# ---------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------

_GENERATE_ALPHABET = 'bcdfghjklmnpqrstvwxz2456789'  # the apiserver's alphabet (no vowels)
_DNS_SUBDOMAIN = re.compile(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')
_DNS_LABEL = re.compile(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')
_LABEL_VALUE = re.compile(r'^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$')
_LABEL_NAME = re.compile(r'^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$')

# Built-in resources that have no metadata.generation on a real server.
_NO_GENERATION = {('', 'configmaps'), ('', 'secrets'), ('', 'events'), ('events.k8s.io', 'events'),
                  ('', 'namespaces'), ('', 'serviceaccounts'), ('', 'endpoints')}
# Real servers keep only DNS-1123 labels (<=63 chars) for these, not full subdomains.
_DNS_LABEL_NAMES = {('', 'namespaces'), ('', 'services'), ('batch', 'jobs')}
# Fields of the built-in types' strategic merge patches: list field -> merge key ('' = set union).
_STRATEGIC_MERGE_KEYS = {
    'containers': 'name', 'initContainers': 'name', 'ephemeralContainers': 'name', 'env': 'name',
    'volumes': 'name', 'volumeMounts': 'mountPath', 'volumeDevices': 'devicePath',
    'ports': 'containerPort', 'imagePullSecrets': 'name', 'conditions': 'type',
    'ownerReferences': 'uid', 'finalizers': '', 'hostAliases': 'ip', 'topologySpreadConstraints':
    'topologyKey', 'resourceClaims': 'name',
}


def now_rfc3339(offset: float = 0) -> str:
    ts = datetime.datetime.now(tz=datetime.timezone.utc) + datetime.timedelta(seconds=offset)
    return ts.strftime('%Y-%m-%dT%H:%M:%SZ')


def parse_rfc3339(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace('Z', '+00:00'))


def human_duration(seconds: float) -> str:
    """The kubectl/apiserver "AGE" format: 5s, 3m2s, 4h, 2d3h, 400d."""
    s = int(max(seconds, 0))
    if s < 120:
        return f'{s}s'
    m = s // 60
    if m < 10:
        return f'{m}m{s % 60}s' if s % 60 else f'{m}m'
    if m < 180:
        return f'{m}m'
    h = m // 60
    if h < 8:
        return f'{h}h{m % 60}m' if m % 60 else f'{h}h'
    if h < 48:
        return f'{h}h'
    d = h // 24
    if d < 8:
        return f'{d}d{h % 24}h' if h % 24 else f'{d}d'
    return f'{d}d'


def _age(obj: Mapping[str, Any]) -> str:
    ts = obj.get('metadata', {}).get('creationTimestamp')
    if not ts:
        return '<unknown>'
    return human_duration((datetime.datetime.now(tz=datetime.timezone.utc) - parse_rfc3339(ts)).total_seconds())


def version_priority(version: str) -> tuple[int, int, int]:
    """Kubernetes version ordering: v2 > v1 > v1beta2 > v1beta1 > v1alpha1 > anything else."""
    m = re.match(r'^v(\d+)(?:(alpha|beta)(\d+))?$', version)
    if not m:
        return (-1, 0, 0)
    stage = {'alpha': 0, 'beta': 1, None: 2}[m.group(2)]
    return (stage, int(m.group(1)), int(m.group(3) or 0))


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (``null`` deletes, lists are replaced)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, field: str | None = None) -> Any:
    """An approximation of the strategic merge patch of built-in types (enough for kubectl)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get('$patch') == 'replace':
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith('$')}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith('$deleteFromPrimitiveList/'):
            name = key.split('/', 1)[1]
            result[name] = [v for v in result.get(name) or [] if v not in value]
        elif key.startswith('$'):
            continue  # $setElementOrder/..., $retainKeys, $patch: merge
        elif value is None:
            result.pop(key, None)
        elif isinstance(value, list) and key in _STRATEGIC_MERGE_KEYS and isinstance(result.get(key), list):
            result[key] = _strategic_merge_list(result[key], value, _STRATEGIC_MERGE_KEYS[key])
        elif isinstance(value, list):
            result[key] = [{k: v for k, v in item.items() if not k.startswith('$')} if isinstance(item, dict) else item
                           for item in value if not (isinstance(item, dict) and item.get('$patch') == 'delete')]
        else:
            result[key] = strategic_merge_patch(result.get(key), value, key)
    return result


def _strategic_merge_list(old: list[Any], new: list[Any], merge_key: str) -> list[Any]:
    if not merge_key:  # a set of primitives (e.g. finalizers)
        return list(old) + [v for v in new if v not in old]
    result = list(old)
    for item in new:
        if not isinstance(item, dict) or merge_key not in item:
            if item not in result:
                result.append(item)
            continue
        idx = next((i for i, o in enumerate(result) if isinstance(o, dict) and o.get(merge_key) == item[merge_key]), None)
        if item.get('$patch') == 'delete':
            if idx is not None:
                del result[idx]
        elif idx is None:
            result.append(strategic_merge_patch({}, item))
        else:
            result[idx] = strategic_merge_patch(result[idx], item)
    return result


def get_path(obj: Any, dotted: str) -> Any:
    """Resolve ``a.b.c`` or a JSONPath-like ``.a.b[0].c`` in a dict; None if absent."""
    path = dotted.strip().lstrip('.').strip('{}').lstrip('.')
    tokens = re.findall(r'[^.\[\]]+|\[\d+\]', path)
    cur = obj
    for token in tokens:
        if token.startswith('[') and isinstance(cur, list):
            idx = int(token[1:-1])
            cur = cur[idx] if idx < len(cur) else None
        elif isinstance(cur, dict):
            cur = cur.get(token)
        else:
            return None
        if cur is None:
            return None
    return cur


# ---------------------------------------------------------------------------------------------------
# Selectors
# ---------------------------------------------------------------------------------------------------

@attrs.frozen
class LabelRequirement:
    key: str
    op: str  # '=', '!=', 'in', 'notin', 'exists', '!'
    values: tuple[str, ...] = ()

    def __call__(self, labels: Mapping[str, str]) -> bool:
        if self.op == 'exists':
            return self.key in labels
        if self.op == '!':
            return self.key not in labels
        if self.op == '=':
            return labels.get(self.key) == self.values[0]
        if self.op == '!=':
            return labels.get(self.key) != self.values[0]
        if self.op == 'in':
            return labels.get(self.key) in self.values
        if self.op == 'notin':
            return labels.get(self.key) not in self.values
        raise ValueError(self.op)


def parse_label_selector(text: str | None) -> list[LabelRequirement]:
    """Parse the label selector syntax of kubectl ``-l`` (raises ValueError when malformed)."""
    if not text:
        return []
    parts: list[str] = []
    depth, buf = 0, ''
    for ch in text:
        if ch == '(':
            depth += 1
        elif ch == ')':
            depth -= 1
        if ch == ',' and depth == 0:
            parts.append(buf)
            buf = ''
        else:
            buf += ch
    parts.append(buf)
    reqs: list[LabelRequirement] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if m := re.fullmatch(r'([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)', part):
            values = tuple(v.strip() for v in m.group(3).split(',') if v.strip())
            reqs.append(LabelRequirement(m.group(1), m.group(2), values))
        elif m := re.fullmatch(r'([^\s!=]+)\s*(==|=|!=)\s*([^\s,]*)', part):
            reqs.append(LabelRequirement(m.group(1), '!=' if m.group(2) == '!=' else '=', (m.group(3),)))
        elif m := re.fullmatch(r'!\s*([^\s!=]+)', part):
            reqs.append(LabelRequirement(m.group(1), '!'))
        elif re.fullmatch(r'[^\s!=(),]+', part):
            reqs.append(LabelRequirement(part, 'exists'))
        else:
            raise ValueError(f'unable to parse requirement: {part!r}')
    return reqs


def parse_field_selector(text: str | None) -> list[tuple[str, bool, str]]:
    """``metadata.name=x,status.phase!=Running`` -> [(path, equal?, value)]."""
    if not text:
        return []
    result = []
    for part in (p.strip() for p in text.split(',')):
        if not part:
            continue
        m = re.fullmatch(r'([A-Za-z0-9_.\-/]+)\s*(==|=|!=)\s*(.*)', part)
        if not m:
            raise ValueError(f'invalid field selector: {part!r}')
        result.append((m.group(1), m.group(2) != '!=', m.group(3)))
    return result


@attrs.frozen
class Selector:
    labels: tuple[LabelRequirement, ...] = ()
    fields: tuple[tuple[str, bool, str], ...] = ()

    @classmethod
    def parse(cls, label_selector: str | None, field_selector: str | None) -> 'Selector':
        return cls(tuple(parse_label_selector(label_selector)), tuple(parse_field_selector(field_selector)))

    def __call__(self, obj: Mapping[str, Any]) -> bool:
        labels = obj.get('metadata', {}).get('labels') or {}
        if not all(req(labels) for req in self.labels):
            return False
        for path, equal, value in self.fields:
            actual = get_path(obj, path)
            actual_str = '' if actual is None else str(actual).lower() if isinstance(actual, bool) else str(actual)
            if (actual_str == value) != equal:
                return False
        return True


# ---------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------

_REASONS = {400: 'BadRequest', 403: 'Forbidden', 404: 'NotFound', 405: 'MethodNotAllowed',
            406: 'NotAcceptable', 409: 'Conflict', 410: 'Expired', 415: 'UnsupportedMediaType',
            422: 'Invalid', 500: 'InternalError'}


class ApiError(kmock.KubernetesError):
    """A Kubernetes ``Status`` failure (``kmock.KubernetesError`` with realistic reasons)."""

    @classmethod
    def make(cls, code: int, message: str, reason: str | None = None, details: Mapping[str, Any] | None = None) -> 'ApiError':
        return cls(status=code, reason=reason or _REASONS.get(code, 'Unknown'), message=message,
                   details=dict(details or {}))


def status_body(code: int, reason: str, message: str, details: Mapping[str, Any] | None = None) -> Obj:
    body: Obj = {'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Failure',
                 'message': message, 'reason': reason, 'code': code}
    if details:
        body['details'] = dict(details)
    return body


# ---------------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------------

@attrs.define
class Target:
    """What a request URL addresses."""
    kind: str  # 'discovery', 'resource', 'other'
    group: str | None = None
    version: str | None = None
    plural: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    path: str = ''

    @property
    def resource(self) -> kmock.resource | None:
        if self.kind != 'resource':
            return None
        return kmock.resource(self.group, self.version, self.plural)


@attrs.define(eq=False)
class _Watcher:
    resource: kmock.resource
    namespace: str | None
    name: str | None
    selector: Selector
    queue: asyncio.Queue[Any]


@attrs.define(eq=False)
class _Column:
    name: str
    type: str = 'string'
    json_path: str | None = None
    fn: Callable[[Obj], Any] | None = None
    priority: int = 0
    description: str = ''
    format: str = ''


# ---------------------------------------------------------------------------------------------------
# The emulator
# ---------------------------------------------------------------------------------------------------

@attrs.define(kw_only=True, eq=False)
class ClusterEmulator(kmock.KubernetesEmulator):
    """A kmock-based Kubernetes API server with the semantics kopf and kubectl need.

    Construct, then serve it with ``tests.k8s.server.ApiServer`` (HTTP in a background thread),
    or with ``kmock.Server(emulator)`` inside an ``async with emulator:`` block.
    """

    #: Namespaces that exist from the start.
    initial_namespaces: Sequence[str] = ('default', 'kube-system', 'kube-public', 'kube-node-lease')
    #: A real server 404s creations in unknown namespaces; True creates the namespace instead.
    auto_create_namespaces: bool = False
    #: The real default when a batch/v1 Job is deleted with no propagationPolicy: its pods stay.
    job_default_propagation: str = 'Orphan'
    #: How many past events watches can resume from (older resourceVersions get 410 Gone).
    event_log_size: int = 20000
    #: Populate built-in resource types from kmock's bundled discovery data.
    load_builtin_resources: bool = True

    _rv: int = attrs.field(default=0, init=False)
    _log: collections.deque[tuple[int, kmock.resource, str, Obj, Obj | None]] = attrs.field(init=False, default=None)
    _log_floor: int = attrs.field(default=0, init=False)
    _watchers: set[_Watcher] = attrs.field(factory=set, init=False)
    _columns: dict[kmock.resource, list[_Column]] = attrs.field(factory=dict, init=False)
    _aliases: dict[kmock.resource, kmock.resource] = attrs.field(factory=dict, init=False)
    _custom: set[kmock.resource] = attrs.field(factory=set, init=False)
    _builtin_payload_ids: set[int] = attrs.field(factory=set, init=False)
    _pending_policy: dict[str, str] = attrs.field(factory=dict, init=False)
    _loop: asyncio.AbstractEventLoop | None = attrs.field(default=None, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _hooks: list[Callable[[str, kmock.resource, Obj, Obj | None], None]] = attrs.field(factory=list, init=False)
    #: ``fn(namespace, pod, container) -> str | None`` serving ``pods/log`` (set by the node agent).
    log_provider: Callable[[str, str, str | None], str | None] | None = attrs.field(default=None, init=False)
    #: Errors of the emulator's own code (500s), kept for the test teardown to assert on.
    internal_errors: list[str] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._builtin_payload_ids = {id(p) for p in self._payloads}
        self._log = collections.deque(maxlen=self.event_log_size)
        if self.load_builtin_resources:
            with warnings.catch_warnings():  # kmock 0.8 uses the deprecated importlib.resources API
                warnings.simplefilter('ignore', DeprecationWarning)
                self.resources.load_bundled()
        self._install_builtin_columns()
        for ns in self.initial_namespaces:
            self._store_new(kmock.resource('', 'v1', 'namespaces'), None, ns, {
                'apiVersion': 'v1', 'kind': 'Namespace',
                'metadata': {'name': ns, 'labels': {'kubernetes.io/metadata.name': ns}},
                'spec': {'finalizers': ['kubernetes']}, 'status': {'phase': 'Active'}})

    # -- threading ---------------------------------------------------------------------------------

    def bind_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Tell the emulator which loop serves it (done by ApiServer); enables :meth:`call`."""
        self._loop = loop
        if loop is not None:
            self._closing = False

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` in the emulator's loop thread and return the result."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return fn(*args, **kwargs)
        try:
            if asyncio.get_running_loop() is loop:
                return fn(*args, **kwargs)
        except RuntimeError:
            pass

        async def _run() -> Any:
            return fn(*args, **kwargs)
        return asyncio.run_coroutine_threadsafe(_run(), loop).result(timeout=30)

    def add_hook(self, fn: Callable[[str, kmock.resource, Obj, Obj | None], None]) -> None:
        """Call ``fn(event_type, resource, obj, old)`` (in the loop) after every committed change."""
        self._hooks.append(fn)

    # -- resource registry -------------------------------------------------------------------------

    def resolve(self, resource: kmock.resource | str) -> kmock.resource:
        """The storage resource for a served one (served CRD versions share one storage)."""
        res = resource if isinstance(resource, kmock.resource) else kmock.resource(resource)
        return self._aliases.get(res, res)

    def info(self, resource: kmock.resource) -> kmock.ResourceInfo | None:
        return self.resources._resources.get(resource)  # no auto-creation (unlike [])

    def set_columns(self, resource: kmock.resource | str, columns: Iterable[Mapping[str, Any]]) -> None:
        """Printer columns (CRD ``additionalPrinterColumns`` format) for ``kubectl get``."""
        res = resource if isinstance(resource, kmock.resource) else kmock.resource(resource)
        cols = [_Column('Name', format='name', fn=lambda o: o['metadata'].get('name'),
                        description='Name must be unique within a namespace.')]
        for c in columns:
            cols.append(_Column(c['name'], type=c.get('type', 'string'), json_path=c.get('jsonPath'),
                                priority=int(c.get('priority', 0)), description=c.get('description', ''),
                                format=c.get('format', '')))
        if not any(c.name.lower() == 'age' for c in cols[1:]):
            cols.append(_Column('Age', type='date', json_path='.metadata.creationTimestamp'))
        self._columns[res] = cols

    def _install_builtin_columns(self) -> None:
        def pod_ready(o: Obj) -> str:
            statuses = o.get('status', {}).get('containerStatuses') or []
            total = len(o.get('spec', {}).get('containers') or [])
            return f"{sum(1 for s in statuses if s.get('ready'))}/{total}"

        def pod_status(o: Obj) -> str:
            if o['metadata'].get('deletionTimestamp'):
                return 'Terminating'
            st = o.get('status', {})
            for cs in st.get('containerStatuses') or []:
                state = cs.get('state') or {}
                if 'waiting' in state and state['waiting'].get('reason'):
                    return state['waiting']['reason']
                if 'terminated' in state and st.get('phase') not in ('Running',):
                    return state['terminated'].get('reason') or 'Terminated'
            return st.get('reason') or st.get('phase') or 'Pending'

        def pod_restarts(o: Obj) -> int:
            return sum(int(s.get('restartCount', 0)) for s in o.get('status', {}).get('containerStatuses') or [])

        def job_status(o: Obj) -> str:
            conds = {c.get('type'): c.get('status') for c in o.get('status', {}).get('conditions') or []}
            if conds.get('Complete') == 'True':
                return 'Complete'
            if conds.get('Failed') == 'True':
                return 'Failed'
            if o['metadata'].get('deletionTimestamp'):
                return 'Terminating'
            if conds.get('Suspended') == 'True' or o.get('spec', {}).get('suspend'):
                return 'Suspended'
            return 'Running'

        def job_completions(o: Obj) -> str:
            return f"{o.get('status', {}).get('succeeded', 0)}/{o.get('spec', {}).get('completions', 1)}"

        def job_duration(o: Obj) -> str:
            st = o.get('status', {})
            if not st.get('startTime'):
                return ''
            end = parse_rfc3339(st['completionTime']) if st.get('completionTime') else datetime.datetime.now(tz=datetime.timezone.utc)
            return human_duration((end - parse_rfc3339(st['startTime'])).total_seconds())

        name = _Column('Name', format='name', fn=lambda o: o['metadata'].get('name'))
        age = _Column('Age', fn=_age)
        self._columns[kmock.resource('', 'v1', 'pods')] = [
            name, _Column('Ready', fn=pod_ready), _Column('Status', fn=pod_status),
            _Column('Restarts', type='integer', fn=pod_restarts), age,
            _Column('IP', priority=1, fn=lambda o: o.get('status', {}).get('podIP') or '<none>'),
            _Column('Node', priority=1, fn=lambda o: o.get('spec', {}).get('nodeName') or '<none>')]
        self._columns[kmock.resource('batch', 'v1', 'jobs')] = [
            name, _Column('Status', fn=job_status), _Column('Completions', fn=job_completions),
            _Column('Duration', fn=job_duration), age]
        self._columns[kmock.resource('', 'v1', 'configmaps')] = [
            name, _Column('Data', type='integer', fn=lambda o: len(o.get('data') or {}) + len(o.get('binaryData') or {})), age]
        self._columns[kmock.resource('', 'v1', 'secrets')] = [
            name, _Column('Type', fn=lambda o: o.get('type', 'Opaque')),
            _Column('Data', type='integer', fn=lambda o: len(o.get('data') or {}) + len(o.get('stringData') or {})), age]
        self._columns[kmock.resource('', 'v1', 'namespaces')] = [
            name, _Column('Status', fn=lambda o: o.get('status', {}).get('phase', 'Active')), age]
        def event_object(o: Obj) -> str:
            ref = o.get('involvedObject') or o.get('regarding') or {}
            return f"{(ref.get('kind') or '').lower()}/{ref.get('name', '')}"

        def event_last_seen(o: Obj) -> str:
            ts = o.get('lastTimestamp') or o.get('eventTime') or o['metadata'].get('creationTimestamp')
            return human_duration((datetime.datetime.now(tz=datetime.timezone.utc) - parse_rfc3339(ts)).total_seconds()) if ts else '<unknown>'
        for events in (kmock.resource('', 'v1', 'events'), kmock.resource('events.k8s.io', 'v1', 'events')):
            self._columns[events] = [
                _Column('Last Seen', fn=event_last_seen), _Column('Type', fn=lambda o: o.get('type', '')),
                _Column('Reason', fn=lambda o: o.get('reason', '')), _Column('Object', fn=event_object),
                _Column('Message', fn=lambda o: o.get('message') or o.get('note') or '')]
        self._columns[kmock.resource('apiextensions.k8s.io', 'v1', 'customresourcedefinitions')] = [
            name, _Column('Created At', type='date', fn=lambda o: o['metadata'].get('creationTimestamp'))]

    # -- request entry point -----------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        body = await raw_request.read()
        try:
            target = self._parse_target(raw_request.path)
            ctype = raw_request.headers.get('Content-Type', '')
            data: Any = None
            if body and ('protobuf' in ctype or 'cbor' in ctype):
                try:  # kubectl's typed commands (create secret/configmap/namespace) send protobuf
                    data = k8s_protobuf.decode(body)
                except ValueError as e:
                    raise ApiError.make(415, f'the body of the request was in an unknown format ({ctype}, {e}): the '
                                             f'emulator decodes protobuf only for Secret, ConfigMap and Namespace; '
                                             f'use `kubectl apply -f` (JSON) for other kinds', 'UnsupportedMediaType')
            elif body:
                try:
                    data = json.loads(body)
                except ValueError:
                    data = None
            res = target.resource
            request = rendering.Request(
                id=len(self._requests), raw_request=raw_request, url=raw_request.url,
                method=raw_request.method, params=dict(raw_request.query),
                headers=dict(raw_request.headers), cookies=dict(raw_request.cookies),
                body=body, text=body.decode('utf-8', 'replace'), data=data,
                action=self._guess_action(target, raw_request.method, raw_request.query),
                resource=res, namespace=target.namespace, name=target.name,
                subresource=target.subresource)
            self._requests.append(request)

            # User-declared kmock reactions (e.g. fault injection) go before the emulation.
            for payload in self._user_payloads():
                if request in payload._source and not payload._disabled.is_set():
                    try:
                        return await payload(request)
                    except rendering.ReactionMismatchError:
                        payload._disabled.set()
                    except NotImplementedError:
                        pass
                    except rendering.StreamingError as e:
                        return e.args[0]
            return await self._serve(request, target, raw_request)
        except kmock.KubernetesError as e:
            return self._error_response(e)
        except Exception as e:  # the emulator's own bug: report it loudly, as a 500
            tb = traceback.format_exc()
            self.internal_errors.append(tb)
            logger.error('Emulator failure on %s %s:\n%s', raw_request.method, raw_request.path_qs, tb)
            return aiohttp.web.json_response(status_body(500, 'InternalError', repr(e)), status=500)

    def _error_response(self, e: kmock.KubernetesError) -> aiohttp.web.Response:
        details = e.details if isinstance(e.details, Mapping) else None
        return aiohttp.web.json_response(
            status_body(e.status, e.reason or _REASONS.get(e.status, 'Unknown'), e.message or '', details),
            status=e.status)

    def _user_payloads(self) -> list[Any]:
        payloads = [p for p in self._payloads if id(p) not in self._builtin_payload_ids]
        if not payloads:
            return []
        return sorted(payloads, key=lambda p: tuple(-x for x in p.priorities))

    @staticmethod
    def _guess_action(target: Target, method: str, query: Mapping[str, str]) -> kmock.action | None:
        if target.kind != 'resource':
            return None
        if method == 'GET':
            return kmock.action.WATCH if query.get('watch') in ('true', '1') else (
                kmock.action.FETCH if target.name else kmock.action.LIST)
        return {'POST': kmock.action.CREATE, 'PATCH': kmock.action.UPDATE, 'PUT': kmock.action.UPDATE,
                'DELETE': kmock.action.DELETE}.get(method)

    def _parse_target(self, path: str) -> Target:
        parts = [p for p in path.split('/') if p]
        if not parts or parts[0] not in ('api', 'apis'):
            return Target('other', path=path)
        if parts[0] == 'api':
            if len(parts) == 1:
                return Target('discovery', path=path)
            group, version, rest = '', parts[1], parts[2:]
        else:
            if len(parts) <= 2:
                return Target('discovery', group=parts[1] if len(parts) == 2 else None, path=path)
            group, version, rest = parts[1], parts[2], parts[3:]
        if not rest:
            return Target('discovery', group=group, version=version, path=path)
        if rest[0] == 'watch':  # legacy /api/v1/watch/... paths
            rest = rest[1:]
        namespace = None
        if rest[0] == 'namespaces' and len(rest) >= 3:
            known = self.resources._resources
            if kmock.resource(group, version, rest[2]) in known or kmock.resource(group, version, rest[2]) in self._aliases \
                    or not (group == '' and rest[2] in ('status', 'finalize')):
                namespace, rest = rest[1], rest[2:]
        plural = rest[0]
        name = rest[1] if len(rest) > 1 else None
        sub = '/'.join(rest[2:]) or None
        return Target('resource', group, version, plural, namespace, name, sub, path=path)

    # -- routing -----------------------------------------------------------------------------------

    async def _serve(self, request: rendering.Request, target: Target, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if target.kind == 'other':
            return self._serve_other(target)
        if target.kind == 'discovery':
            return aiohttp.web.json_response(self._discovery(target))

        served = kmock.resource(target.group, target.version, target.plural)
        info = self.info(self.resolve(served)) if (served in self._aliases or self.info(served)) else None
        if info is None:
            raise ApiError.make(404, 'the server could not find the requested resource')
        if target.subresource and target.subresource not in info.subresources:
            raise ApiError.make(404, 'the server could not find the requested resource')
        if target.subresource == 'log' and raw.method == 'GET' and served == kmock.resource('', 'v1', 'pods'):
            pod = self._get(served, target)
            text = self.log_provider(target.namespace or '', target.name or '', raw.query.get('container')) \
                if self.log_provider else None
            if text is None:
                raise ApiError.make(400, f'container logs of pod "{pod["metadata"]["name"]}" are not available', 'BadRequest')
            if raw.query.get('tailLines'):
                text = ''.join(text.splitlines(keepends=True)[-int(raw.query['tailLines']):])
            return aiohttp.web.Response(text=text, content_type='text/plain')
        if target.subresource and target.subresource not in ('status',):
            raise ApiError.make(405, f'subresource {target.subresource!r} is not emulated', 'MethodNotSupported')
        if info.namespaced is False:
            target.namespace = None

        params = raw.query
        method = raw.method
        if method == 'GET' and params.get('watch') in ('true', '1'):
            return await self._serve_watch(served, info, target, raw)
        if method == 'GET' and target.name:
            obj = self._get(served, target)
            if self._wants_table(raw):
                return self._json(self._table(served, [obj], raw.query.get('includeObject', 'Metadata'),
                                              obj['metadata'].get('resourceVersion', '')))
            return self._json(self._output(obj, served), 200)
        if method == 'GET':
            return self._serve_list(served, info, target, raw)
        if method == 'POST' and not target.name:
            return self._json(*self._create(served, info, target, request.data, params))
        if method == 'PUT' and target.name:
            return self._json(*self._replace(served, info, target, request.data, params))
        if method == 'PATCH' and target.name:
            return self._json(*self._patch(served, info, target, request, params))
        if method == 'DELETE' and target.name:
            return self._json(*self._delete_request(served, info, target, request.data, params))
        if method == 'DELETE':
            return self._json(*self._delete_collection(served, info, target, request.data, params))
        raise ApiError.make(405, 'the server does not allow this method on the requested resource', 'MethodNotAllowed')

    def _json(self, body: Any, status: int = 200) -> aiohttp.web.Response:
        return aiohttp.web.Response(body=json.dumps(body).encode(), status=status, content_type='application/json')

    def _serve_other(self, target: Target) -> aiohttp.web.StreamResponse:
        path = target.path.rstrip('/') or '/'
        if path == '/version':
            return aiohttp.web.json_response({
                'major': '1', 'minor': '32', 'gitVersion': 'v1.32.0-alignops-emulator',
                'gitCommit': '0000000000000000000000000000000000000000', 'gitTreeState': 'clean',
                'buildDate': '2025-01-01T00:00:00Z', 'goVersion': 'go1.23', 'compiler': 'gc',
                'platform': 'linux/amd64'})
        if path in ('/healthz', '/readyz', '/livez'):
            return aiohttp.web.Response(text='ok')
        if path == '/':
            paths = {'/api', '/api/v1', '/apis', '/version', '/healthz', '/readyz', '/livez'}
            for res in self._served_resources():
                if res.group:
                    paths |= {f'/apis/{res.group}', f'/apis/{res.group}/{res.version}'}
            return aiohttp.web.json_response({'paths': sorted(paths)})
        raise ApiError.make(404, 'the server could not find the requested resource')

    # -- discovery ---------------------------------------------------------------------------------

    def _served_resources(self) -> list[kmock.resource]:
        return list(self.resources._resources) + [a for a in self._aliases if a not in self.resources._resources]

    def _group_versions(self) -> dict[str, list[str]]:
        groups: dict[str, set[str]] = collections.defaultdict(set)
        for res in self._served_resources():
            if res.group is not None and res.version is not None:
                groups[res.group].add(res.version)
        return {g: sorted(vs, key=version_priority, reverse=True) for g, vs in groups.items()}

    def _discovery(self, target: Target) -> Obj:
        groups = self._group_versions()
        if target.group is None and target.version is None and target.path.rstrip('/') == '/apis':
            return {'kind': 'APIGroupList', 'apiVersion': 'v1', 'groups': [
                self._api_group(g, vs) for g, vs in sorted(groups.items()) if g]}
        if target.path.rstrip('/') == '/api':
            return {'kind': 'APIVersions', 'versions': ['v1'],
                    'serverAddressByClientCIDRs': [{'clientCIDR': '0.0.0.0/0', 'serverAddress': '127.0.0.1'}]}
        if target.version is None:
            if not target.group or target.group not in groups:
                raise ApiError.make(404, 'the server could not find the requested resource')
            return dict(self._api_group(target.group, groups[target.group]), kind='APIGroup', apiVersion='v1')
        if target.version not in groups.get(target.group or '', []):
            raise ApiError.make(404, 'the server could not find the requested resource')
        entries: list[Obj] = []
        for res in sorted(self._served_resources(), key=lambda r: r.plural or ''):
            if res.group != target.group or res.version != target.version:
                continue
            info = self.info(self.resolve(res))
            if info is None:
                continue
            kind = info.kind or (res.plural or '').capitalize()
            entry: Obj = {
                'name': res.plural, 'singularName': info.singular or kind.lower(),
                'namespaced': bool(info.namespaced if info.namespaced is not None else True),
                'kind': kind, 'verbs': sorted(info.verbs or {'create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'}),
            }
            if info.shortnames:
                entry['shortNames'] = sorted(info.shortnames)
            if info.categories:
                entry['categories'] = sorted(info.categories)
            if res.group:
                entry['storageVersionHash'] = ''
            entries.append(entry)
            for sub in sorted(info.subresources):
                entries.append({'name': f'{res.plural}/{sub}', 'singularName': '', 'namespaced': entry['namespaced'],
                                'kind': kind, 'verbs': ['get', 'patch', 'update']})
        gv = f'{target.group}/{target.version}' if target.group else target.version
        return {'kind': 'APIResourceList', 'apiVersion': 'v1', 'groupVersion': gv, 'resources': entries}

    def _api_group(self, group: str, versions: list[str]) -> Obj:
        preferred = versions[0]
        for res, storage in self._aliases.items():  # CRDs: the storage version is preferred
            if res.group == group and storage.version in versions:
                preferred = storage.version
        return {'name': group,
                'versions': [{'groupVersion': f'{group}/{v}', 'version': v} for v in versions],
                'preferredVersion': {'groupVersion': f'{group}/{preferred}', 'version': preferred}}

    # -- storage primitives ------------------------------------------------------------------------

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    def _key(self, res: kmock.resource, namespace: str | None, name: str) -> Key:
        return (self.resolve(res), namespace, name)

    def current(self, res: kmock.resource | str, namespace: str | None, name: str) -> Obj | None:
        """The current stored object (not a copy: do not mutate), or None."""
        key = self._key(res if isinstance(res, kmock.resource) else kmock.resource(res), namespace, name)
        objects = self._objects._objects
        obj = objects.get(key)
        if obj is None or obj.deleted:
            return None
        return obj.last._ObjectVersion__value  # the stored dict itself, no copy

    def iter_objects(self, res: kmock.resource | str, namespace: str | None = None) -> list[Obj]:
        storage = self.resolve(res if isinstance(res, kmock.resource) else kmock.resource(res))
        result = []
        for (r, ns, _), obj in list(self._objects._objects.items()):
            if r == storage and (namespace is None or ns == namespace) and not obj.deleted:
                result.append(obj.last._ObjectVersion__value)
        return result

    def _store_new(self, res: kmock.resource, namespace: str | None, name: str, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault('metadata', {})
        meta.setdefault('uid', str(uuid.uuid4()))
        meta.setdefault('creationTimestamp', now_rfc3339())
        meta['resourceVersion'] = self._next_rv()
        key = self._key(res, namespace, name)
        if key in self._objects._objects:
            self._objects._objects[key].create(obj)
        else:
            self._objects._objects[key] = kmock.Object(obj)
        self._emit('ADDED', key[0], obj, None)
        return obj

    def _store_update(self, res: kmock.resource, old: Obj, new: Obj) -> Obj:
        meta = new['metadata']
        meta['resourceVersion'] = self._next_rv()
        key = self._key(res, old['metadata'].get('namespace'), old['metadata']['name'])
        self._objects._objects[key].create(new)
        self._emit('MODIFIED', key[0], new, old)
        return new

    def _store_remove(self, res: kmock.resource, obj: Obj) -> Obj:
        meta = obj['metadata']
        key = self._key(res, meta.get('namespace'), meta['name'])
        final = copy.deepcopy(obj)
        final['metadata']['resourceVersion'] = self._next_rv()
        self._objects._objects[key].delete()
        self._emit('DELETED', key[0], final, obj)
        uid = meta.get('uid')
        policy = self._pending_policy.pop(uid, 'Background') if uid else 'Background'
        self._after(lambda: self._collect_garbage(key[0], final, policy))
        return final

    def _after(self, fn: Callable[[], None]) -> None:
        try:
            asyncio.get_running_loop().call_soon(self._guarded, fn)
        except RuntimeError:
            self._guarded(fn)

    def _guarded(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            tb = traceback.format_exc()
            self.internal_errors.append(tb)
            logger.error('Emulator background failure:\n%s', tb)

    def _emit(self, etype: str, res: kmock.resource, obj: Obj, old: Obj | None) -> None:
        if len(self._log) == self._log.maxlen:
            self._log_floor = self._log[0][0]
        self._log.append((self._rv, res, etype, obj, old))
        for watcher in list(self._watchers):
            if watcher.resource == res:
                watcher.queue.put_nowait((etype, obj, old))
        for hook in list(self._hooks):
            try:
                hook(etype, res, obj, old)
            except Exception:
                self.internal_errors.append(traceback.format_exc())

    # -- output shaping ----------------------------------------------------------------------------

    def _output(self, obj: Obj, served: kmock.resource) -> Obj:
        storage = self.resolve(served)
        if storage != served:  # CRD versions: "None" conversion, only the apiVersion changes
            obj = dict(obj, apiVersion=f'{served.group}/{served.version}')
        return obj

    def _api_version(self, res: kmock.resource) -> str:
        return f'{res.group}/{res.version}' if res.group else res.version

    def _kind(self, res: kmock.resource) -> str:
        info = self.info(self.resolve(res))
        return (info.kind if info and info.kind else (res.plural or '').capitalize())

    def _get(self, served: kmock.resource, target: Target) -> Obj:
        assert target.name is not None
        obj = self.current(served, target.namespace, target.name)
        if obj is None:
            raise self._not_found(served, target.name)
        return obj

    def _not_found(self, res: kmock.resource, name: str) -> ApiError:
        gr = f'{res.plural}.{res.group}' if res.group else res.plural
        return ApiError.make(404, f'{gr} "{name}" not found', 'NotFound',
                             {'name': name, 'group': res.group, 'kind': res.plural})

    def _selector(self, params: Mapping[str, str]) -> Selector:
        try:
            return Selector.parse(params.get('labelSelector'), params.get('fieldSelector'))
        except ValueError as e:
            raise ApiError.make(400, str(e), 'BadRequest')

    def _wants_table(self, raw: aiohttp.web.BaseRequest) -> bool:
        accept = raw.headers.get('Accept', '')
        return 'as=Table' in accept

    def _serve_list(self, served: kmock.resource, info: kmock.ResourceInfo, target: Target,
                    raw: aiohttp.web.BaseRequest) -> aiohttp.web.Response:
        selector = self._selector(raw.query)
        objs = [o for o in self.iter_objects(served, target.namespace) if selector(o)]
        objs.sort(key=lambda o: (o['metadata'].get('namespace') or '', o['metadata']['name']))
        rv = self.resource_version
        if self._wants_table(raw):
            return self._json(self._table(served, objs, raw.query.get('includeObject', 'Metadata'), rv))
        return self._json({
            'kind': f'{self._kind(served)}List', 'apiVersion': self._api_version(served),
            'metadata': {'resourceVersion': rv},
            'items': [self._output(o, served) for o in objs]})

    def _table(self, served: kmock.resource, objs: list[Obj], include: str, rv: str, with_columns: bool = True) -> Obj:
        storage = self.resolve(served)
        columns = self._columns.get(storage) or self._columns.get(served) or [
            _Column('Name', format='name', fn=lambda o: o['metadata'].get('name'),
                    description='Name must be unique within a namespace.'),
            _Column('Age', fn=_age, description='CreationTimestamp is a timestamp ...')]
        rows = []
        for obj in objs:
            cells = []
            for col in columns:
                value = col.fn(obj) if col.fn else get_path(obj, col.json_path or '')
                if col.type == 'date' and isinstance(value, str):
                    try:
                        value = human_duration((datetime.datetime.now(tz=datetime.timezone.utc) - parse_rfc3339(value)).total_seconds())
                    except ValueError:
                        value = '<invalid>'
                elif col.type == 'string' and value is not None and not isinstance(value, str):
                    value = json.dumps(value) if isinstance(value, (dict, list)) else str(value).lower() if isinstance(value, bool) else str(value)
                cells.append(value)
            row: Obj = {'cells': cells}
            if include == 'Object':
                row['object'] = self._output(obj, served)
            elif include != 'None':
                row['object'] = {'kind': 'PartialObjectMetadata', 'apiVersion': 'meta.k8s.io/v1',
                                 'metadata': obj['metadata']}
            rows.append(row)
        return {'kind': 'Table', 'apiVersion': 'meta.k8s.io/v1', 'metadata': {'resourceVersion': rv},
                'columnDefinitions': [{'name': c.name, 'type': 'string' if c.type == 'date' else c.type,
                                       'format': c.format, 'description': c.description,
                                       'priority': c.priority} for c in columns] if with_columns else None,
                'rows': rows}

    # -- watch -------------------------------------------------------------------------------------

    async def _serve_watch(self, served: kmock.resource, info: kmock.ResourceInfo, target: Target,
                           raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        params = raw.query
        selector = self._selector(params)
        storage = self.resolve(served)
        as_table = self._wants_table(raw)
        include = params.get('includeObject', 'Metadata')
        timeout = float(params['timeoutSeconds']) if params.get('timeoutSeconds') else None
        since = params.get('resourceVersion')
        watcher = _Watcher(storage, target.namespace, target.name, selector, asyncio.Queue())

        def visible(obj: Obj | None) -> bool:
            if obj is None:
                return False
            meta = obj['metadata']
            if target.namespace is not None and meta.get('namespace') != target.namespace:
                return False
            if target.name is not None and meta.get('name') != target.name:
                return False
            return selector(obj)

        # Snapshot + subscribe atomically (no awaits in between).
        initial: list[Obj] = []
        gone = False
        if since and since != '0':
            try:
                since_int = int(since)
            except ValueError:
                raise ApiError.make(400, f'invalid resourceVersion {since!r}')
            if since_int < self._log_floor:
                gone = True
            else:
                for rv, res, etype, obj, old in self._log:
                    if rv > since_int and res == storage:
                        ev = self._watch_event(etype, obj, old, visible)
                        if ev:
                            initial.append(ev)
        else:
            objs = [o for o in self.iter_objects(storage) if visible(o)]
            objs.sort(key=lambda o: int(o['metadata']['resourceVersion']))
            initial = [{'type': 'ADDED', 'object': o} for o in objs]
            if params.get('sendInitialEvents') == 'true':
                initial.append({'type': 'BOOKMARK', 'object': {
                    'kind': self._kind(served), 'apiVersion': self._api_version(served),
                    'metadata': {'resourceVersion': self.resource_version,
                                 'annotations': {'k8s.io/initial-events-end': 'true'}}}})
        if not gone:
            self._watchers.add(watcher)

        response = aiohttp.web.StreamResponse(status=200)
        response.content_type = 'application/json'
        response.enable_chunked_encoding()
        first = True

        async def send(event: Obj) -> None:
            nonlocal first
            obj = event['object']
            if event['type'] in ('ADDED', 'MODIFIED', 'DELETED'):
                if as_table:
                    obj = self._table(served, [obj], include, obj['metadata'].get('resourceVersion', ''), with_columns=first)
                    first = False
                else:
                    obj = self._output(obj, served)
            await response.write(json.dumps({'type': event['type'], 'object': obj}).encode() + b'\n')

        try:
            await response.prepare(raw)
            if gone:
                await response.write(json.dumps({'type': 'ERROR', 'object': status_body(
                    410, 'Expired', f'too old resource version: {since} ({self._log_floor})')}).encode() + b'\n')
                return response
            for event in initial:
                await send(event)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout if timeout else None
            while not self._closing:
                transport = raw.transport
                if transport is None or transport.is_closing():
                    break
                wait = 1.0 if deadline is None else min(1.0, deadline - loop.time())
                if wait <= 0:
                    break
                try:
                    etype, obj, old = await asyncio.wait_for(watcher.queue.get(), timeout=wait)
                except asyncio.TimeoutError:
                    continue
                ev = self._watch_event(etype, obj, old, visible)
                if ev:
                    await send(ev)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away
        finally:
            self._watchers.discard(watcher)
        return response

    @staticmethod
    def _watch_event(etype: str, obj: Obj, old: Obj | None, visible: Callable[[Obj | None], bool]) -> Obj | None:
        now, before = visible(obj), visible(old)
        if etype == 'MODIFIED':
            if now and before:
                return {'type': 'MODIFIED', 'object': obj}
            if now:
                return {'type': 'ADDED', 'object': obj}
            if before:
                return {'type': 'DELETED', 'object': obj}
            return None
        if etype == 'DELETED':
            return {'type': 'DELETED', 'object': obj} if (now or before) else None
        return {'type': etype, 'object': obj} if now else None

    def watcher_count(self, resource: kmock.resource | str | None = None) -> int:
        """How many watch streams are open (for a resource): lets tests wait for an operator."""
        if resource is None:
            return len(self._watchers)
        storage = self.resolve(resource if isinstance(resource, kmock.resource) else kmock.resource(resource))
        return sum(1 for w in list(self._watchers) if w.resource == storage)

    def close_watches(self) -> None:
        """End all watch streams (on shutdown)."""
        self._closing = True

    # -- create ------------------------------------------------------------------------------------

    def _create(self, served: kmock.resource, info: kmock.ResourceInfo, target: Target, data: Any,
                params: Mapping[str, str]) -> tuple[Obj, int]:
        if target.subresource:
            raise ApiError.make(405, 'create on a subresource is not emulated', 'MethodNotAllowed')
        if not isinstance(data, dict):
            raise ApiError.make(400, 'the body of the request was in an unknown format', 'BadRequest')
        obj = copy.deepcopy(data)
        storage = self.resolve(served)
        kind = self._kind(served)
        if obj.get('kind') not in (None, kind):
            raise ApiError.make(400, f'the API version in the data ({obj.get("apiVersion")}) does not match the expected '
                                     f'API version ({self._api_version(served)}) or kind {obj.get("kind")!r} != {kind!r}')
        obj['kind'] = kind
        obj['apiVersion'] = self._api_version(storage)
        meta = obj.setdefault('metadata', {})
        if not isinstance(meta, dict):
            raise ApiError.make(400, 'metadata must be an object')
        if info.namespaced:
            ns = target.namespace or meta.get('namespace')
            if not ns:
                raise ApiError.make(400, 'the namespace of the provided object does not match the namespace sent on the request')
            if target.namespace and meta.get('namespace') not in (None, '', target.namespace):
                raise ApiError.make(400, 'the namespace of the provided object does not match the namespace sent on the request')
            meta['namespace'] = ns
        else:
            meta.pop('namespace', None)
            ns = None
        if not meta.get('name'):
            if meta.get('generateName'):
                for _ in range(100):
                    name = meta['generateName'] + ''.join(random.choice(_GENERATE_ALPHABET) for _ in range(5))
                    if self.current(storage, ns, name) is None:
                        break
                meta['name'] = name
            else:
                raise self._invalid(kind, '', [('metadata.name', 'Required value: name or generateName is required')])
        name = meta['name']
        for server_field in ('uid', 'resourceVersion', 'creationTimestamp', 'deletionTimestamp',
                             'deletionGracePeriodSeconds', 'generation', 'managedFields', 'selfLink'):
            meta.pop(server_field, None)
        if info.subresources and 'status' in info.subresources and not (storage.group == '' and storage.plural == 'namespaces'):
            obj.pop('status', None)
        self._validate(storage, obj, None)
        self._default(storage, obj)
        if (storage.group, storage.plural) not in _NO_GENERATION:
            meta['generation'] = 1

        if ns is not None:
            nsobj = self.current(kmock.resource('', 'v1', 'namespaces'), None, ns)
            if nsobj is None:
                if not self.auto_create_namespaces:
                    raise ApiError.make(404, f'namespaces "{ns}" not found', 'NotFound',
                                        {'name': ns, 'kind': 'namespaces'})
                if params.get('dryRun') != 'All':
                    self.ensure_namespace(ns)
            elif nsobj['metadata'].get('deletionTimestamp'):
                raise ApiError.make(403, f'{kind.lower()}s "{name}" is forbidden: unable to create new content in '
                                         f'namespace {ns} because it is being terminated', 'Forbidden')
        if self.current(storage, ns, name) is not None:
            gr = f'{served.plural}.{served.group}' if served.group else served.plural
            raise ApiError.make(409, f'{gr} "{name}" already exists', 'AlreadyExists',
                                {'name': name, 'group': served.group, 'kind': served.plural})
        if params.get('dryRun') == 'All':
            meta['uid'] = str(uuid.uuid4())
            meta['creationTimestamp'] = now_rfc3339()
            return self._output(obj, served), 201
        stored = self._store_new(storage, ns, name, obj)
        if meta.get('ownerReferences'):
            self._after(lambda: self._collect_if_orphaned(storage, ns, name))
        if storage == kmock.resource('apiextensions.k8s.io', 'v1', 'customresourcedefinitions'):
            self._after(lambda: self._establish_crd(name))
        return self._output(stored, served), 201

    def ensure_namespace(self, name: str) -> Obj:
        """Create a Namespace object if absent (call in the loop, or via :meth:`call`)."""
        res = kmock.resource('', 'v1', 'namespaces')
        existing = self.current(res, None, name)
        if existing is not None:
            return existing
        return self._store_new(res, None, name, {
            'apiVersion': 'v1', 'kind': 'Namespace',
            'metadata': {'name': name, 'labels': {'kubernetes.io/metadata.name': name}},
            'spec': {'finalizers': ['kubernetes']}, 'status': {'phase': 'Active'}})

    def _invalid(self, kind: str, name: str, causes: list[tuple[str, str]]) -> ApiError:
        message = f'{kind} "{name}" is invalid: ' + ', '.join(f'{f}: {m}' for f, m in causes)
        return ApiError.make(422, message, 'Invalid', {
            'name': name, 'kind': kind,
            'causes': [{'reason': 'FieldValueInvalid', 'message': m, 'field': f} for f, m in causes]})

    def _validate(self, res: kmock.resource, obj: Obj, old: Obj | None) -> None:
        kind = obj.get('kind', '')
        meta = obj['metadata']
        name = meta.get('name', '')
        causes: list[tuple[str, str]] = []
        pattern = _DNS_LABEL if (res.group, res.plural) in _DNS_LABEL_NAMES else _DNS_SUBDOMAIN
        limit = 63 if (res.group, res.plural) in _DNS_LABEL_NAMES else 253
        if res.plural != 'events' and (not pattern.match(name) or len(name) > limit):
            causes.append(('metadata.name', f'Invalid value: "{name}": a lowercase RFC 1123 '
                           f'{"label" if limit == 63 else "subdomain"} must consist of lower case alphanumeric characters, '
                           f"'-' or '.', and must start and end with an alphanumeric character (at most {limit} characters)"))
        for key, value in (meta.get('labels') or {}).items():
            prefix, _, lname = key.rpartition('/')
            if not _LABEL_NAME.match(lname) or len(lname) > 63 or (prefix and not _DNS_SUBDOMAIN.match(prefix)):
                causes.append(('metadata.labels', f'Invalid value: "{key}": name part must consist of alphanumeric '
                               "characters, '-', '_' or '.', and must start and end with an alphanumeric character"))
            if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
                causes.append(('metadata.labels', f'Invalid value: "{value}": a valid label must be an empty string or '
                               "consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                               'alphanumeric character (at most 63 characters)'))
        for key, value in (meta.get('annotations') or {}).items():
            if not isinstance(value, str):
                raise ApiError.make(400, f'annotation {key!r} must be a string')
        if len(json.dumps(meta.get('annotations') or {})) > 262144:
            causes.append(('metadata.annotations', 'Too long: must have at most 262144 bytes'))
        if res.group == '' and res.plural in ('configmaps', 'secrets'):
            size = len(json.dumps(obj.get('data') or {})) + len(json.dumps(obj.get('binaryData') or {}))
            if size > 1048576:
                causes.append(('data', 'Too long: must have at most 1048576 bytes'))
        if res == kmock.resource('', 'v1', 'pods'):
            causes += self._validate_pod_spec(obj.get('spec'), 'spec', job=False)
        if res == kmock.resource('batch', 'v1', 'jobs'):
            template = (obj.get('spec') or {}).get('template')
            if not isinstance(template, dict):
                causes.append(('spec.template', 'Required value'))
            else:
                causes += self._validate_pod_spec(template.get('spec'), 'spec.template.spec', job=True)
            if old is not None:
                old_spec, new_spec = old.get('spec') or {}, obj.get('spec') or {}
                if old_spec.get('template') != new_spec.get('template') and not old_spec.get('suspend'):
                    causes.append(('spec.template', 'Invalid value: field is immutable'))
                for f in ('selector', 'completions', 'completionMode'):
                    if f in old_spec and old_spec.get(f) != new_spec.get(f) and f != 'completions':
                        causes.append((f'spec.{f}', 'Invalid value: field is immutable'))
        if causes:
            raise self._invalid(kind, name, causes)

    @staticmethod
    def _validate_pod_spec(spec: Any, path: str, job: bool) -> list[tuple[str, str]]:
        causes: list[tuple[str, str]] = []
        if not isinstance(spec, dict):
            return [(path, 'Required value')]
        containers = spec.get('containers')
        if not containers:
            causes.append((f'{path}.containers', 'Required value'))
        names = set()
        for i, c in enumerate(containers or []):
            if not c.get('name'):
                causes.append((f'{path}.containers[{i}].name', 'Required value'))
            elif not _DNS_LABEL.match(c['name']):
                causes.append((f'{path}.containers[{i}].name', f'Invalid value: "{c["name"]}": a lowercase RFC 1123 label'))
            elif c['name'] in names:
                causes.append((f'{path}.containers[{i}].name', f'Duplicate value: "{c["name"]}"'))
            names.add(c.get('name'))
            if not c.get('image'):
                causes.append((f'{path}.containers[{i}].image', 'Required value'))
            for j, e in enumerate(c.get('env') or []):
                if not isinstance(e, dict) or not isinstance(e.get('name'), str) or not e['name']:
                    causes.append((f'{path}.containers[{i}].env[{j}].name', 'Required value: must be a non-empty string'))
                elif 'value' in e and e['value'] is not None and not isinstance(e['value'], str):
                    causes.append((f'{path}.containers[{i}].env[{j}].value', 'Invalid value: must be a string'))
        vol_names = {v.get('name') for v in spec.get('volumes') or []}
        for i, c in enumerate(containers or []):
            for j, m in enumerate(c.get('volumeMounts') or []):
                if m.get('name') not in vol_names:
                    causes.append((f'{path}.containers[{i}].volumeMounts[{j}].name', f'Not found: "{m.get("name")}"'))
        if job and spec.get('restartPolicy') not in ('Never', 'OnFailure'):
            causes.append((f'{path}.restartPolicy', 'Required value: valid values: "OnFailure", "Never"'))
        return causes

    def _default(self, res: kmock.resource, obj: Obj, creating: bool = True) -> None:
        if res == kmock.resource('', 'v1', 'pods'):
            self._default_pod_spec(obj.setdefault('spec', {}))
            if creating:
                obj['status'] = {'phase': 'Pending', 'qosClass': 'BestEffort'}
        elif res == kmock.resource('batch', 'v1', 'jobs'):
            spec = obj.setdefault('spec', {})
            uid = obj['metadata'].setdefault('uid', str(uuid.uuid4()))
            spec.setdefault('parallelism', 1)
            spec.setdefault('completions', 1)
            spec.setdefault('backoffLimit', 6)
            spec.setdefault('completionMode', 'NonIndexed')
            spec.setdefault('suspend', False)
            spec.setdefault('manualSelector', False)
            spec.setdefault('podReplacementPolicy', 'TerminatingOrFailed')
            tmeta = spec['template'].setdefault('metadata', {})
            labels = tmeta.setdefault('labels', {})
            name = obj['metadata']['name']
            labels.setdefault('batch.kubernetes.io/controller-uid', uid)
            labels.setdefault('batch.kubernetes.io/job-name', name)
            labels.setdefault('controller-uid', uid)
            labels.setdefault('job-name', name)
            spec.setdefault('selector', {'matchLabels': {'batch.kubernetes.io/controller-uid': uid}})
            self._default_pod_spec(spec['template'].setdefault('spec', {}))
            obj['metadata'].setdefault('labels', {}).setdefault('batch.kubernetes.io/job-name', name)
            obj['metadata']['labels'].setdefault('job-name', name)
        elif res == kmock.resource('', 'v1', 'namespaces') and creating:
            obj.setdefault('spec', {}).setdefault('finalizers', ['kubernetes'])
            obj['status'] = {'phase': 'Active'}
            obj['metadata'].setdefault('labels', {})['kubernetes.io/metadata.name'] = obj['metadata']['name']
        elif res == kmock.resource('', 'v1', 'secrets'):
            obj.setdefault('type', 'Opaque')
            if obj.get('stringData'):  # the real server folds stringData into base64 data
                import base64
                data = obj.setdefault('data', {})
                for k, v in obj.pop('stringData').items():
                    data[k] = base64.b64encode(str(v).encode()).decode()

    @staticmethod
    def _default_pod_spec(spec: Obj) -> None:
        spec.setdefault('restartPolicy', 'Always')
        spec.setdefault('terminationGracePeriodSeconds', 30)
        spec.setdefault('dnsPolicy', 'ClusterFirst')
        spec.setdefault('schedulerName', 'default-scheduler')
        spec.setdefault('securityContext', {})
        for c in (spec.get('containers') or []) + (spec.get('initContainers') or []):
            c.setdefault('terminationMessagePath', '/dev/termination-log')
            c.setdefault('terminationMessagePolicy', 'File')
            image = c.get('image') or ''
            tagged = ':' in image.rsplit('/', 1)[-1] or '@' in image
            c.setdefault('imagePullPolicy', 'IfNotPresent' if tagged and not image.endswith(':latest') else 'Always')
            c.setdefault('resources', {})

    # -- update / patch ----------------------------------------------------------------------------

    def _replace(self, served: kmock.resource, info: kmock.ResourceInfo, target: Target, data: Any,
                 params: Mapping[str, str]) -> tuple[Obj, int]:
        if not isinstance(data, dict):
            raise ApiError.make(400, 'the body of the request was in an unknown format')
        old = self._get(served, target)
        meta = data.get('metadata') or {}
        if meta.get('name') not in (None, target.name):
            raise ApiError.make(400, 'the name of the object does not match the name on the URL')
        rv = meta.get('resourceVersion')
        return self._update(served, info, target, old, copy.deepcopy(data), params, precondition_rv=rv)

    def _patch(self, served: kmock.resource, info: kmock.ResourceInfo, target: Target, request: rendering.Request,
               params: Mapping[str, str]) -> tuple[Obj, int]:
        ctype = (request.headers.get('Content-Type') or '').split(';')[0].strip()
        storage = self.resolve(served)
        old = self.current(served, target.namespace, target.name or '')
        if ctype == 'application/apply-patch+yaml':
            try:
                patch = yaml.safe_load(request.body.decode()) if request.body else {}
            except yaml.YAMLError as e:
                raise ApiError.make(400, f'error decoding YAML: {e}')
            if old is None:  # server-side apply creates
                patch = dict(patch or {})
                patch.setdefault('metadata', {})['name'] = target.name
                return self._create(served, info, attrs.evolve(target, name=None), patch, params)
            new = merge_patch(copy.deepcopy(old), patch)
            return self._update(served, info, target, old, new, params, precondition_rv=None)
        if old is None:
            raise self._not_found(served, target.name or '')
        try:
            patch = json.loads(request.body) if request.body else None
        except ValueError as e:
            raise ApiError.make(400, f'error decoding patch: {e}')
        if ctype == 'application/json-patch+json':
            if not isinstance(patch, list):
                raise ApiError.make(400, 'json patch must be a list of operations')
            try:
                new = jsonpatch.apply_patch(copy.deepcopy(old), patch, in_place=False)
            except jsonpatch.JsonPatchTestFailed as e:
                raise ApiError.make(422, f'the server rejected our request due to an error in our request: {e}', 'Invalid')
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, KeyError, IndexError, TypeError) as e:
                raise ApiError.make(422, f'the server rejected our request due to an error in our request: {e}', 'Invalid')
            precondition = None
        elif ctype in ('application/merge-patch+json', 'application/strategic-merge-patch+json'):
            if not isinstance(patch, dict):
                raise ApiError.make(400, 'the body of the request was in an unknown format')
            if ctype == 'application/strategic-merge-patch+json':
                if storage in self._custom:
                    raise ApiError.make(415, 'the body of the request was in an unknown format - accepted media types '
                                             'include: application/json-patch+json, application/merge-patch+json, '
                                             'application/apply-patch+yaml', 'UnsupportedMediaType')
                new = strategic_merge_patch(copy.deepcopy(old), patch)
            else:
                new = merge_patch(copy.deepcopy(old), patch)
            precondition = (patch.get('metadata') or {}).get('resourceVersion') if isinstance(patch.get('metadata'), dict) else None
        else:
            raise ApiError.make(415, 'the body of the request was in an unknown format - accepted media types include: '
                                     'application/json-patch+json, application/merge-patch+json, '
                                     'application/apply-patch+yaml', 'UnsupportedMediaType')
        return self._update(served, info, target, old, new, params, precondition_rv=precondition)

    def _update(self, served: kmock.resource, info: kmock.ResourceInfo, target: Target, old: Obj, new: Obj,
                params: Mapping[str, str], precondition_rv: str | None) -> tuple[Obj, int]:
        storage = self.resolve(served)
        if not isinstance(new, dict):
            raise ApiError.make(422, 'the patched object is not an object', 'Invalid')
        ometa = old['metadata']
        if precondition_rv and str(precondition_rv) != ometa.get('resourceVersion'):
            gr = f'{served.plural}.{served.group}' if served.group else served.plural
            raise ApiError.make(409, f'Operation cannot be fulfilled on {gr} "{ometa["name"]}": the object has been '
                                     f'modified; please apply your changes to the latest version and try again',
                                'Conflict', {'name': ometa['name'], 'group': served.group, 'kind': served.plural})
        has_status = 'status' in info.subresources and not (storage.group == '' and storage.plural == 'namespaces')
        if target.subresource == 'status':
            status = new.get('status')
            new = copy.deepcopy(old)
            if status is None:
                new.pop('status', None)
            else:
                new['status'] = status
        else:
            if has_status:
                if 'status' in old:
                    new['status'] = copy.deepcopy(old['status'])
                else:
                    new.pop('status', None)
        nmeta = new.get('metadata')
        if not isinstance(nmeta, dict):
            nmeta = new['metadata'] = {}
        for immutable in ('name', 'namespace', 'uid', 'creationTimestamp', 'deletionTimestamp',
                          'deletionGracePeriodSeconds', 'generation', 'resourceVersion'):
            if immutable in ometa:
                nmeta[immutable] = ometa[immutable]
            else:
                nmeta.pop(immutable, None)
        nmeta.pop('managedFields', None)
        new['kind'] = old['kind']
        new['apiVersion'] = old['apiVersion']
        if ometa.get('deletionTimestamp'):
            added = set(nmeta.get('finalizers') or []) - set(ometa.get('finalizers') or [])
            if added:
                raise ApiError.make(422, f'{old["kind"]} "{ometa["name"]}" is invalid: metadata.finalizers: Forbidden: '
                                         f'no new finalizers can be added if the object is being deleted, found new '
                                         f'finalizers {sorted(added)!r}', 'Invalid')
        if target.subresource != 'status':
            self._default(storage, new, creating=False)
            self._validate(storage, new, old)
        spec_changed = {k: v for k, v in new.items() if k not in ('metadata', 'status')} != \
                       {k: v for k, v in old.items() if k not in ('metadata', 'status')}
        if spec_changed and 'generation' in ometa:
            nmeta['generation'] = int(ometa['generation']) + 1
        if new == old:  # a no-op: no new resourceVersion, no event
            return self._output(old, served), 200
        if params.get('dryRun') == 'All':
            return self._output(new, served), 200
        stored = self._store_update(storage, old, new)
        if nmeta.get('deletionTimestamp') and not nmeta.get('finalizers') and not nmeta.get('deletionGracePeriodSeconds'):
            self._store_remove(storage, stored)  # the last finalizer is gone: the object goes away
            return self._output(stored, served), 200
        if storage == kmock.resource('apiextensions.k8s.io', 'v1', 'customresourcedefinitions') and target.subresource != 'status':
            self._after(lambda: self._establish_crd(ometa['name']))
        if ometa.get('deletionTimestamp') and 'foregroundDeletion' in (nmeta.get('finalizers') or []):
            self._after(lambda: self._check_foreground(storage, nmeta.get('uid')))
        return self._output(stored, served), 200

    # -- delete ------------------------------------------------------------------------------------

    def _delete_options(self, data: Any, params: Mapping[str, str]) -> Obj:
        opts = dict(data) if isinstance(data, dict) else {}
        if 'propagationPolicy' in params:
            opts['propagationPolicy'] = params['propagationPolicy']
        if 'gracePeriodSeconds' in params:
            opts['gracePeriodSeconds'] = int(params['gracePeriodSeconds'])
        if params.get('dryRun') == 'All':
            opts['dryRun'] = ['All']
        if opts.get('orphanDependents') is True and 'propagationPolicy' not in opts:
            opts['propagationPolicy'] = 'Orphan'
        return opts

    def _delete_request(self, served: kmock.resource, info: kmock.ResourceInfo, target: Target, data: Any,
                        params: Mapping[str, str]) -> tuple[Obj, int]:
        obj = self._get(served, target)
        opts = self._delete_options(data, params)
        pre = opts.get('preconditions') or {}
        if pre.get('uid') and pre['uid'] != obj['metadata'].get('uid') or \
                pre.get('resourceVersion') and pre['resourceVersion'] != obj['metadata'].get('resourceVersion'):
            raise ApiError.make(409, f'Precondition failed: UID in precondition: {pre.get("uid")}, UID in object meta: '
                                     f'{obj["metadata"].get("uid")}', 'Conflict')
        if 'All' in (opts.get('dryRun') or []):
            return self._output(obj, served), 200
        result = self.delete_object(served, obj, opts)
        return self._output(result, served), 200

    def _delete_collection(self, served: kmock.resource, info: kmock.ResourceInfo, target: Target, data: Any,
                           params: Mapping[str, str]) -> tuple[Obj, int]:
        selector = self._selector(params)
        opts = self._delete_options(data, params)
        items = []
        for obj in [o for o in self.iter_objects(served, target.namespace) if selector(o)]:
            items.append(self._output(self.delete_object(served, obj, opts), served))
        return {'kind': f'{self._kind(served)}List', 'apiVersion': self._api_version(served),
                'metadata': {'resourceVersion': self.resource_version}, 'items': items}, 200

    def delete_object(self, res: kmock.resource | str, obj: Obj, options: Mapping[str, Any] | None = None) -> Obj:
        """Delete like the API server does (finalizers, graceful pods, propagation); returns the result."""
        res = res if isinstance(res, kmock.resource) else kmock.resource(res)
        storage = self.resolve(res)
        opts = dict(options or {})
        meta = obj['metadata']
        default_policy = 'Orphan' if storage == kmock.resource('batch', 'v1', 'jobs') and res.version == 'v1' and \
            self.job_default_propagation == 'Orphan' else 'Background'
        policy = opts.get('propagationPolicy') or default_policy
        if policy not in ('Orphan', 'Background', 'Foreground'):
            raise ApiError.make(400, f'invalid propagationPolicy {policy!r}')
        uid = meta.get('uid')
        is_pod = storage == kmock.resource('', 'v1', 'pods')
        is_ns = storage == kmock.resource('', 'v1', 'namespaces')

        requested_grace = opts.get('gracePeriodSeconds')
        grace = 0
        if is_pod and (obj.get('spec') or {}).get('nodeName') and \
                (obj.get('status') or {}).get('phase') not in ('Succeeded', 'Failed'):
            # A pod bound to a node: the kubelet stops its containers, then deletes it with grace 0.
            grace = int(requested_grace if requested_grace is not None
                        else (obj.get('spec') or {}).get('terminationGracePeriodSeconds', 30))

        if meta.get('deletionTimestamp'):
            # Already deleting: only a shorter grace period for pods changes anything.
            if is_pod and requested_grace is not None and int(requested_grace) < int(meta.get('deletionGracePeriodSeconds') or 0):
                new = copy.deepcopy(obj)
                new['metadata']['deletionGracePeriodSeconds'] = int(requested_grace)
                stored = self._store_update(storage, obj, new)
                if int(requested_grace) == 0 and not meta.get('finalizers'):
                    return self._store_remove(storage, stored)
                return stored
            return obj

        if uid:
            self._pending_policy[uid] = policy
        finalizers = list(meta.get('finalizers') or [])
        if policy == 'Foreground' and self._dependents(uid) and 'foregroundDeletion' not in finalizers:
            finalizers.append('foregroundDeletion')
        if finalizers or grace > 0 or is_ns:
            new = copy.deepcopy(obj)
            new['metadata']['deletionTimestamp'] = now_rfc3339(grace)
            new['metadata']['deletionGracePeriodSeconds'] = grace
            new['metadata']['finalizers'] = finalizers
            if not finalizers:
                new['metadata'].pop('finalizers')
            if is_ns:
                new.setdefault('status', {})['phase'] = 'Terminating'
            stored = self._store_update(storage, obj, new)
            if 'foregroundDeletion' in finalizers:
                self._after(lambda: self._delete_dependents(uid, 'Background'))
            if is_ns:
                self._after(lambda: self._terminate_namespace(meta['name']))
            return stored
        return self._store_remove(storage, obj)

    # -- garbage collection ------------------------------------------------------------------------

    def _dependents(self, uid: str | None) -> list[tuple[kmock.resource, Obj]]:
        if not uid:
            return []
        result = []
        for (res, _, _), o in list(self._objects._objects.items()):
            if o.deleted:
                continue
            raw = o.last._ObjectVersion__value
            if any(ref.get('uid') == uid for ref in raw.get('metadata', {}).get('ownerReferences') or []):
                result.append((res, raw))
        return result

    def _collect_garbage(self, res: kmock.resource, owner: Obj, policy: str) -> None:
        uid = owner['metadata'].get('uid')
        if policy == 'Orphan':
            self._orphan_dependents(uid)
        else:
            self._delete_dependents(uid, 'Background')
        # Owners in foreground deletion may be waiting for this object to disappear.
        for ref in owner['metadata'].get('ownerReferences') or []:
            self._check_foreground(None, ref.get('uid'))
        ns = owner['metadata'].get('namespace')
        if ns:
            nsobj = self.current(kmock.resource('', 'v1', 'namespaces'), None, ns)
            if nsobj and nsobj['metadata'].get('deletionTimestamp'):
                self._terminate_namespace(ns)
        if res == kmock.resource('apiextensions.k8s.io', 'v1', 'customresourcedefinitions'):
            self._unregister_crd(owner)

    def _collect_if_orphaned(self, res: kmock.resource, namespace: str | None, name: str) -> None:
        """Like the real GC: an object whose owners are all gone (dangling references) is deleted."""
        obj = self.current(res, namespace, name)
        refs = (obj or {}).get('metadata', {}).get('ownerReferences') or []
        if obj is not None and refs and not any(self._uid_exists(r.get('uid')) for r in refs):
            self.delete_object(res, obj, {'propagationPolicy': 'Background'})

    def _orphan_dependents(self, uid: str | None) -> None:
        for res, dep in self._dependents(uid):
            new = copy.deepcopy(dep)
            refs = [r for r in new['metadata'].get('ownerReferences') or [] if r.get('uid') != uid]
            if refs:
                new['metadata']['ownerReferences'] = refs
            else:
                new['metadata'].pop('ownerReferences', None)
            self._store_update(res, dep, new)

    def _delete_dependents(self, uid: str | None, policy: str) -> None:
        for res, dep in self._dependents(uid):
            live_owners = [r for r in dep['metadata'].get('ownerReferences') or []
                           if r.get('uid') != uid and self._uid_exists(r.get('uid'))]
            if live_owners:  # other owners keep it alive; only drop the dangling reference
                new = copy.deepcopy(dep)
                new['metadata']['ownerReferences'] = [r for r in new['metadata']['ownerReferences'] if r.get('uid') != uid]
                self._store_update(res, dep, new)
            else:
                self.delete_object(res, dep, {'propagationPolicy': policy})

    def _uid_exists(self, uid: str | None) -> bool:
        if not uid:
            return False
        for o in list(self._objects._objects.values()):
            if not o.deleted and o.last._ObjectVersion__value.get('metadata', {}).get('uid') == uid:
                return True
        return False

    def _check_foreground(self, res: kmock.resource | None, uid: str | None) -> None:
        if not uid:
            return
        for (r, _, _), o in list(self._objects._objects.items()):
            if o.deleted:
                continue
            raw = o.last._ObjectVersion__value
            meta = raw['metadata']
            if meta.get('uid') != uid or 'foregroundDeletion' not in (meta.get('finalizers') or []):
                continue
            blocking = [d for _, d in self._dependents(uid)
                        if any(ref.get('uid') == uid and ref.get('blockOwnerDeletion')
                               for ref in d['metadata'].get('ownerReferences') or [])]
            if blocking:
                return
            new = copy.deepcopy(raw)
            new['metadata']['finalizers'] = [f for f in meta['finalizers'] if f != 'foregroundDeletion']
            if not new['metadata']['finalizers']:
                new['metadata'].pop('finalizers')
                stored = self._store_update(r, raw, new)
                self._pending_policy[uid] = 'Background'
                self._store_remove(r, stored)
            else:
                self._store_update(r, raw, new)
            return

    def _terminate_namespace(self, ns: str) -> None:
        nsres = kmock.resource('', 'v1', 'namespaces')
        nsobj = self.current(nsres, None, ns)
        if nsobj is None or not nsobj['metadata'].get('deletionTimestamp'):
            return
        def live() -> list[tuple[kmock.resource, Obj]]:
            return [(res, o.last._ObjectVersion__value) for (res, objns, _), o in list(self._objects._objects.items())
                    if objns == ns and not o.deleted]
        for res, raw in live():
            if not raw['metadata'].get('deletionTimestamp'):
                self.delete_object(res, raw, {'propagationPolicy': 'Background'})
        if not live():
            self._store_remove(nsres, nsobj)

    # -- CRDs --------------------------------------------------------------------------------------

    def _establish_crd(self, name: str) -> None:
        res = kmock.resource('apiextensions.k8s.io', 'v1', 'customresourcedefinitions')
        crd = self.current(res, None, name)
        if crd is None:
            return
        _register_crd_types(self, crd)
        names = crd.get('spec', {}).get('names', {})
        status = {
            'acceptedNames': {k: v for k, v in names.items()},
            'storedVersions': [v['name'] for v in crd.get('spec', {}).get('versions', []) if v.get('storage')],
            'conditions': [
                {'type': 'NamesAccepted', 'status': 'True', 'reason': 'NoConflicts', 'message': 'no conflicts found',
                 'lastTransitionTime': now_rfc3339()},
                {'type': 'Established', 'status': 'True', 'reason': 'InitialNamesAccepted',
                 'message': 'the initial names have been accepted', 'lastTransitionTime': now_rfc3339()}]}
        if crd.get('status', {}).get('acceptedNames') == status['acceptedNames']:
            return
        new = copy.deepcopy(crd)
        new['status'] = status
        self._store_update(res, crd, new)

    def _unregister_crd(self, crd: Obj) -> None:
        spec = crd.get('spec', {})
        group, plural = spec.get('group'), spec.get('names', {}).get('plural')
        for res in list(self.resources._resources):
            if res.group == group and res.plural == plural:
                for key in [k for k in self._objects._objects if k[0] == res]:
                    o = self._objects._objects[key]
                    if not o.deleted:
                        self._store_remove(res, o.last._ObjectVersion__value)
                del self.resources._resources[res]
                self._columns.pop(res, None)
                self._custom.discard(res)
        for alias in [a for a in self._aliases if a.group == group and a.plural == plural]:
            del self._aliases[alias]


# ---------------------------------------------------------------------------------------------------
# Registration of custom resources
# ---------------------------------------------------------------------------------------------------

def register_custom_resource(
        emulator: ClusterEmulator,
        group: str,
        version: str,
        plural: str,
        kind: str,
        short_names: Iterable[str] = (),
        namespaced: bool = True,
        subresources: Iterable[str] = ('status',),
        printer_columns: Iterable[Mapping[str, Any]] | None = None,
        singular: str | None = None,
        categories: Iterable[str] = (),
) -> kmock.resource:
    """Make a custom resource type known to the emulator (discovery, storage, kubectl columns).

    ``printer_columns`` uses the CRD's ``additionalPrinterColumns`` format:
    ``[{'name': 'Phase', 'type': 'string', 'jsonPath': '.status.phase'}]``.
    Returns the ``kmock.resource`` for ``emulator.objects[res, ns, name]`` look-ups.
    """
    res = kmock.resource(group, version, plural)

    def _register() -> None:
        emulator.resources[res] = kmock.ResourceInfo(
            kind=kind, singular=singular or kind.lower(), namespaced=namespaced,
            verbs={'create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'},
            shortnames=set(short_names), categories=set(categories), subresources=set(subresources))
        emulator.set_columns(res, printer_columns or [])
        emulator._custom.add(res)
    emulator.call(_register)
    return res


def _register_crd_types(emulator: ClusterEmulator, crd: Mapping[str, Any]) -> kmock.resource:
    spec = crd['spec']
    group = spec['group']
    names = spec['names']
    versions = [v for v in spec.get('versions', []) if v.get('served', True)]
    if not versions:
        raise ValueError('the CRD serves no versions')
    storage_version = next((v for v in versions if v.get('storage')), versions[0])
    storage = kmock.resource(group, storage_version['name'], names['plural'])
    for v in versions:
        res = kmock.resource(group, v['name'], names['plural'])
        emulator.resources[res] = kmock.ResourceInfo(
            kind=names['kind'], singular=names.get('singular') or names['kind'].lower(),
            namespaced=spec.get('scope', 'Namespaced') == 'Namespaced',
            verbs={'create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'},
            shortnames=set(names.get('shortNames') or []), categories=set(names.get('categories') or []),
            subresources=set((v.get('subresources') or {}).keys()))
        emulator.set_columns(res, v.get('additionalPrinterColumns') or [])
        emulator._custom.add(res)
        if res != storage:
            emulator._aliases[res] = storage
    return storage


def register_crd(emulator: ClusterEmulator, crd: Mapping[str, Any], store: bool = True) -> kmock.resource:
    """Register the resource type(s) of a CRD manifest (a dict, e.g. ``yaml.safe_load`` of crds/x.yaml).

    All served versions are registered; they share the storage version's objects (no conversion:
    only ``apiVersion`` differs).  With ``store=True`` the CRD object itself is stored too, so that
    ``kubectl get crd`` and operators that read CRDs see it.  Returns the storage ``kmock.resource``.
    """
    crd = copy.deepcopy(dict(crd))

    def _register() -> kmock.resource:
        storage = _register_crd_types(emulator, crd)
        if store:
            res = kmock.resource('apiextensions.k8s.io', 'v1', 'customresourcedefinitions')
            name = crd['metadata']['name']
            if emulator.current(res, None, name) is None:
                body = dict(crd, apiVersion='apiextensions.k8s.io/v1', kind='CustomResourceDefinition')
                body.pop('status', None)
                emulator._store_new(res, None, name, body)
                emulator._establish_crd(name)
        return storage
    return emulator.call(_register)
