"""
pytest fixtures of the Kubernetes test harness (a plugin module: ``from <pkg>.fixtures import *``
in a conftest.py; tests/k8s/conftest.py does exactly that).
"""
from __future__ import annotations

import functools
import json
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .node_agent import NodeAgent
from .server import ApiServer, KopfInProcess, KopfSubprocess, run_kubectl, use_kubeconfig

__all__ = ['k8s_api', 'k8s_namespace', 'kubectl', 'kubectl_ok', 'kubectl_json', 'node_agent',
           'kopf_runner', 'kopf_subprocess', '_k8s_emulator_health']


@pytest.fixture(scope='session')
def k8s_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """The emulated API server for the whole session (``.url``, ``.kubeconfig``, ``.emulator``).

    ``KUBECONFIG`` (and the ``kubernetes`` package's default config) point at it while it runs.
    """
    api = ApiServer(workdir=tmp_path_factory.mktemp('k8s-api'))
    api.start()
    restore = use_kubeconfig(api.kubeconfig)
    try:
        yield api
    finally:
        restore()
        api.stop()


@pytest.fixture(autouse=True)
def _k8s_emulator_health(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test whose requests hit a bug of the emulator (a 500 InternalError)."""
    if 'k8s_api' not in request.fixturenames:
        yield
        return
    api: ApiServer = request.getfixturevalue('k8s_api')
    before = len(api.emulator.internal_errors)
    yield
    errors = api.emulator.internal_errors[before:]
    assert not errors, 'the Kubernetes emulator failed internally:\n' + '\n'.join(errors)


@pytest.fixture()
def k8s_namespace(k8s_api: ApiServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test (deleted, with its content, afterwards)."""
    base = re.sub(r'[^a-z0-9-]+', '-', request.node.name.lower()).strip('-')[:40].strip('-')
    name = f'{base}-{uuid.uuid4().hex[:5]}'
    k8s_api.create_namespace(name)
    yield name

    def _delete() -> None:
        ns = k8s_api.emulator.current('v1/namespaces', None, name)
        if ns is not None:
            k8s_api.emulator.delete_object('v1/namespaces', ns, {})
    k8s_api.call(_delete)


@pytest.fixture()
def kubectl(k8s_api: ApiServer) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``kubectl(*args, input=None, namespace=None, timeout=30)`` -> CompletedProcess (never raises)."""
    return functools.partial(run_kubectl, k8s_api)


@pytest.fixture()
def kubectl_ok(k8s_api: ApiServer) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Like ``kubectl``, but asserts that kubectl exited with 0 (showing its stderr otherwise)."""
    def _run(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        result = run_kubectl(k8s_api, *args, **kwargs)
        assert result.returncode == 0, f'kubectl {" ".join(map(str, args))} -> {result.returncode}:\n' \
                                       f'{result.stderr}{result.stdout}'
        return result
    return _run


@pytest.fixture()
def kubectl_json(kubectl_ok: Callable[..., subprocess.CompletedProcess[str]]) -> Callable[..., Any]:
    """``kubectl_json('get', 'pods', namespace=ns)`` -> the parsed ``-o json`` output."""
    def _run(*args: str, **kwargs: Any) -> Any:
        return json.loads(kubectl_ok(*args, '-o', 'json', **kwargs).stdout)
    return _run


@pytest.fixture()
def node_agent(k8s_api: ApiServer, tmp_path: Path) -> Iterator[NodeAgent]:
    """A started :class:`NodeAgent` (runs Jobs' pods locally); fails the test on agent errors."""
    agent = NodeAgent(k8s_api, workdir=tmp_path / 'node')
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()
    assert not agent.errors, 'the node agent failed internally:\n' + '\n'.join(agent.errors)


@pytest.fixture()
def kopf_runner(k8s_api: ApiServer) -> Callable[..., KopfInProcess]:
    """``with kopf_runner(path, wait_for=['example.io/v1/widgets']) as op:`` -- kopf in a thread."""
    return functools.partial(KopfInProcess, k8s_api)


@pytest.fixture()
def kopf_subprocess(k8s_api: ApiServer, tmp_path: Path) -> Callable[..., KopfSubprocess]:
    """``with kopf_subprocess(path, wait_for=[...]) as op:`` -- ``python -m kopf run`` as a child."""
    def _make(*paths: Any, **kwargs: Any) -> KopfSubprocess:
        kwargs.setdefault('log_path', tmp_path / f'kopf-{uuid.uuid4().hex[:6]}.log')
        return KopfSubprocess(k8s_api, *paths, **kwargs)
    return _make
