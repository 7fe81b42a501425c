"""
Serve a :class:`~tests.k8s.emulator.ClusterEmulator` over real HTTP, and run clients against it.

* :class:`ApiServer` -- the emulator on ``http://127.0.0.1:<free port>`` in a background thread with
  its own asyncio loop, plus a kubeconfig file (no auth) for kubectl, kopf and the ``kubernetes``
  client.  ``start()``/``stop()`` or ``with ApiServer() as api: ...``.
* :func:`use_kubeconfig` -- point this process's ``kubernetes`` package (even if already imported)
  and its children (``KUBECONFIG``) at a kubeconfig.
* :func:`run_kubectl` -- the real ``/usr/bin/kubectl`` with ``--kubeconfig``.
* :class:`KopfInProcess` / :class:`KopfSubprocess` -- a kopf operator against the server, in a thread
  (``kopf.testing.KopfRunner``) or as ``python -m kopf run`` in a child process; both wait until the
  operator's watch streams are open before returning from ``start()`` / ``__enter__``.
"""
from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
import yaml

from .emulator import ClusterEmulator, Obj

KUBECTL = shutil.which('kubectl') or '/usr/bin/kubectl'


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
               message: str | Callable[[], str] = 'condition') -> Any:
    """Poll ``predicate()`` until it returns a truthy value (returned); AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f'Timed out after {timeout}s waiting for: {text}')
        time.sleep(interval)


class ApiServer:
    """The emulator served on 127.0.0.1 from a background thread.

    Attributes once started: ``url``, ``port``, ``kubeconfig`` (a file path), ``emulator``.
    Thread-safe helpers (``get``, ``list``, ``create``, ``patch``, ``delete``...) run inside the
    server's loop so that tests can inspect and modify state without HTTP.
    """

    def __init__(self, emulator: ClusterEmulator | None = None, workdir: str | Path | None = None,
                 namespace: str = 'default') -> None:
        self.emulator = emulator if emulator is not None else ClusterEmulator()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix='k8s-emulator-'))
        self.namespace = namespace
        self.kubeconfig = self.workdir / 'kubeconfig'
        self.kubectl_cache = self.workdir / 'kubectl-cache'
        self.port = 0
        self.url = ''
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> 'ApiServer':
        if self._thread is not None:
            raise RuntimeError('already started')
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(('127.0.0.1', 0))
        self.port = sock.getsockname()[1]
        self.url = f'http://127.0.0.1:{self.port}'
        self._thread = threading.Thread(target=self._run, args=(sock,), name='k8s-emulator', daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=30) or self._error is not None:
            raise RuntimeError(f'the emulator did not start: {self._error!r}')
        self.write_kubeconfig(self.kubeconfig)
        return self

    def _run(self, sock: socket.socket) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._main(sock))
        except BaseException as e:  # pragma: no cover
            self._error = e
            self._ready.set()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self, sock: socket.socket) -> None:
        self._stopped = asyncio.Event()
        self.emulator.bind_loop(asyncio.get_running_loop())
        async with self.emulator:
            server = aiohttp.web.Server(self.emulator, handler_cancellation=True, access_log=None)
            runner = aiohttp.web.ServerRunner(server, shutdown_timeout=1.0)
            await runner.setup()
            site = aiohttp.web.SockSite(runner, sock)
            await site.start()
            self._ready.set()
            try:
                await self._stopped.wait()
            finally:
                self.emulator.close_watches()
                await asyncio.sleep(0)
                await runner.cleanup()
        self.emulator.bind_loop(None)

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout=15)
        self._thread = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> 'ApiServer':
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- client configuration ----------------------------------------------------------------------

    def kubeconfig_dict(self, namespace: str | None = None) -> Obj:
        return {
            'apiVersion': 'v1', 'kind': 'Config', 'preferences': {},
            'clusters': [{'name': 'emulator', 'cluster': {'server': self.url}}],
            'users': [{'name': 'emulator', 'user': {'token': 'emulator-token'}}],
            'contexts': [{'name': 'emulator', 'context': {
                'cluster': 'emulator', 'user': 'emulator', 'namespace': namespace or self.namespace}}],
            'current-context': 'emulator',
        }

    def write_kubeconfig(self, path: str | Path, namespace: str | None = None) -> Path:
        """Write a kubeconfig for this server (e.g. with another default namespace)."""
        path = Path(path)
        path.write_text(yaml.safe_dump(self.kubeconfig_dict(namespace)))
        return path

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for child processes (kopf, the operator CLI) that talk to this server."""
        env = dict(os.environ if base is None else base)
        env['KUBECONFIG'] = str(self.kubeconfig)
        for var in ('KUBERNETES_SERVICE_HOST', 'KUBERNETES_SERVICE_PORT'):
            env.pop(var, None)  # never look "in-cluster"
        return env

    def client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` bound to this server (independent of globals)."""
        import kubernetes
        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))

    # -- direct, thread-safe state access ----------------------------------------------------------

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` inside the server's loop (for direct emulator access from tests)."""
        return self.emulator.call(fn, *args, **kwargs)

    def get(self, resource: str | kmock.resource, namespace: str | None, name: str) -> Obj | None:
        """A deep copy of the stored object, or None. ``resource`` like 'v1/pods', 'batch/v1/jobs'."""
        return self.call(lambda: copy.deepcopy(self.emulator.current(resource, namespace, name)))

    def list(self, resource: str | kmock.resource, namespace: str | None = None,
             label_selector: str | None = None) -> list[Obj]:
        from .emulator import Selector
        selector = Selector.parse(label_selector, None)
        return self.call(lambda: [copy.deepcopy(o) for o in self.emulator.iter_objects(resource, namespace) if selector(o)])

    def wait_for(self, resource: str | kmock.resource, namespace: str | None, name: str,
                 predicate: Callable[[Obj], Any] = lambda o: True, timeout: float = 10.0) -> Obj:
        """Wait until the object exists and ``predicate(obj)`` is truthy; returns the object."""
        last: list[Obj | None] = [None]

        def check() -> Obj | None:
            obj = self.get(resource, namespace, name)
            last[0] = obj
            return obj if obj is not None and predicate(obj) else None
        return wait_until(check, timeout, message=lambda: f'{resource} {namespace}/{name}; last seen: {last[0]!r}')

    def wait_gone(self, resource: str | kmock.resource, namespace: str | None, name: str, timeout: float = 10.0) -> None:
        wait_until(lambda: self.get(resource, namespace, name) is None, timeout,
                   message=f'{resource} {namespace}/{name} to disappear')

    def http(self, method: str, path: str, body: Any = None,
             content_type: str = 'application/json') -> tuple[int, Any]:
        """A raw HTTP request to the server: ``(status, parsed JSON or text)``; never raises on 4xx/5xx."""
        import urllib.error
        import urllib.request
        data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={'Content-Type': content_type})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, raw, ctype = resp.status, resp.read(), resp.headers.get('Content-Type', '')
        except urllib.error.HTTPError as e:
            status, raw, ctype = e.code, e.read(), e.headers.get('Content-Type', '')
        return status, json.loads(raw) if 'json' in ctype and raw else raw.decode(errors='replace')

    def create_namespace(self, name: str) -> Obj:
        return self.call(lambda: copy.deepcopy(self.emulator.ensure_namespace(name)))

    def wait_for_watchers(self, resources: Iterable[str | kmock.resource], baseline: Mapping[str, int] | None = None,
                          timeout: float = 20.0) -> None:
        """Wait until each resource has more open watch streams than in ``baseline`` (default 0)."""
        baseline = baseline or {}
        for res in resources:
            wait_until(lambda: self.watcher_count(res) > baseline.get(str(res), 0), timeout,
                       message=f'a watch on {res}')

    def watcher_count(self, resource: str | kmock.resource | None = None) -> int:
        return self.call(self.emulator.watcher_count, resource)


def use_kubeconfig(path: str | Path) -> Callable[[], None]:
    """Point ``KUBECONFIG`` and the ``kubernetes`` package (if imported, even earlier) at ``path``.

    ``kubernetes.config`` reads ``KUBECONFIG`` once at import; this also patches that default and
    loads the file into the client's default configuration.  Returns an undo function.
    """
    old_env = os.environ.get('KUBECONFIG')
    os.environ['KUBECONFIG'] = str(path)
    undo: list[Callable[[], None]] = []
    try:
        import kubernetes.client
        import kubernetes.config.kube_config as kc
    except ImportError:  # pragma: no cover
        pass
    else:
        old_default = kc.KUBE_CONFIG_DEFAULT_LOCATION
        old_config = kubernetes.client.Configuration.get_default_copy()
        kc.KUBE_CONFIG_DEFAULT_LOCATION = str(path)
        kubernetes.config.load_kube_config(config_file=str(path))
        undo.append(lambda: setattr(kc, 'KUBE_CONFIG_DEFAULT_LOCATION', old_default))
        undo.append(lambda: kubernetes.client.Configuration.set_default(old_config))

    def restore() -> None:
        for fn in undo:
            fn()
        if old_env is None:
            os.environ.pop('KUBECONFIG', None)
        else:
            os.environ['KUBECONFIG'] = old_env
    return restore


def run_kubectl(api: ApiServer, *args: str, input: str | bytes | None = None, timeout: float = 30,
                namespace: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real kubectl against ``api``; never raises on a non-zero exit (check the result)."""
    cmd = [KUBECTL, f'--kubeconfig={api.kubeconfig}', f'--cache-dir={api.kubectl_cache}']
    if namespace:
        cmd.append(f'--namespace={namespace}')
    cmd += [str(a) for a in args]
    if isinstance(input, bytes):
        input = input.decode()
    return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, env=api.env())


class KubectlStream:
    """A long-running kubectl (e.g. ``get -w``) whose stdout lines are read with a timeout.

    ``with KubectlStream(api, 'get', 'pods', '-w') as stream: line = stream.readline(10)``;
    the process is killed on exit.  ``readline`` raises AssertionError (with kubectl's stderr) on a timeout.
    """

    def __init__(self, api: ApiServer, *args: str, namespace: str | None = None) -> None:
        import queue
        cmd = [KUBECTL, f'--kubeconfig={api.kubeconfig}', f'--cache-dir={api.kubectl_cache}']
        if namespace:
            cmd.append(f'--namespace={namespace}')
        self.cmd = cmd + [str(a) for a in args]
        self.env = api.env()
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> 'KubectlStream':
        self.process = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env=self.env, stdin=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip('\n'))
        self.lines.put(None)

    def readline(self, timeout: float = 10) -> str:
        import queue
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            line = None
        if line is None:
            self.__exit__()
            stderr = self.process.stderr.read() if self.process and self.process.stderr else ''
            raise AssertionError(f'no output line from {" ".join(self.cmd[3:])} within {timeout}s; stderr: {stderr}')
        return line

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# ---------------------------------------------------------------------------------------------------
# kopf
# ---------------------------------------------------------------------------------------------------

def _kopf_args(paths: Sequence[str | Path], modules: Sequence[str], namespaces: Sequence[str] | None,
               verbose: bool, extra: Sequence[str]) -> list[str]:
    args = ['run', '--standalone']
    if namespaces:
        for ns in namespaces:
            args += ['--namespace', ns]
    else:
        args.append('--all-namespaces')
    if verbose:
        args.append('--verbose')
    for m in modules:
        args += ['-m', m]
    args += list(extra)
    args += [str(p) for p in paths]
    return args


def new_registry() -> Any:
    """A fresh kopf registry with kopf's default login handlers (kubeconfig via the client library).

    ``kopf.OperatorRegistry()`` has no login handlers at all; kopf's default registry is a
    ``SmartOperatorRegistry`` (not exported), which adds them -- use this for in-process operators.
    """
    from kopf._core.intents.registries import SmartOperatorRegistry
    return SmartOperatorRegistry()


class KopfInProcess:
    """A kopf operator in a thread of this process, via ``kopf.testing.KopfRunner`` (kopf's way).

    ``paths`` are operator files (loaded anew into a fresh registry every time); ``modules`` are
    imported (only the first import registers handlers: pass ``registry=`` the module's registry or
    use :class:`KopfSubprocess` for repeated runs).  ``wait_for`` lists resources (e.g.
    ``'example.io/v1/widgets'``) whose watch streams must be open before ``__enter__`` returns.
    After exit: ``.output`` (kopf's log lines with ``verbose=True``), ``.exit_code``, ``.exception``.
    """

    def __init__(self, api: ApiServer, *paths: str | Path, modules: Sequence[str] = (),
                 registry: Any = None, settings: Any = None, namespaces: Sequence[str] | None = None,
                 wait_for: Iterable[str] = (), verbose: bool = True, extra_args: Sequence[str] = (),
                 timeout: float = 30) -> None:
        self.api = api
        self.wait_for = [str(r) for r in wait_for]
        self.registry = registry if registry is not None else new_registry()
        self.args = _kopf_args(paths, modules, namespaces, verbose, extra_args)
        self.settings = settings
        self.timeout = timeout
        self.runner: Any = None
        self._restore: Callable[[], None] | None = None

    def __enter__(self) -> 'KopfInProcess':
        from kopf.testing import KopfRunner
        self._restore = use_kubeconfig(self.api.kubeconfig)
        baseline = {r: self.api.watcher_count(r) for r in self.wait_for}
        self.runner = KopfRunner(self.args, registry=self.registry, settings=self.settings, timeout=self.timeout)
        self.runner.__enter__()
        try:
            self.api.wait_for_watchers(self.wait_for, baseline, timeout=self.timeout)
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.runner is not None:
                self.runner.__exit__(*exc)
        finally:
            if self._restore is not None:
                self._restore()
                self._restore = None

    @property
    def output(self) -> str:
        return self.runner.output

    @property
    def exit_code(self) -> int:
        return self.runner.exit_code

    @property
    def exception(self) -> BaseException | None:
        return self.runner.exception


class KopfSubprocess:
    """``python -m kopf run --standalone ...`` in a child process against the server.

    Output goes to ``.log_path`` (``.log()`` reads it).  ``start()`` waits until the watch streams
    of ``wait_for`` resources are open; ``stop()`` sends SIGINT, then SIGKILL after ``grace`` s.
    """

    def __init__(self, api: ApiServer, *paths: str | Path, modules: Sequence[str] = (),
                 namespaces: Sequence[str] | None = None, wait_for: Iterable[str] = (), verbose: bool = True,
                 extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 log_path: str | Path | None = None, timeout: float = 60, grace: float = 10) -> None:
        self.api = api
        self.wait_for = [str(r) for r in wait_for]
        self.cmd = [sys.executable, '-m', 'kopf'] + _kopf_args(paths, modules, namespaces, verbose, extra_args)
        self.env = api.env()
        self.env.update(env or {})
        self.log_path = Path(log_path) if log_path else api.workdir / f'kopf-{time.monotonic_ns()}.log'
        self.timeout = timeout
        self.grace = grace
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> 'KopfSubprocess':
        baseline = {r: self.api.watcher_count(r) for r in self.wait_for}
        with open(self.log_path, 'wb') as log:
            self.process = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)
        try:
            for res in self.wait_for:
                wait_until(lambda: self.api.watcher_count(res) > baseline.get(res, 0) or self.process.poll() is not None,
                           self.timeout, message=lambda: f'kopf to watch {res}; log:\n{self.log()}')
                if self.process.poll() is not None:
                    raise AssertionError(f'kopf exited with {self.process.returncode}; log:\n{self.log()}')
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=self.grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors='replace') if self.log_path.exists() else ''

    def __enter__(self) -> 'KopfSubprocess':
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
