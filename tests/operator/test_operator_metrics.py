"""The operator's metrics: the names of alignops.metrics.names, the labels of docs/architecture.md."""

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from alignops.metrics import names
from alignops.metrics.operator import OperatorMetrics


def _samples(metrics: OperatorMetrics) -> dict:
    out = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_every_listed_operator_metric_is_exported():
    metrics = OperatorMetrics()
    metrics.set_phase("ml", "a", "Running")
    for kind in ("attempt", "failure", "duration", "first_pod"):
        metrics.observe("ml", "a", kind, "sft", 3.0, reason="OOMKilled")
    metrics.reconciled(0.02, failed=True)
    exported = {name for name, _ in _samples(metrics)}
    for metric in names.OPERATOR_METRICS:
        suffixes = ("_bucket", "_count", "_sum") if metric.kind == "histogram" else ("",)
        assert any(metric.name + s in exported for s in suffixes), metric.name


def test_labels_and_values():
    metrics = OperatorMetrics()
    metrics.set_phase("ml", "a", "Running")
    metrics.set_phase("ml", "b", "Running")
    metrics.set_phase("ml", "c", "Failed")
    metrics.observe("ml", "a", "attempt", "sft")
    metrics.observe("ml", "a", "attempt", "sft")
    metrics.observe("ml", "a", "failure", "sft", reason="OOMKilled")
    samples = _samples(metrics)
    assert samples[("alignops_jobs", (("aj_namespace", "ml"), ("phase", "Running")))] == 2
    assert samples[("alignops_jobs", (("aj_namespace", "ml"), ("phase", "Failed")))] == 1
    assert samples[("alignops_stage_attempts_total", (("aj_name", "a"), ("aj_namespace", "ml"), ("stage", "sft")))] == 2
    assert samples[("alignops_stage_failures_total", (("aj_name", "a"), ("aj_namespace", "ml"), ("reason", "OOMKilled"), ("stage", "sft")))] == 1
    for _, labels in samples:
        assert not {"job", "namespace"} & {k for k, _ in labels}


def test_a_deleted_job_takes_its_series_along():
    metrics = OperatorMetrics()
    metrics.set_phase("ml", "a", "Running")
    metrics.observe("ml", "a", "failure", "sft", reason="Error")
    metrics.forget("ml", "a")
    samples = _samples(metrics)
    assert not any(dict(labels).get("aj_name") == "a" for _, labels in samples)
    assert samples[("alignops_jobs", (("aj_namespace", "ml"), ("phase", "Running")))] == 0


def test_job_info_keeps_one_series_per_job_with_its_current_phase():
    metrics = OperatorMetrics()
    metrics.set_phase("ml", "a", "Running")
    metrics.set_phase("ml", "a", "Failed")

    def info():
        return {dict(labels)["phase"]: value for (name, labels), value in _samples(metrics).items()
                if name == "alignops_job_info" and dict(labels)["aj_name"] == "a"}

    assert info() == {"Failed": 1}  # the Running series is gone, so alerts see only the current phase
    metrics.forget("ml", "a")
    assert info() == {}
