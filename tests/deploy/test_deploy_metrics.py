"""The stage pod's exporter (alignops.metrics.workload) over real HTTP, parsed with prometheus_client's
own text parser, and the name table the dashboard and alerts share."""

from __future__ import annotations

import json
import re
import sys
import types
import urllib.error
import urllib.request

import pytest
from deploy_helpers import DASHBOARD_FILE
from prometheus_client.parser import text_string_to_metric_families

from alignops.metrics import names
from alignops.metrics.workload import StageMetrics, serve_stage_metrics
from alignops.contract import StageRunConfig


def stage_config(**overrides) -> StageRunConfig:
    data = {"job": {"name": "demo", "namespace": "ml"}, "stage": "rl", "type": "rl", "algorithm": "grpo", "attempt": 2,
            "base_model": {"architecture": {"hiddenSize": 32, "layers": 1, "heads": 2, "maxPositions": 32}},
            "storage": {"uri": "file:///tmp/x"}, "stage_key": "ml/demo/rl"}
    data.update(overrides)
    return StageRunConfig.model_validate(data)


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    """{family name: {sorted label items: value}} of a real /metrics response."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    result: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            result.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return result


def labels(round_: str = "", **extra) -> tuple:
    return tuple(sorted({"aj_namespace": "ml", "aj_name": "demo", "stage": "rl", "round": round_, **extra}.items()))


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server():
    servers = []

    def start(config=None, clock=None):
        metrics = StageMetrics(config or stage_config(), **({"clock": clock} if clock else {}))
        from alignops.metrics.workload import StageMetricsServer

        srv = StageMetricsServer(metrics, 0, "127.0.0.1")
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.close()


def test_record_keys_become_the_table_gauges(server):
    srv = server()
    srv.observe({"time": 1.0, "step": 40, "total_steps": 200, "round": 3, "loss": 0.71, "lr": 1e-5, "reward_mean": 0.42,
                 "reward_std": 0.1, "kl": 0.02, "policy_loss": -0.1, "clip_fraction": 0.05, "entropy": 1.3,
                 "response_length_mean": 17.5, "response_length_max": 32, "tokens_per_second_generate": 900.0,
                 "tokens_per_second_train": 450.0, "time_generate": 3.5, "time_score": 0.25, "time_train": 2.0,
                 "logprob_gap": 0.004, "accuracy": 0.6, "step_time": 0.03, "grad_norm": 1.5, "tokens_per_second": 1200.0})
    families = scrape(srv.port)
    expected = {"alignops_stage_step": 40, "alignops_stage_total_steps": 200, "alignops_stage_loss": 0.71,
                "alignops_stage_learning_rate": 1e-5, "alignops_stage_reward_mean": 0.42, "alignops_stage_kl": 0.02,
                "alignops_stage_generate_tokens_per_second": 900.0, "alignops_stage_train_tokens_per_second": 450.0,
                "alignops_stage_generate_seconds": 3.5, "alignops_stage_score_seconds": 0.25,
                "alignops_stage_train_seconds": 2.0, "alignops_stage_logprob_gap": 0.004, "alignops_stage_accuracy": 0.6,
                "alignops_stage_step_seconds": 0.03, "alignops_stage_response_length_max": 32}
    for name, value in expected.items():
        assert families[name] == {labels("3"): value}, name
    # "time" is the sink's wall clock and "round" a label: neither is a gauge
    assert "alignops_stage_time" not in families and "alignops_stage_round" not in families
    info = families["alignops_stage_info"]
    assert info == {labels("3", type="rl", algorithm="grpo", role="all", attempt="2"): 1.0}


def test_per_rank_step_times_become_one_series_per_rank(server):
    """A run on 4 processes logs each one's step time by global rank: one gauge per rank (a number
    that is not finite is skipped), never an unlisted gauge of the key itself."""
    srv = server()
    srv.observe({"step": 10, "rank_step_time": [0.25, 0.5, float("nan"), 0.75]})
    families = scrape(srv.port)
    assert families["alignops_stage_rank_step_seconds"] == {labels(rank="0"): 0.25, labels(rank="1"): 0.5, labels(rank="3"): 0.75}
    assert "alignops_stage_rank_step_time" not in families
    srv.observe({"step": 20, "rank_step_time": [0.3, 2.0, 0.3, 0.3]})  # rank 1 lags: its series shows it
    assert scrape(srv.port)["alignops_stage_rank_step_seconds"][labels(rank="1")] == 2.0


def test_no_reserved_label_and_every_series_prefixed(server):
    srv = server()
    srv.observe({"step": 1, "loss": 2.0, "custom_metric": 3})
    for name, series in scrape(srv.port).items():
        assert name.startswith("alignops_"), name
        for label_items in series:
            keys = {k for k, _ in label_items}
            assert not keys & names.RESERVED_LABELS, (name, keys)
            assert {"aj_namespace", "aj_name", "stage", "round"} <= keys, (name, keys)


def test_a_new_round_replaces_the_previous_rounds_series(server):
    srv = server()
    srv.observe({"step": 5, "round": 1, "reward_mean": 0.2, "kl": 0.01})
    srv.observe({"step": 5, "round": 2, "reward_mean": 0.5})
    families = scrape(srv.port)
    assert families["alignops_stage_reward_mean"] == {labels("2"): 0.5}
    # round 1's KL is gone (Prometheus keeps its history); round 2 has not logged one
    assert families.get("alignops_stage_kl", {}) == {}
    assert set(families["alignops_stage_info"]) == {labels("2", type="rl", algorithm="grpo", role="all", attempt="2")}
    assert set(families["alignops_stage_start_timestamp_seconds"]) == {labels("2")}


def test_split_run_takes_its_round_from_the_config(server):
    srv = server(stage_config(round=4, role="rollout"))
    srv.observe({"reward_mean": 0.3})
    families = scrape(srv.port)
    assert families["alignops_stage_reward_mean"] == {labels("4"): 0.3}
    assert labels("4", type="rl", algorithm="grpo", role="rollout", attempt="2") in families["alignops_stage_info"]


def test_unlisted_numeric_keys_are_exported_in_snake_case_and_capped(server, caplog):
    srv = server()
    srv.observe({"evalLoss": 1.25, "myScore": 3, "name": "text", "flag": True, "learning_rate": 9.0})
    families = scrape(srv.port)
    assert families["alignops_stage_eval_loss"] == {labels(): 1.25}  # a table entry, reached from camelCase
    assert families["alignops_stage_my_score"] == {labels(): 3.0}  # unlisted
    assert "alignops_stage_flag" not in families and "alignops_stage_name" not in families
    # an unlisted key whose name is taken by a table entry ("lr" -> alignops_stage_learning_rate) is refused
    assert "alignops_stage_learning_rate" not in families
    srv.observe({f"extra_{i}": i for i in range(names.MAX_UNLISTED + 5)})
    unlisted = [n for n in scrape(srv.port) if n.startswith("alignops_stage_extra_")]
    # my_score took one of the MAX_UNLISTED slots
    assert len(unlisted) == names.MAX_UNLISTED - 1


def test_progress_endpoint(server):
    clock = Clock(1000.0)
    srv = server(clock=clock)
    url = f"http://127.0.0.1:{srv.port}/progress"
    progress = json.loads(urllib.request.urlopen(url, timeout=5).read())
    assert progress == {"step": None, "totalSteps": None, "round": None, "records": 0, "startTime": 1000.0,
                        "lastProgressTime": 1000.0, "now": 1000.0}
    clock.now = 1012.5
    srv.observe({"step": 7, "total_steps": 50, "round": 2, "loss": 1.0})
    clock.now = 1100.0
    progress = json.loads(urllib.request.urlopen(url, timeout=5).read())
    # staleness a poller computes: now - lastProgressTime = 1100 - 1012.5 = 87.5 s
    assert progress == {"step": 7, "totalSteps": 50, "round": 2, "records": 1, "startTime": 1000.0,
                        "lastProgressTime": 1012.5, "now": 1100.0}
    assert scrape(srv.port)["alignops_stage_last_progress_timestamp_seconds"] == {labels("2"): 1012.5}
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/other", timeout=5)
    assert error.value.code == 404


def test_gpu_memory_gauges_from_torch_cuda(server, monkeypatch):
    """With CUDA present (a stand-in torch module here: this machine has no GPU) each device gets
    allocated, reserved and peak gauges."""
    cuda = types.SimpleNamespace(is_available=lambda: True, device_count=lambda: 2,
                                 memory_allocated=lambda i: 1000 * (i + 1), memory_reserved=lambda i: 2000 * (i + 1),
                                 max_memory_allocated=lambda i: 1500 * (i + 1))
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    srv = server()
    srv.observe({"step": 1})
    families = scrape(srv.port)
    assert families["alignops_stage_gpu_memory_allocated_bytes"] == {labels(device="0"): 1000, labels(device="1"): 2000}
    assert families["alignops_stage_gpu_memory_reserved_bytes"] == {labels(device="0"): 2000, labels(device="1"): 4000}
    assert families["alignops_stage_gpu_memory_peak_bytes"] == {labels(device="0"): 1500, labels(device="1"): 3000}


def test_no_gpu_no_gpu_series(server):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    srv = server()
    srv.observe({"step": 1})
    assert "alignops_stage_gpu_memory_allocated_bytes" not in scrape(srv.port)


def test_make_context_serves_metrics_from_the_sink(monkeypatch, tmp_path):
    """ALIGNOPS_METRICS_PORT switches the exporter on in the stage's RunContext."""
    from deploy_helpers import free_port

    from alignops.workloads.context import make_context

    port = free_port()
    monkeypatch.setenv("ALIGNOPS_METRICS_PORT", str(port))
    monkeypatch.setenv("ALIGNOPS_SCRATCH", str(tmp_path))
    monkeypatch.delenv("ALIGNOPS_METRICS_LOG", raising=False)
    ctx = make_context(stage_config(storage={"uri": f"file://{tmp_path}/store"}))
    try:
        ctx.metrics.log({"step": 3, "loss": 0.5})
        assert scrape(port)["alignops_stage_loss"] == {labels(): 0.5}
    finally:
        ctx.metrics.exporter.close()


def test_serve_stage_metrics_binds_every_interface():
    srv = serve_stage_metrics(0, stage_config())
    try:
        assert srv._server.server_address[0] in ("0.0.0.0", "")
        assert "alignops_stage_info" in scrape(srv.port)
    finally:
        srv.close()


# -- the name table --------------------------------------------------------------------------------
def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_queries_use_only_table_names():
    known = names.all_names()
    for expr in dashboard_exprs():
        for name in re.findall(r"\balignops_[a-z_]+\b", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in known or base in known, (name, expr)


def test_table_names_are_unique_and_valid():
    metrics = (list(names.STAGE_RECORD_METRICS.values()) + list(names.STAGE_RANK_RECORD_METRICS.values())
               + list(names.STAGE_OWN_METRICS) + list(names.OPERATOR_METRICS))
    assert len({m.name for m in metrics}) == len(metrics)
    for metric in metrics:
        assert re.fullmatch(r"alignops_[a-z][a-z0-9_]*", metric.name), metric.name
        assert not set(metric.labels) & names.RESERVED_LABELS, metric
    assert names.snake_case("evalLoss") == "eval_loss" and names.snake_case("kl/mean") == "kl_mean"


def test_a_bad_record_never_reaches_the_training_loop(server, monkeypatch, caplog):
    """observe() logs and carries on: a CUDA error while reading memory, or a round that is no number."""
    def broken():
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=broken)))
    srv = server()
    srv.observe({"step": 2, "loss": 1.5})
    srv.observe({"round": "third", "loss": 9.0})
    assert "an illegal memory access" in caplog.text and "third" in caplog.text
    # the first record's gauges were set before the GPU read failed; the second changed nothing
    assert scrape(srv.port)["alignops_stage_loss"] == {labels(): 1.5}


def test_the_operator_registry_exports_the_table_names():
    """alignops.metrics.operator (the operator's registry) against OPERATOR_METRICS: names, types and
    labels the dashboard and the alerts rely on."""
    from prometheus_client import generate_latest

    from alignops.metrics.operator import OperatorMetrics

    metrics = OperatorMetrics()
    metrics.set_phase("ml", "demo", "Running")
    for kind, value, reason in (("attempt", 1, None), ("failure", 1, "OOMKilled"), ("duration", 30.0, None), ("first_pod", 4.0, None)):
        metrics.observe("ml", "demo", kind, "sft", value, reason)
    metrics.reconciled(0.01, failed=True)
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    for metric in names.OPERATOR_METRICS:
        base = metric.name[: -len("_total")] if metric.kind == "counter" else metric.name
        family = families[base]
        assert family.type == metric.kind, metric.name
        samples = [s for s in family.samples if s.name in (metric.name, f"{metric.name}_count")]
        assert samples, metric.name
        for sample in samples:
            assert set(sample.labels) - {"le"} == set(metric.labels), (metric.name, sample.labels)
