"""A stage pod's Prometheus exporter: ``/metrics`` and ``/progress`` on ``ALIGNOPS_METRICS_PORT``.

``serve_stage_metrics(port, config)`` starts a daemon HTTP server and returns the exporter; the stage's
``MetricsSink`` calls ``exporter.observe(record)`` with every metrics record it logs. Record keys map to
gauges through ``alignops.metrics.names`` (the one table shared with the dashboard and the alerts).
The exporter has its own ``CollectorRegistry``: no process/platform collectors, nothing global.
GPU memory is read from the torch the stage imported (never imported here), when CUDA is available.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from alignops.metrics import names
from alignops.contract import StageRunConfig

log = logging.getLogger(__name__)


def _round_label(value) -> str:
    return "" if value is None else str(int(value))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class StageMetrics:
    """Gauges of one stage run. Thread-safe: ``observe`` runs in the training thread while the HTTP
    server's threads read."""

    def __init__(self, config: StageRunConfig, clock: Callable[[], float] = time.time):
        self.config = config
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._gauges: dict[str, Gauge] = {}
        self._label_names: dict[int, tuple[str, ...]] = {}
        self._unlisted: set[str] = set()
        self._refused: set[str] = set()
        self._children: set[tuple[Gauge, tuple[str, ...], str]] = set()  # (gauge, label values, round)
        self._reserved = names.all_names()
        self.round = _round_label(config.round)
        self.step: int | None = None
        self.total_steps: int | None = None
        self.records = 0
        self.start_time = clock()
        self.last_progress = self.start_time
        self._info = self._gauge(names.STAGE_INFO)
        self._start = self._gauge(names.STAGE_START)
        self._progress = self._gauge(names.STAGE_LAST_PROGRESS)
        self._gpu = {m.name: self._gauge(m) for m in (names.GPU_MEMORY_ALLOCATED, names.GPU_MEMORY_RESERVED, names.GPU_MEMORY_PEAK)}
        self._per_rank = {key: self._gauge(m) for key, m in names.STAGE_RANK_RECORD_METRICS.items()}
        self._set_round_series()

    # -- label sets ---------------------------------------------------------------------------------
    def _labels(self) -> dict[str, str]:
        job = self.config.job
        return {"aj_namespace": job.namespace, "aj_name": job.name, "stage": self.config.stage, "round": self.round}

    def _info_labels(self) -> dict[str, str]:
        c = self.config
        return {**self._labels(), "type": c.type, "algorithm": c.algorithm or "", "role": c.role, "attempt": str(c.attempt)}

    def _gauge(self, metric: names.Metric) -> Gauge:
        gauge = Gauge(metric.name, metric.help, list(metric.labels), registry=self.registry)
        self._gauges[metric.name] = gauge
        self._label_names[id(gauge)] = metric.labels
        return gauge

    def _set(self, gauge: Gauge, labels: dict[str, str], value: float) -> None:
        values = tuple(labels[name] for name in self._label_names[id(gauge)])
        gauge.labels(*values).set(value)
        self._children.add((gauge, values, labels["round"]))

    def _set_round_series(self) -> None:
        self._set(self._info, self._info_labels(), 1)
        self._set(self._start, self._labels(), self.start_time)
        self._set(self._progress, self._labels(), self.last_progress)

    def _change_round(self, new_round: str) -> None:
        """Drop every series of the finished round: one round of series per process at a time."""
        for child in [c for c in self._children if c[2] == self.round]:
            child[0].remove(*child[1])
            self._children.discard(child)
        self.round = new_round
        self._set_round_series()

    # -- records ------------------------------------------------------------------------------------
    def _record_gauge(self, key: str) -> Gauge | None:
        metric = names.record_metric(key)
        gauge = self._gauges.get(metric.name)
        if gauge is not None:
            return gauge
        listed = key in names.STAGE_RECORD_METRICS or names.snake_case(key) in names.STAGE_RECORD_METRICS
        if not listed and (metric.name in self._reserved or len(self._unlisted) >= names.MAX_UNLISTED):
            if key not in self._refused:
                self._refused.add(key)
                log.warning("metrics record key %r is not exported (name %s taken or %d unlisted gauges already)",
                            key, metric.name, names.MAX_UNLISTED)
            return None
        if not listed:
            self._unlisted.add(metric.name)
        return self._gauge(metric)

    def observe(self, record: dict) -> None:
        """Set the gauges from one metrics record; non-numeric and boolean values are ignored. Never
        raises: a metrics problem is logged, the training it reports on goes on."""
        try:
            self._observe(record)
        except Exception:  # noqa: BLE001 - see the docstring
            log.exception("metrics record not exported: %r", record)

    def _observe(self, record: dict) -> None:
        with self._lock:
            if "round" in record and _round_label(record["round"]) != self.round:
                self._change_round(_round_label(record["round"]))
            now = self.clock()
            labels = self._labels()
            for key, value in record.items():
                if key in self._per_rank and isinstance(value, (list, tuple)):
                    for rank, number in enumerate(value):
                        if _finite(number):
                            self._set(self._per_rank[key], {**labels, "rank": str(rank)}, float(number))
                    continue
                if key in names.NOT_EXPORTED or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                gauge = self._record_gauge(key)
                if gauge is not None:
                    self._set(gauge, labels, float(value))
            if _finite(record.get("step")):
                self.step = int(record["step"])
            if _finite(record.get("total_steps")):
                self.total_steps = int(record["total_steps"])
            self.records += 1
            self.last_progress = now
            self._set(self._progress, labels, now)
            self._observe_gpu(labels)

    def _observe_gpu(self, labels: dict[str, str]) -> None:
        # only a torch the stage already imported: the exporter never pays for (or needs) the import
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available():
            return
        for index in range(torch.cuda.device_count()):
            device = {**labels, "device": str(index)}
            self._set(self._gpu[names.GPU_MEMORY_ALLOCATED.name], device, torch.cuda.memory_allocated(index))
            self._set(self._gpu[names.GPU_MEMORY_RESERVED.name], device, torch.cuda.memory_reserved(index))
            self._set(self._gpu[names.GPU_MEMORY_PEAK.name], device, torch.cuda.max_memory_allocated(index))

    def progress(self) -> dict:
        with self._lock:
            return {"step": self.step, "totalSteps": self.total_steps, "round": int(self.round) if self.round else None,
                    "records": self.records, "startTime": self.start_time, "lastProgressTime": self.last_progress,
                    "now": self.clock()}

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Handler(BaseHTTPRequestHandler):
    metrics: StageMetrics  # set on the subclass made per server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, self.metrics.exposition())
        elif path == "/progress":
            self._send(200, "application/json", json.dumps(self.metrics.progress()).encode())
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics or /progress\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - scrapes every few seconds: keep stderr quiet
        return


class StageMetricsServer:
    """The exporter plus its HTTP server (daemon threads: they never keep a finished stage alive)."""

    def __init__(self, metrics: StageMetrics, port: int, address: str = ""):
        self.metrics = metrics
        handler = type("StageMetricsHandler", (_Handler,), {"metrics": metrics})
        self._server = ThreadingHTTPServer((address, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), name="alignops-metrics", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def observe(self, record: dict) -> None:
        self.metrics.observe(record)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_stage_metrics(port: int, config: StageRunConfig, address: str = "") -> StageMetricsServer:
    """Serve ``/metrics`` and ``/progress`` for this stage run on ``port`` (0: any free port) on every
    interface (``address`` narrows it); returns the object whose ``observe(record)`` takes records."""
    return StageMetricsServer(StageMetrics(config), port, address)
