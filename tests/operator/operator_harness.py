"""A whole test cluster for the operator: the KMock-based API server (tests.k8s), the node agent
that runs Job pods as local processes, a moto S3 server, and ``alignops operator`` as a child
process (so a test can kill it). Used by the end-to-end tests and benchmarks/operator_scale.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
for extra in (REPO, REPO / "tests" / "storage"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from s3_fixtures import DUMMY_KEY_ID, DUMMY_SECRET, free_port  # noqa: E402
from tests.k8s.emulator import register_crd  # noqa: E402
from tests.k8s.server import ApiServer, run_kubectl, wait_until  # noqa: E402

AJ = "alignops.io/v1alpha1/alignmentjobs"
JOBS = "batch/v1/jobs"
PODS = "v1/pods"
CONFIGMAPS = "v1/configmaps"
EVENTS = "v1/events"
STORAGE_SECRET = "s3-credentials"


def start_api(workdir: Path) -> ApiServer:
    """The emulator on a free port, with the AlignmentJob CRD generated from the API models."""
    from alignops.api.crd import build_crd

    workdir.mkdir(parents=True, exist_ok=True)
    api = ApiServer(workdir=workdir).start()
    register_crd(api.emulator, build_crd())
    return api


def create_storage_secret(api: ApiServer, namespace: str = "default", name: str = STORAGE_SECRET) -> None:
    result = run_kubectl(api, "create", "secret", "generic", name, f"--from-literal=AWS_ACCESS_KEY_ID={DUMMY_KEY_ID}",
                         f"--from-literal=AWS_SECRET_ACCESS_KEY={DUMMY_SECRET}", namespace=namespace)
    assert result.returncode == 0, result.stderr


def make_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=DUMMY_KEY_ID, aws_secret_access_key=DUMMY_SECRET,
                 region_name="us-east-1").create_bucket(Bucket=bucket)


def s3_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=DUMMY_KEY_ID, aws_secret_access_key=DUMMY_SECRET,
                          region_name="us-east-1")
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def pod_env() -> dict[str, str]:
    """Environment the node agent adds to every stage process: no cloud metadata lookups, offline
    Hugging Face, one thread each (the machine has two cores), per-step metrics in the pod's own
    directory (a relative path: the agent runs each pod in its directory), and this machine's cache
    of compiled torch extensions (a pod's HOME is its own scratch volume: DeepSpeed's CPU
    communication op, which runs on more than one process, would be compiled again in every pod,
    about 90 s each)."""
    return {
        # torch's own default (~/.cache/torch_extensions/py<version>_cpu on these CPU machines)
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR") or str(
            Path.home() / ".cache" / "torch_extensions" / f"py{sys.version_info.major}{sys.version_info.minor}_cpu"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        "AWS_DEFAULT_REGION": "us-east-1",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "ALIGNOPS_METRICS_LOG": "metrics.jsonl",
    }


def peak_memory_kib(pid: int) -> int | None:
    """VmHWM (peak resident memory, KiB) of a live process, from /proc; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class OperatorProcess:
    """``python -m alignops.cli.main operator`` against ``api``, with ``ALIGNOPS_*`` settings."""

    def __init__(self, api: ApiServer, settings: dict[str, str], log_path: Path, extra_args: tuple[str, ...] = ()):
        self.api = api
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.env = api.env()
        for key in [k for k in self.env if k.startswith("ALIGNOPS_")]:
            del self.env[key]
        self.env.update({f"ALIGNOPS_{k.upper()}": str(v) for k, v in settings.items()})
        self.env["PYTHONUNBUFFERED"] = "1"
        self.cmd = [sys.executable, "-m", "alignops.cli.main", "operator", "--standalone", "--all-namespaces",
                    "--metrics-port", str(self.metrics_port), "--health-port", str(self.health_port), *extra_args]
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "OperatorProcess":
        baseline = self.baseline = {r: self.api.watcher_count(r) for r in (AJ, JOBS, PODS)}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        for resource in (AJ, JOBS, PODS):
            wait_until(lambda: self.api.watcher_count(resource) > baseline[resource] or self.process.poll() is not None,
                       timeout, message=lambda: f"the operator to watch {resource}; log:\n{self.log()[-3000:]}")
            assert self.process.poll() is None, f"the operator exited with {self.process.returncode}:\n{self.log()[-3000:]}"
        return self

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to clean up. Returns once the server closed its watches
        (so that the next operator's watches can be told apart)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
            for resource, count in self.baseline.items():
                wait_until(lambda: self.api.watcher_count(resource) <= count, 20,
                           message=f"the server to notice the dead operator's watch on {resource}")

    def stop(self, grace: float = 10) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

    def healthz(self) -> tuple[int, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=5) as response:
            return response.status, response.read().decode()

    def peak_memory_kib(self) -> int | None:
        """VmHWM of the operator process (peak resident memory), from /proc."""
        return peak_memory_kib(self.process.pid) if self.process is not None else None


def apply_manifest(api: ApiServer, manifest: dict[str, Any] | str | Path, namespace: str = "default") -> None:
    """``kubectl apply -f`` a file (or a manifest written to a temporary file)."""
    if isinstance(manifest, dict):
        path = api.workdir / f"manifest-{manifest['metadata']['name']}-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(manifest))
        manifest = path
    # --validate=false: the emulator serves no OpenAPI document
    result = run_kubectl(api, "apply", "--validate=false", "-f", str(manifest), namespace=namespace)
    assert result.returncode == 0, f"kubectl apply failed: {result.stderr}"


def aj_status(api: ApiServer, name: str, namespace: str = "default") -> dict[str, Any]:
    obj = api.get(AJ, namespace, name)
    return (obj or {}).get("status") or {}


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})


def events_of(api: ApiServer, name: str, namespace: str = "default") -> list[dict[str, Any]]:
    return [e for e in api.list(EVENTS, namespace) if (e.get("involvedObject") or {}).get("name") == name
            and (e.get("involvedObject") or {}).get("kind") == "AlignmentJob"]


def dump(api: ApiServer, name: str, namespace: str = "default") -> str:
    """Everything about one AlignmentJob, for assertion messages."""
    jobs = [j["metadata"]["name"] for j in api.list(JOBS, namespace, f"alignops.io/job={name}")]
    pods = [(p["metadata"]["name"], (p.get("status") or {}).get("phase")) for p in api.list(PODS, namespace, f"alignops.io/job={name}")]
    events = [(e.get("reason"), e.get("message")) for e in events_of(api, name, namespace)]
    return json.dumps({"status": aj_status(api, name, namespace), "jobs": jobs, "pods": pods, "events": events}, indent=1)
