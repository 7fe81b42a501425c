"""Operator scale benchmark (a script, not a test): 200 AlignmentJobs created at once against the
Kubernetes emulator (tests/k8s), time until every job's first-stage Job exists -- for the AlignOps
operator and, side by side on a fresh emulator, a minimal kopf operator (one create handler making
one Job). The emulator is slow (shared/TESTING.md), so the ratio is the figure that counts.

Also: API requests per job lifecycle (a few jobs run to the end with the node agent and moto S3),
reconcile latency p50/p99 (the operator's alignops_reconcile_duration_seconds histogram) and the
peak memory of each operator process.

    .venv/bin/python benchmarks/operator_scale.py [--jobs 200] [--lifecycle-jobs 3]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "storage"), str(REPO / "tests" / "operator")]

import attrs  # noqa: E402
import yaml  # noqa: E402
from operator_harness import (  # noqa: E402
    AJ,
    STORAGE_SECRET,
    OperatorProcess,
    create_storage_secret,
    make_bucket,
    peak_memory_kib,
    pod_env,
)

from alignops.api.crd import build_crd  # noqa: E402
from tests.k8s.emulator import ClusterEmulator, register_crd  # noqa: E402
from tests.k8s.server import ApiServer, KopfSubprocess, wait_until  # noqa: E402

NS = "bench"

MINIMAL_OPERATOR = '''
import kopf
import kubernetes


@kopf.on.create("alignops.io", "v1alpha1", "alignmentjobs")
def create_fn(body, name, namespace, **_):
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": f"{name}-sft-a1"},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "stage", "image": "ghcr.io/alignops/trainer:0.1.0",
             "command": ["python", "-m", "alignops.workloads", "/etc/alignops/run/config.json"]}]}}},
    }
    kopf.adopt(job)
    kubernetes.config.load_kube_config()
    kubernetes.client.BatchV1Api().create_namespaced_job(namespace, job)
'''


@attrs.define(kw_only=True, eq=False)
class CountingEmulator(ClusterEmulator):
    """The emulator, recording (time, method, user agent, path) of every request and the time each
    batch/v1 Job appeared."""

    log: list = attrs.field(factory=list, init=False)
    jobs_created: dict = attrs.field(factory=dict, init=False)

    async def __call__(self, raw_request):
        self.log.append((time.monotonic(), raw_request.method, raw_request.headers.get("User-Agent", ""), raw_request.path,
                         raw_request.query.get("watch", "")))
        return await super().__call__(raw_request)


def start(workdir: Path) -> tuple[ApiServer, CountingEmulator]:
    emulator = CountingEmulator()

    def on_change(etype, resource, obj, old):
        if etype == "ADDED" and resource.plural == "jobs" and resource.group == "batch":
            emulator.jobs_created[obj["metadata"]["name"]] = time.monotonic()
    emulator.add_hook(on_change)
    workdir.mkdir(parents=True, exist_ok=True)
    api = ApiServer(emulator=emulator, workdir=workdir).start()
    register_crd(emulator, build_crd())
    api.create_namespace(NS)
    return api, emulator


def manifest(index: int) -> dict:
    document = yaml.safe_load((REPO / "pipelines" / "quickstart.yaml").read_text())
    document["metadata"] = {"name": f"bench-{index:04d}", "namespace": NS}
    hp = document["spec"]["stages"][0]["hyperparameters"]
    hp.update(maxSteps=4, checkpointEvery=2, logEvery=1, evalSize=8, warmupSteps=1)
    document["spec"]["stages"][0]["datasets"]["train"]["size"] = 100
    return document


def create_all(api: ApiServer, count: int, workers: int = 8) -> float:
    """POST ``count`` AlignmentJobs concurrently; returns when the first was sent (monotonic)."""
    import urllib.request

    url = f"{api.url}/apis/alignops.io/v1alpha1/namespaces/{NS}/alignmentjobs"

    def post(index: int) -> None:
        request = urllib.request.Request(url, data=json.dumps(manifest(index)).encode(), method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "benchmark"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 201

    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(post, range(count)))
    api.created_all_after = time.monotonic() - started
    return started


def wait_jobs(emulator: CountingEmulator, names: set[str], timeout: float) -> float:
    wait_until(lambda: names <= set(emulator.jobs_created), timeout, interval=0.2,
               message=lambda: f"{len(names - set(emulator.jobs_created))} Jobs still missing")
    return max(emulator.jobs_created[n] for n in names)


def operator_agents(log: list, since: float, until: float) -> collections.Counter:
    """Requests by the operator process (kopf's own client and the kubernetes client), by kind."""
    tally: collections.Counter = collections.Counter()
    for at, method, agent, path, watch in log:
        if not since <= at <= until or not (agent.startswith("kopf") or agent.startswith("OpenAPI-Generator")):
            continue
        kind = "watch" if watch in ("true", "1") else method
        resource = path.rstrip("/").split("/")
        noun = resource[-1] if resource[-1] == "status" else next((p for p in reversed(resource) if p in (
            "alignmentjobs", "jobs", "pods", "configmaps", "events")), resource[-1])
        tally[f"{kind} {noun}"] += 1
    return tally


def run_minimal(workdir: Path, count: int) -> dict:
    api, emulator = start(workdir)
    operator_file = workdir / "minimal_operator.py"
    operator_file.write_text(MINIMAL_OPERATOR)
    kopf_run = KopfSubprocess(api, operator_file, wait_for=[AJ], verbose=False, log_path=workdir / "minimal.log").start()
    try:
        started = create_all(api, count)
        done = wait_jobs(emulator, {f"bench-{i:04d}-sft-a1" for i in range(count)}, timeout=1200)
        memory = peak_memory_kib(kopf_run.process.pid)
        tally = operator_agents(emulator.log, started, done)
    finally:
        kopf_run.stop()
        api.stop()
    return {"seconds": done - started, "peak_kib": memory, "requests": tally, "created_all": api.created_all_after}


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """histogram_quantile over cumulative (le, count) buckets, linear within a bucket."""
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    rank = q * total
    previous_le, previous_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return previous_le
            return previous_le + (le - previous_le) * ((rank - previous_count) / max(count - previous_count, 1e-9))
        previous_le, previous_count = le, count
    return previous_le


def reconcile_quantiles(metrics_text: str) -> tuple[float | None, float | None, int]:
    from prometheus_client.parser import text_string_to_metric_families

    buckets = []
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "alignops_reconcile_duration_seconds":
            buckets = sorted((float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket"))
    count = int(buckets[-1][1]) if buckets else 0
    return quantile(buckets, 0.5), quantile(buckets, 0.99), count


def run_alignops(workdir: Path, count: int) -> dict:
    api, emulator = start(workdir)
    operator = OperatorProcess(api, {"default_storage_uri": "s3://bench-bucket/runs", "default_storage_secret": STORAGE_SECRET,
                                     "stage_metrics_port": "0"}, workdir / "alignops.log").start()
    try:
        started = create_all(api, count)
        done = wait_jobs(emulator, {f"bench-{i:04d}-sft-a1" for i in range(count)}, timeout=1200)
        # let the status writes and events of the last jobs land before reading the figures
        time.sleep(3)
        tally = operator_agents(emulator.log, started, time.monotonic())
        p50, p99, reconciles = reconcile_quantiles(operator.metrics())
        memory = operator.peak_memory_kib()
    finally:
        operator.stop()
        api.stop()
    return {"seconds": done - started, "peak_kib": memory, "requests": tally, "p50": p50, "p99": p99, "reconciles": reconciles,
            "created_all": api.created_all_after}


def run_lifecycle(workdir: Path, count: int) -> dict:
    """``count`` jobs from creation to Succeeded (pods really train, S3 on moto): operator requests per job."""
    from s3_fixtures import running_moto_server

    from tests.k8s.node_agent import NodeAgent

    workdir.mkdir(parents=True, exist_ok=True)
    with running_moto_server(workdir / "moto.log") as endpoint:
        make_bucket(endpoint, "bench-bucket")
        api, emulator = start(workdir)
        create_storage_secret(api, NS)
        agent = NodeAgent(api, workdir=workdir / "agent", env=pod_env()).start()
        operator = OperatorProcess(api, {"default_storage_uri": "s3://bench-bucket/runs", "default_storage_endpoint": endpoint,
                                         "default_storage_secret": STORAGE_SECRET, "stage_metrics_port": "0"},
                                   workdir / "lifecycle.log").start()
        try:
            started = time.monotonic()
            create_all(api, count, workers=count)
            names = [f"bench-{i:04d}" for i in range(count)]

            def finished() -> bool:
                return all(((api.get(AJ, NS, n) or {}).get("status") or {}).get("phase") in ("Succeeded", "Failed") for n in names)
            wait_until(finished, 600, interval=0.5, message="the lifecycle jobs to finish")
            time.sleep(2)
            phases = [((api.get(AJ, NS, n) or {}).get("status") or {}).get("phase") for n in names]
            tally = operator_agents(emulator.log, started, time.monotonic())
        finally:
            operator.stop()
            agent.stop()
            api.stop()
    return {"phases": phases, "requests": tally}


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3, help="Alternate the two operators this many times; medians are reported.")
    parser.add_argument("--lifecycle-jobs", type=int, default=3)
    args = parser.parse_args()
    minimal_runs, our_runs = [], []
    with tempfile.TemporaryDirectory(prefix="operator-scale-") as tmp:
        root = Path(tmp)
        for round_ in range(args.repeat):
            minimal_runs.append(run_minimal(root / f"minimal-{round_}", args.jobs))
            our_runs.append(run_alignops(root / f"alignops-{round_}", args.jobs))
            print(f"run {round_ + 1}: minimal kopf operator {minimal_runs[-1]['seconds']:.1f} s, "
                  f"alignops operator {our_runs[-1]['seconds']:.1f} s", flush=True)
        lifecycle = run_lifecycle(root / "lifecycle", args.lifecycle_jobs) if args.lifecycle_jobs else None
    n = args.jobs
    minimal_s = median([r["seconds"] for r in minimal_runs])
    ours_s = median([r["seconds"] for r in our_runs])
    ratios = [o["seconds"] / m["seconds"] for m, o in zip(minimal_runs, our_runs)]
    last_minimal, last_ours = minimal_runs[-1], our_runs[-1]
    print()
    print(f"| {n} AlignmentJobs created at once (median of {args.repeat}) | minimal kopf operator | AlignOps operator |")
    print("|---|---|---|")
    print(f"| time until every first-stage Job exists | {minimal_s:.1f} s | {ours_s:.1f} s |")
    print(f"| ratio AlignOps / minimal (median of per-run ratios; each run: {', '.join(f'{r:.2f}' for r in ratios)}) "
          f"| 1.00 | {median(ratios):.2f}x |")
    print(f"| the {n} creations themselves took | {median([r['created_all'] for r in minimal_runs]):.1f} s | "
          f"{median([r['created_all'] for r in our_runs]):.1f} s |")
    print(f"| operator API requests per job (creation phase) | {sum(last_minimal['requests'].values()) / n:.2f} | "
          f"{sum(last_ours['requests'].values()) / n:.2f} |")
    print(f"| peak operator memory (VmHWM) | {max(r['peak_kib'] for r in minimal_runs) / 1024:.0f} MiB | "
          f"{max(r['peak_kib'] for r in our_runs) / 1024:.0f} MiB |")
    print(f"| reconcile latency p50 / p99 (alignops_reconcile_duration_seconds, {last_ours['reconciles']} reconciles) | - | "
          f"{median([r['p50'] for r in our_runs]) * 1000:.1f} ms / {median([r['p99'] for r in our_runs]) * 1000:.0f} ms |")
    print()
    print("requests in the creation phase (minimal):", dict(last_minimal["requests"]))
    print("requests in the creation phase (alignops):", dict(last_ours["requests"]))
    if lifecycle:
        k = args.lifecycle_jobs
        per_job = {key: round(value / k, 2) for key, value in sorted(lifecycle["requests"].items())}
        print(f"\nAPI requests per job lifecycle ({k} one-stage jobs created -> Succeeded, phases {lifecycle['phases']}): "
              f"{sum(lifecycle['requests'].values()) / k:.1f} per job; by kind: {per_job}")


if __name__ == "__main__":
    main()
