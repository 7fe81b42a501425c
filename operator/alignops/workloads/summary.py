"""``<prefix>/<namespace>/<job>/summary.json``: what the job's stage runs know of it, kept in storage
so that it outlives the AlignmentJob (``ttlSecondsAfterFinished`` deletes the resource, not this).

Each stage run reads the summary, updates its own stage's entry and writes it back; stages of a job
run one after another, so there is never a concurrent writer. An entry names the stage's storage
key; a run under a new key (a rerun from its inputs) starts its entry afresh and clears those of the
stages after it, so the summary never shows a result of an older spec."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone

from alignops.contract import EXIT_CONFIG, EXIT_OK, EXIT_SIGTERM
from alignops.storage import summary_key
from alignops.storage.base import ObjectNotFound, StorageError

_PHASES = {EXIT_OK: "Succeeded", EXIT_SIGTERM: "Suspended", EXIT_CONFIG: "Failed"}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def update_summary(summary: dict, config, code: int, checkpoint_uri, metrics: dict, message, started: float, now: float) -> dict:
    """The summary with this run's entry (pure)."""
    pipeline = config.pipeline or [config.stage]
    stages = {name: summary.get("stages", {}).get(name, {"phase": "Pending"}) for name in pipeline}
    entry = dict(stages.get(config.stage, {}))
    if entry.get("stageKey", config.stage_key) != config.stage_key:
        # a rerun from its inputs (its spec changed): nothing of the old run, nor of the stages
        # after it (they rerun too), stays in the summary
        entry = {}
        later = pipeline[pipeline.index(config.stage) + 1:] if config.stage in pipeline else []
        stages.update({name: {"phase": "Pending"} for name in later})
    entry.update(phase=_PHASES.get(code, "Retrying"), attempt=config.attempt, exitCode=code, stageKey=config.stage_key,
                 lastRunStart=_iso(started), lastRunEnd=_iso(now))
    entry.setdefault("firstRunStart", _iso(started))
    if config.round is not None:
        entry.update(round=config.round, role=config.role)
    if checkpoint_uri:
        entry["checkpointUri"] = checkpoint_uri
    if metrics:
        entry["metrics"] = {**entry.get("metrics", {}), **metrics}
    if message:
        entry["message"] = message[:1024]
    stages[config.stage] = entry
    return {"job": config.job.name, "namespace": config.job.namespace, "updatedAt": _iso(now), "stages": stages}


def record_summary(ctx, code: int, checkpoint_uri, metrics: dict, message, started: float) -> None:
    """Best effort: a summary that cannot be written never fails the stage."""
    import time

    key = summary_key(ctx.config.job.namespace, ctx.config.job.name)
    try:
        try:
            summary = json.loads(ctx.store.get_bytes(key))
        except ObjectNotFound:
            summary = {}
        updated = update_summary(summary, ctx.config, code, checkpoint_uri, metrics, message, started, time.time())
        ctx.store.put_bytes(key, json.dumps(updated, indent=1).encode())
    except (StorageError, OSError, ValueError) as exc:
        print(f"warning: could not update {ctx.store.uri_for(key)}: {exc}", file=sys.stderr)
