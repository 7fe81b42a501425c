"""Shared by tests/deploy: the chart, rendering, real tools (which CI must have), free ports."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "alignops"
HERE = Path(__file__).resolve().parent
RULES_FILE = CHART / "files" / "alerts" / "alignops.rules.yaml"
DASHBOARD_FILE = CHART / "files" / "dashboards" / "alignops.json"
RELEASE, NAMESPACE = "alignops", "alignops-system"

# the value combinations every chart test renders
COMBINATIONS: dict[str, dict] = {
    "default": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "monitoring": {"metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
                   "prometheusRule": {"enabled": True}},
    "namespaced-monitoring": {"watchNamespaces": ["team-a"],
                              "metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
                              "prometheusRule": {"enabled": True}, "dashboards": {"namespace": "monitoring"}},
    "no-crds": {"crds": {"install": False}},
    "configured": {"storage": {"defaultUri": "s3://bucket/alignops", "defaultEndpoint": "http://minio.minio:9000",
                               "defaultSecret": "s3-credentials"},
                   "stages": {"serviceAccount": "trainer", "scratchSize": "50Gi", "metricsPort": 0,
                              "multiNode": {"rendezvousPort": 29400, "rendezvousTimeoutSeconds": 600,
                                            "networkEnv": {"NCCL_SOCKET_IFNAME": "eth0", "FI_PROVIDER": "efa"},
                                            "networkDevices": {"vpc.amazonaws.com/efa": 4}},
                              "hfCacheClaim": "hf-models"},
                   "image": {"digest": "sha256:" + "a" * 64},
                   "crds": {"keep": False}, "networkPolicy": {"enabled": False},
                   "operator": {"extraEnv": {"KOPF_LOG_LEVEL": "debug"}}},
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require(condition: bool, what: str) -> None:
    """A missing tool: fail under CI (CI=true), skip on a workstation."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"{what} is required under CI")
    pytest.skip(f"{what} is not available")


def tool(name: str, *candidates: str) -> str:
    for path in (shutil.which(name), *candidates):
        if path and Path(path).exists():
            return path
    require(False, f"the `{name}` command")
    raise AssertionError("unreachable")


def helm():
    try:
        import helm_python
    except ImportError:
        require(False, "helm-python-sdk (import helm_python)")
    helm_python.disable_logging()  # Helm's INFO lines (e.g. on the CRD's symbolic link) on stderr
    return helm_python


def render(values: dict | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE) -> dict[str, str]:
    helm_python = helm()
    with helm_python.Chart.load(str(CHART)) as chart:
        return chart.render(values or {}, name=name, namespace=namespace)


def documents(rendered: dict[str, str]) -> list[dict]:
    """Every manifest rendered (NOTES.txt left out)."""
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A real Prometheus (Debian's) on 127.0.0.1, scraping static targets every second.

    ``targets``: scrape job name -> ["127.0.0.1:PORT", ...]. The first scrape of a new target comes
    about 5-6 s after start (target discovery), so ``wait_for_targets`` polls instead of sleeping."""

    def __init__(self, workdir: Path, targets: dict[str, list[str]], rule_files: list[Path] = ()):
        self.workdir, self.targets, self.rule_files = Path(workdir), targets, list(rule_files)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self) -> "Prometheus":
        import subprocess
        import time
        import urllib.request

        binary = tool("prometheus", "/usr/bin/prometheus")
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": addresses}]}
                               for job, addresses in self.targets.items()],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(self.workdir / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [binary, f"--config.file={self.workdir / 'prometheus.yml'}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_text()
            try:
                if urllib.request.urlopen(f"{self.url}/-/ready", timeout=1).status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("Prometheus did not become ready:\n" + self.log_text())

    def log_text(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def api(self, path: str, **params) -> dict | list:
        import json
        import urllib.parse
        import urllib.request

        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
            document = json.loads(response.read())
        assert document["status"] == "success", document
        return document["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        return self.api("query", query=expr, **({"time": at} if at is not None else {}))["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def wait_for_targets(self, job: str, timeout: float = 30.0) -> None:
        """Until every target of ``job`` has been scraped successfully once."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            targets = [t for t in self.api("targets")["activeTargets"] if t["labels"].get("job") == job]
            if targets and all(t["health"] == "up" for t in targets):
                return
            time.sleep(0.2)
        raise AssertionError(f"Prometheus never scraped {job}: {self.api('targets')}")

    def wait_for(self, expr: str, timeout: float = 60.0) -> list[dict]:
        """Until the instant query ``expr`` returns a series."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result:
                return result
            time.sleep(0.2)
        raise AssertionError(f"no series for {expr} within {timeout} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except Exception:  # noqa: BLE001 - a stuck shutdown: kill it
                self.process.kill()
                self.process.wait(timeout=10)
        if getattr(self, "log", None):
            self.log.close()
