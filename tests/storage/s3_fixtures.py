"""A real moto S3 server for tests (no patching of boto3), as plain functions and pytest fixtures.

Fixtures: ``moto_server`` (session: the endpoint URL of a server on 127.0.0.1, started once, killed at
the end), ``s3_env`` (function: an isolated AWS environment with dummy keys pointing at it, also
returned as a dict for subprocesses), ``s3_bucket`` (function: a fresh, empty bucket's name).
Reuse from another test package, in its conftest.py:

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "storage"))
    from s3_fixtures import moto_server, s3_bucket, s3_env  # noqa: F401

Named ``s3_fixtures`` and not ``moto``: pytest puts this directory on sys.path, and a ``moto.py``
here would shadow the moto package itself.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

DUMMY_KEY_ID = "testing-key-id"
DUMMY_SECRET = "testing-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """Linux: the server gets SIGKILL when the test process dies, even if it is killed itself
    (no orphaned servers after an OOM kill or a CI timeout)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def moto_server_command(port: int) -> list[str]:
    script = Path(sys.executable).parent / "moto_server"  # the venv's console script
    return [str(script), "-H", "127.0.0.1", "-p", str(port)]


@contextmanager
def running_moto_server(log_path: Path, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """Starts ``moto_server`` on a free loopback port, waits until it answers, yields its URL, and
    kills it at the end (its objects live in its memory and go with it)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **(extra_env or {})}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            moto_server_command(port), stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {process.returncode}: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not answer on {url} within 30 s") from None
                time.sleep(0.05)
        yield url
    finally:
        process.kill()
        process.wait(timeout=10)


def isolated_aws_env(endpoint: str, key_id: str | None = DUMMY_KEY_ID, secret: str | None = DUMMY_SECRET) -> dict[str, str]:
    """Environment variables (to set, None to remove) that pin boto3 to ``endpoint`` and the given
    keys, and keep a developer's ~/.aws and any metadata service out of the test."""
    return {
        "AWS_ACCESS_KEY_ID": key_id,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_SESSION_TOKEN": None,
        "AWS_SECURITY_TOKEN": None,
        "AWS_PROFILE": None,
        "AWS_DEFAULT_PROFILE": None,
        "AWS_ROLE_ARN": None,
        "AWS_WEB_IDENTITY_TOKEN_FILE": None,
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": None,
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": None,
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        "AWS_EC2_METADATA_DISABLED": "true",  # no 1 s wait for an instance metadata service
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": None,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": None,
    }


def apply_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str | None]) -> dict[str, str]:
    import boto3

    # boto3's default session keeps the region and credentials it first saw: start a fresh one
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    return dict(os.environ)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_moto_server(tmp_path_factory.mktemp("moto") / "moto_server.log") as url:
        yield url


@pytest.fixture
def s3_env(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The whole environment (after setting it here) with dummy keys and AWS_ENDPOINT_URL."""
    return apply_env(monkeypatch, isolated_aws_env(moto_server))


@pytest.fixture
def s3_bucket(s3_env: dict[str, str]) -> str:
    import boto3

    name = f"test-{uuid.uuid4().hex[:16]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name
