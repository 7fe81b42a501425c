"""Every Prometheus series AlignOps exports, in one table: the stage pods' exporter
(``alignops.metrics.workload``), the Grafana dashboard, the alerts and the tests read names from here.

Labels (docs/architecture.md): ``aj_namespace``, ``aj_name``, ``stage``, ``round`` -- never ``job`` or
``namespace``, which Prometheus sets on every target. ``round`` is the RL round as a decimal string, or
the empty string (Prometheus then drops the label) for stages without rounds.

Stage pod series
----------------
A stage logs one metrics record per logging step (``RunContext.metrics.log``), a flat dict such as
``{"step": 40, "total_steps": 200, "round": 3, "loss": 0.71, "reward_mean": 0.42, ...}``. Each key of
``STAGE_RECORD_METRICS`` becomes the gauge named there (the value of its latest record). A numeric key
that has no entry still gets a gauge, ``alignops_stage_<key in snake_case>`` ("unlisted" below), so a
new stage's metric is visible before anyone edits this table (the rl stage's per-function
``reward_<function>`` keys are exported this way); unlisted gauges are capped at ``MAX_UNLISTED`` per
process to bound cardinality, and an unlisted key whose name a listed one already has is dropped.
Keys in ``NOT_EXPORTED`` are never gauges; strings and booleans are ignored. A key of
``STAGE_RANK_RECORD_METRICS`` holds a list with one number per process (index = global rank) and
becomes one series per process, labelled ``rank``: how a straggler among a run's processes shows.

When the round changes, the previous round's series are removed from the exporter (one round of
series per process at a time); Prometheus keeps the history, so per-round panels use
``last_over_time(...[$__range])`` grouped by ``round``.

Operator series
---------------
``OPERATOR_METRICS`` lists the names the operator's registry (``alignops.metrics.operator``, owned by
the operator) must export; tests compare the two.

Stage pod HTTP endpoints (``ALIGNOPS_METRICS_PORT``): ``/metrics`` (Prometheus text format) and
``/progress``: ``{"step", "totalSteps", "round", "records", "startTime", "lastProgressTime", "now"}``
(times in Unix seconds; ``now`` lets a poller measure staleness without trusting clock sync).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

PREFIX = "alignops_"
STAGE_LABELS: tuple[str, ...] = ("aj_namespace", "aj_name", "stage", "round")
OPERATOR_LABELS: tuple[str, ...] = ("aj_namespace", "aj_name", "stage")
RESERVED_LABELS = frozenset({"job", "namespace", "instance", "pod"})
MAX_UNLISTED = 64


@dataclass(frozen=True)
class Metric:
    """One series family: its Prometheus name, type, help text and labels."""

    name: str
    kind: Literal["gauge", "counter", "histogram"]
    help: str
    labels: tuple[str, ...] = STAGE_LABELS


def _stage(name: str, help_: str) -> Metric:
    return Metric(PREFIX + "stage_" + name, "gauge", help_)


# record key -> gauge. Units follow Prometheus conventions (seconds, bytes, ratios in 0..1).
STAGE_RECORD_METRICS: dict[str, Metric] = {
    # training loop (alignops.workloads.training.TrainLoop), every stage that trains
    "step": _stage("step", "Optimizer steps done in this stage run (or round)."),
    "total_steps": _stage("total_steps", "Optimizer steps this stage run (or round) will take."),
    "loss": _stage("loss", "Training loss of the latest logged step."),
    "lr": _stage("learning_rate", "Learning rate after the latest step."),
    "grad_norm": _stage("grad_norm", "Gradient norm before clipping, latest step."),
    "tokens_per_second": _stage("tokens_per_second", "Training tokens per second since the previous log."),
    "step_time": _stage("step_seconds", "Wall time of the latest optimizer step, seconds."),
    "memory_resident_bytes": _stage("memory_resident_bytes", "Largest resident memory of the run's processes at the latest log, bytes."),
    "gpu_memory_step_peak_bytes": _stage("gpu_memory_step_peak_bytes",
                                         "Largest GPU memory held by tensors on any process since the previous log, bytes."),
    "accuracy": _stage("accuracy", "Held-out accuracy (verifiable tasks), 0..1."),
    "eval_loss": _stage("eval_loss", "Held-out loss."),
    # RL rounds (docs/algorithms.md, the rl stage's logged figures)
    "reward_mean": _stage("reward_mean", "Mean reward of the round's sampled responses."),
    "reward_std": _stage("reward_std", "Standard deviation of the round's rewards."),
    "kl": _stage("kl", "KL divergence of the policy to the reference (estimator as configured)."),
    "kl_coef": _stage("kl_coef", "KL coefficient beta used in the round (adaptive when a KL target is set)."),
    "kl_loss": _stage("kl_loss", "KL term of the loss (KL placement in_loss)."),
    "advantage_mean": _stage("advantage_mean", "Mean advantage over the round's valid tokens."),
    "policy_loss": _stage("policy_loss", "Policy-gradient loss."),
    "value_loss": _stage("value_loss", "Critic (value) loss, PPO only."),
    "clip_fraction": _stage("clip_fraction", "Fraction of tokens whose ratio was clipped, 0..1."),
    "entropy": _stage("entropy", "Mean token entropy of the policy on its samples."),
    "response_length_mean": _stage("response_length_mean", "Mean response length, tokens."),
    "response_length_max": _stage("response_length_max", "Longest response, tokens."),
    "response_clip_ratio": _stage("response_clip_ratio", "Fraction of responses cut at the length limit, 0..1."),
    "tokens_per_second_generate": _stage("generate_tokens_per_second", "Rollout generation throughput, tokens per second."),
    "tokens_per_second_train": _stage("train_tokens_per_second", "Policy update throughput, tokens per second."),
    "time_generate": _stage("generate_seconds", "Time spent generating in the round, seconds."),
    "time_score": _stage("score_seconds", "Time spent scoring (rewards, verifiers, judges) in the round, seconds."),
    "time_train": _stage("train_seconds", "Time spent updating the policy in the round, seconds."),
    "time_sync": _stage("sync_seconds", "Time spent sending weights to the rollout engine in the round, seconds."),
    "logprob_gap": _stage("logprob_gap", "Mean |log p_rollout - log p_trainer| on sampled tokens: large means broken weight sync."),
}

# record key (a list: one number per process, by global rank) -> gauge with a ``rank`` label
RANK_LABELS: tuple[str, ...] = STAGE_LABELS + ("rank",)
STAGE_RANK_RECORD_METRICS: dict[str, Metric] = {
    "rank_step_time": Metric(PREFIX + "stage_rank_step_seconds", "gauge",
                             "Each process's own share of the latest logged step (data, forward, backward; not the wait "
                             "for the others at the gradient reduce), seconds: a straggler's is the largest.", RANK_LABELS),
}

# record keys that are labels or bookkeeping, not gauges
NOT_EXPORTED = frozenset({"round", "time"})

# written by the exporter itself, not from record keys
STAGE_INFO = Metric(PREFIX + "stage_info", "gauge", "1 while the stage run's process serves metrics; its labels describe the run.",
                    STAGE_LABELS + ("type", "algorithm", "role", "attempt"))
STAGE_START = Metric(PREFIX + "stage_start_timestamp_seconds", "gauge", "When this stage run's process started, Unix seconds.")
STAGE_LAST_PROGRESS = Metric(PREFIX + "stage_last_progress_timestamp_seconds", "gauge",
                             "When the stage last logged a metrics record (or started), Unix seconds: stall detection.")
GPU_MEMORY_ALLOCATED = Metric(PREFIX + "stage_gpu_memory_allocated_bytes", "gauge", "GPU memory held by tensors, bytes.",
                              STAGE_LABELS + ("device",))
GPU_MEMORY_RESERVED = Metric(PREFIX + "stage_gpu_memory_reserved_bytes", "gauge", "GPU memory reserved by the caching allocator, bytes.",
                             STAGE_LABELS + ("device",))
GPU_MEMORY_PEAK = Metric(PREFIX + "stage_gpu_memory_peak_bytes", "gauge", "Peak GPU memory held by tensors since the process started, bytes.",
                         STAGE_LABELS + ("device",))
STAGE_OWN_METRICS: tuple[Metric, ...] = (STAGE_INFO, STAGE_START, STAGE_LAST_PROGRESS,
                                         GPU_MEMORY_ALLOCATED, GPU_MEMORY_RESERVED, GPU_MEMORY_PEAK)

# The operator's registry (alignops.metrics.operator): names the dashboard and alerts rely on.
JOBS = Metric(PREFIX + "jobs", "gauge", "AlignmentJobs by phase.", ("aj_namespace", "phase"))
JOB_INFO = Metric(PREFIX + "job_info", "gauge", "1 per AlignmentJob, labelled with its current phase.",
                  ("aj_namespace", "aj_name", "phase"))
STAGE_DURATION = Metric(PREFIX + "stage_duration_seconds", "histogram", "Stage durations, start to end.", OPERATOR_LABELS)
STAGE_ATTEMPTS = Metric(PREFIX + "stage_attempts_total", "counter", "Stage runs started (first tries and retries).", OPERATOR_LABELS)
STAGE_FAILURES = Metric(PREFIX + "stage_failures_total", "counter", "Failed stage attempts by reason.", OPERATOR_LABELS + ("reason",))
RECONCILE_DURATION = Metric(PREFIX + "reconcile_duration_seconds", "histogram", "Time per reconcile of an AlignmentJob.", ())
RECONCILE_ERRORS = Metric(PREFIX + "reconcile_errors_total", "counter", "Reconciles that raised.", ())
TIME_TO_FIRST_POD = Metric(PREFIX + "time_to_first_pod_running_seconds", "histogram",
                           "From a stage run's creation to its first pod Running.", OPERATOR_LABELS)
OPERATOR_METRICS: tuple[Metric, ...] = (JOBS, JOB_INFO, STAGE_DURATION, STAGE_ATTEMPTS, STAGE_FAILURES, RECONCILE_DURATION,
                                        RECONCILE_ERRORS, TIME_TO_FIRST_POD)

_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def snake_case(key: str) -> str:
    """``evalLoss`` -> ``eval_loss``; characters Prometheus refuses become ``_``."""
    return _INVALID.sub("_", _CAMEL.sub(r"_\1", key)).lower()


def record_metric(key: str) -> Metric:
    """The gauge a record key maps to: its table entry, or the unlisted ``alignops_stage_<key>``."""
    listed = STAGE_RECORD_METRICS.get(key) or STAGE_RECORD_METRICS.get(snake_case(key))
    if listed is not None:
        return listed
    return _stage(snake_case(key), f"Stage metric {key!r} (not in alignops.metrics.names; latest logged value).")


def all_names() -> set[str]:
    """Every listed family name (histograms as their base name)."""
    return ({m.name for m in STAGE_RECORD_METRICS.values()} | {m.name for m in STAGE_RANK_RECORD_METRICS.values()}
            | {m.name for m in STAGE_OWN_METRICS} | {m.name for m in OPERATOR_METRICS})
