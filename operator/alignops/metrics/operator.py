"""The operator's Prometheus metrics, in their own registry (no process or platform collectors).

Names, help texts and labels come from ``alignops.metrics.names`` (the table the dashboard and the
alerts read): ``alignops_jobs{aj_namespace, phase}``, ``alignops_stage_duration_seconds``,
``alignops_stage_attempts_total``, ``alignops_stage_failures_total{reason}``,
``alignops_time_to_first_pod_running_seconds`` (labels ``aj_namespace``, ``aj_name``, ``stage``),
``alignops_reconcile_duration_seconds`` and ``alignops_reconcile_errors_total``. Series of a deleted
AlignmentJob are removed with it, so cardinality follows the jobs that exist.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from alignops.metrics import names

STAGE_SECONDS_BUCKETS = (60, 300, 900, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 16 * 3600, 24 * 3600, 48 * 3600)
FIRST_POD_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
RECONCILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
PHASES = ("Pending", "Running", "Suspended", "Succeeded", "Failed")


def _counter_name(name: str) -> str:
    # prometheus_client appends _total itself
    return name[: -len("_total")] if name.endswith("_total") else name


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs = Gauge(names.JOBS.name, names.JOBS.help, list(names.JOBS.labels), registry=r)
        self.job_info = Gauge(names.JOB_INFO.name, names.JOB_INFO.help, list(names.JOB_INFO.labels), registry=r)
        self.stage_duration = Histogram(names.STAGE_DURATION.name, names.STAGE_DURATION.help, list(names.STAGE_DURATION.labels),
                                        buckets=STAGE_SECONDS_BUCKETS, registry=r)
        self.stage_attempts = Counter(_counter_name(names.STAGE_ATTEMPTS.name), names.STAGE_ATTEMPTS.help,
                                      list(names.STAGE_ATTEMPTS.labels), registry=r)
        self.stage_failures = Counter(_counter_name(names.STAGE_FAILURES.name), names.STAGE_FAILURES.help,
                                      list(names.STAGE_FAILURES.labels), registry=r)
        self.reconcile_duration = Histogram(names.RECONCILE_DURATION.name, names.RECONCILE_DURATION.help,
                                            list(names.RECONCILE_DURATION.labels), buckets=RECONCILE_BUCKETS, registry=r)
        self.reconcile_errors = Counter(_counter_name(names.RECONCILE_ERRORS.name), names.RECONCILE_ERRORS.help,
                                        list(names.RECONCILE_ERRORS.labels), registry=r)
        self.first_pod = Histogram(names.TIME_TO_FIRST_POD.name, names.TIME_TO_FIRST_POD.help, list(names.TIME_TO_FIRST_POD.labels),
                                   buckets=FIRST_POD_BUCKETS, registry=r)
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], str] = {}
        self._namespaces: set[str] = set()
        self._series: dict[tuple[str, str], set[tuple]] = {}  # (namespace, name) -> (metric, label values)

    # -- jobs by phase ----------------------------------------------------------------------------------
    def set_phase(self, namespace: str, name: str, phase: str | None) -> None:
        """Record a job's phase (None: it is gone) and refresh the per-namespace counts."""
        with self._lock:
            previous = self._phases.get((namespace, name))
            if previous is not None and previous != phase:
                self.job_info.remove(namespace, name, previous)  # one series per job: its current phase
            if phase is None:
                self._phases.pop((namespace, name), None)
            else:
                self._phases[(namespace, name)] = phase
                self._namespaces.add(namespace)
                self.job_info.labels(namespace, name, phase).set(1)
            counts = Tally((ns, p) for (ns, _), p in self._phases.items())
            for ns in self._namespaces:  # a namespace once seen keeps zeros, so a phase drops to 0
                for p in PHASES:
                    self.jobs.labels(ns, p).set(counts.get((ns, p), 0))

    # -- stages ---------------------------------------------------------------------------------------
    def _remember(self, namespace: str, name: str, metric, values: tuple) -> None:
        self._series.setdefault((namespace, name), set()).add((metric, values))

    def observe(self, namespace: str, name: str, kind: str, stage: str, value: float = 1.0, reason: str | None = None) -> None:
        labels = (namespace, name, stage)
        with self._lock:
            if kind == "attempt":
                self.stage_attempts.labels(*labels).inc(value)
                self._remember(namespace, name, self.stage_attempts, labels)
            elif kind == "failure":
                values = labels + (reason or "Error",)
                self.stage_failures.labels(*values).inc(value)
                self._remember(namespace, name, self.stage_failures, values)
            elif kind == "duration":
                self.stage_duration.labels(*labels).observe(value)
                self._remember(namespace, name, self.stage_duration, labels)
            elif kind == "first_pod":
                self.first_pod.labels(*labels).observe(value)
                self._remember(namespace, name, self.first_pod, labels)
            else:
                raise ValueError(f"unknown observation kind {kind!r}; known: attempt, failure, duration, first_pod")

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted AlignmentJob's series."""
        with self._lock:
            for metric, values in self._series.pop((namespace, name), set()):
                try:
                    metric.remove(*values)
                except KeyError:
                    pass
        self.set_phase(namespace, name, None)

    # -- reconciles -----------------------------------------------------------------------------------
    def reconciled(self, seconds: float, failed: bool) -> None:
        self.reconcile_duration.observe(seconds)
        if failed:
            self.reconcile_errors.inc()

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """``/metrics`` on ``port`` from a daemon thread."""
        start_http_server(port, addr=address, registry=self.registry)
