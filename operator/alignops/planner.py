"""The planner: pure functions from (spec, observed status) to the next action, and from a run's
outcome to the new status. The local executor and the operator both use it, so the stage order,
the retry rule and the config resolution exist once.

The exit codes it reads are the run contract's (``alignops.contract``).

Reruns: each started stage keeps the fingerprint of what its result depends on
(``stage_fingerprint``). ``plan_reruns`` compares it with the spec in hand; a stage whose spec
changed, and every started stage after it, is reset to run again from its inputs under a new
storage key (``rerun-<n>``), so no result of an older spec is ever reported under a newer one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable

from alignops.api.job import AlignmentJob
from alignops.api.stages import STAGE_TYPES
from alignops.api.status import Condition, JobStatus, StageStatus
from alignops.api.distributed import DEFAULT_ZERO_STAGE
from alignops.contract import EXIT_CONFIG, EXIT_OK, EXIT_SIGTERM, DistributedRun, Inputs, JobRef, StageRunConfig, StorageTarget
from alignops.storage.layout import stage_prefix

RETRY_BASE_SECONDS = 10
RETRY_MAX_SECONDS = 600

# hyperparameters that change how a run is watched or stored, never what it computes: a change to
# them applies to the next run and reruns nothing (a resumed run continues exactly, whatever
# checkpointEvery). Stage fields outside hyperparameters (resources, backoffLimit, deadlines) are
# not in the fingerprint at all.
NON_RESULT_HYPERPARAMETERS = frozenset({"logEvery", "checkpointEvery", "keepCheckpoints", "gpuMemoryUtilization"})


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def retry_delay(failures: int) -> int:
    """Exponential backoff after the n-th failure: 10 s, 20 s, 40 s, ... at most 10 minutes."""
    return min(RETRY_BASE_SECONDS * 2 ** max(failures - 1, 0), RETRY_MAX_SECONDS)


@dataclass(frozen=True)
class Defaults:
    """What the executor supplies: where storage is when the spec names none, and the namespace."""

    storage_uri: str
    namespace: str = "default"
    storage_endpoint: str | None = None


@dataclass(frozen=True)
class StartRun:
    config: StageRunConfig


@dataclass(frozen=True)
class Wait:
    seconds: float
    reason: str


@dataclass(frozen=True)
class Finished:
    phase: str


@dataclass(frozen=True)
class Suspend:
    pass


Action = StartRun | Wait | Finished | Suspend


@dataclass(frozen=True)
class RunOutcome:
    """How a stage run ended, as an executor observed it."""

    exit_code: int
    checkpoint_uri: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str | None = None  # Completed, Error, OOMKilled, DeadlineExceeded, ...
    message: str | None = None


def initial_status(job: AlignmentJob) -> JobStatus:
    return JobStatus(stages=[StageStatus(name=s.name) for s in job.spec.stages])


def reconcile_stage_list(job: AlignmentJob, status: JobStatus) -> JobStatus:
    """Status with one entry per spec stage, in spec order, keeping what is known of each."""
    status = status.model_copy(deep=True)
    known = {s.name: s for s in status.stages}
    status.stages = [known.get(s.name) or StageStatus(name=s.name) for s in job.spec.stages]
    return status


def set_condition(status: JobStatus, type_: str, value: bool, reason: str, message: str, now: datetime,
                  generation: int | None = None) -> None:
    text = "True" if value else "False"
    existing = status.condition(type_)
    if existing and existing.status == text and existing.reason == reason and existing.message == message:
        return
    transition = existing.last_transition_time if existing and existing.status == text else rfc3339(now)
    condition = Condition(type=type_, status=text, reason=reason, message=message[:4096],
                          last_transition_time=transition, observed_generation=generation)
    status.conditions = [c for c in status.conditions if c.type != type_] + [condition]


def output_model(job: AlignmentJob, status: JobStatus) -> str | None:
    """The checkpoint of the last succeeded stage that produces a policy."""
    uri = None
    for stage, observed in zip(job.spec.stages, status.stages):
        if STAGE_TYPES[stage.type].produces == "policy" and observed.phase == "Succeeded":
            uri = observed.checkpoint_uri
    return uri


def split_rounds(stage) -> int | None:
    """Rounds of a stage whose rounds run as separate `rollout` and `train` runs (an ``rl`` stage
    with placement split); None for every other stage (one run does all of it)."""
    hp = getattr(stage, "hyperparameters", None)
    return hp.rounds if getattr(hp, "placement", None) == "split" else None


def split_position(stage, observed: StageStatus) -> tuple[int, str] | None:
    """(round, role) of the split stage's current or next run: round 1's rollout first. A round
    beyond the spec's (rounds lowered while suspended) becomes the last round's train run."""
    rounds = split_rounds(stage)
    if rounds is None:
        return None
    if observed.round is not None and observed.round > rounds:
        return rounds, "train"
    return observed.round or 1, observed.role or "rollout"


def next_split_run(stage, position: tuple[int, str]) -> tuple[int, str] | None:
    """The run after ``position``: rollout r -> train r -> rollout r+1; None after the last train."""
    round_, role = position
    if role == "rollout":
        return round_, "train"
    return (round_ + 1, "rollout") if round_ < split_rounds(stage) else None


def _resolve_ref(ref, status: JobStatus) -> str | None:
    if ref is None:
        return None
    if ref.from_stage is None:
        return ref.location
    observed = status.stage(ref.from_stage)
    return observed.checkpoint_uri if observed else None


def _resolve_datasets(datasets, status: JobStatus):
    """The stage's datasets with every ``fromStage`` replaced by that stage's committed dataset URI."""
    if datasets is None:
        return None
    resolved = {}
    for name in ("train", "eval"):
        source = getattr(datasets, name)
        if source is not None and source.from_stage is not None:
            observed = status.stage(source.from_stage)
            source = source.model_copy(update={"uri": observed.checkpoint_uri if observed else None, "from_stage": None})
        resolved[name] = source
    return datasets.model_copy(update=resolved)


def resolve_run(job: AlignmentJob, status: JobStatus, stage_name: str, attempt: int, defaults: Defaults,
                role: str = "all", round_: int | None = None) -> StageRunConfig:
    """The resolved configuration of one run of a stage."""
    stage = job.stage(stage_name)
    info = STAGE_TYPES[stage.type]
    storage = job.spec.storage
    namespace = job.metadata.namespace or defaults.namespace
    inputs = Inputs(**{name: _resolve_ref(getattr(stage, name, None), status) for name in info.inputs})
    algorithm = getattr(stage, "algorithm", None) or getattr(stage, "method", None) or info.default_algorithm
    observed = status.stage(stage.name)  # a stage rerun from its inputs has a key of its own
    return StageRunConfig(
        job=JobRef(name=job.name, namespace=namespace, uid=job.metadata.uid),
        stage=stage.name,
        type=stage.type,
        algorithm=algorithm,
        attempt=attempt,
        role=role,
        round=round_,
        base_model=job.spec.model,
        inputs=inputs,
        datasets=_resolve_datasets(stage.datasets, status),
        judge=getattr(stage, "judge", None),
        hyperparameters=stage.hyperparameters.model_dump(mode="json", by_alias=True),
        adapter=getattr(stage, "adapter", None),
        storage=StorageTarget(
            uri=storage.uri if storage else defaults.storage_uri,
            endpoint=storage.endpoint if storage else defaults.storage_endpoint,
            region=storage.region if storage else None,
            path_style=storage.path_style if storage else False,
        ),
        stage_key=stage_prefix(namespace, job.name, stage.name, observed.rerun if observed else 0),
        pipeline=[s.name for s in job.spec.stages],
        distributed=resolve_distributed(stage, role),
    )


def resolve_distributed(stage, role: str) -> DistributedRun:
    """The processes of a run and its ZeRO settings: one process per GPU (``resources.gpus``, at
    least one), DeepSpeed ZeRO-2 by default on more than one; a split rl stage's rollout run samples
    in one process."""
    settings = stage.distributed
    processes = 1 if role == "rollout" else max(1, stage.resources.gpus)
    nodes = 1 if role == "rollout" else stage.resources.nodes
    zero = settings.zero_stage if settings is not None else None
    if zero is None and (processes * nodes > 1 or (settings is not None and (settings.offload_optimizer or settings.offload_parameters))):
        zero = DEFAULT_ZERO_STAGE
    return DistributedRun(processes_per_node=processes, nodes=nodes, zero_stage=zero,
                          offload_optimizer=bool(settings and settings.offload_optimizer),
                          offload_parameters=bool(settings and settings.offload_parameters))


def run_gpus(stage, role: str) -> str:
    """``<nodes>x<GPUs per node>`` of a run of ``stage`` (status and ``kubectl get aj``)."""
    return f"{1 if role == 'rollout' else stage.resources.nodes}x{stage.resources.gpus}"


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _dump(model) -> dict | None:
    # defaults left out: a field added to the API later does not look like a change
    return model.model_dump(mode="json", by_alias=True, exclude_defaults=True) if model is not None else None


def stage_fingerprint(job: AlignmentJob, status: JobStatus, stage_name: str) -> dict[str, str]:
    """Hashes, by part, of everything the stage's result depends on: its type and algorithm, the base
    model, its resolved inputs (an earlier stage's checkpoint URI changes when that stage reruns),
    its datasets and its hyperparameters less ``NON_RESULT_HYPERPARAMETERS``. Storage, resources,
    retries and deadlines are left out: they change where and how a run goes, not its result."""
    stage = job.stage(stage_name)
    info = STAGE_TYPES[stage.type]
    hyperparameters = _dump(stage.hyperparameters) or {}
    for name in NON_RESULT_HYPERPARAMETERS:
        hyperparameters.pop(name, None)
    parts = {
        "method": {"type": stage.type, "algorithm": getattr(stage, "algorithm", None) or info.default_algorithm},
        "baseModel": _dump(job.spec.model),
        # the reference as written and the checkpoint it resolves to (fromStage of a stage not run yet is None)
        "inputs": {name: [_dump(getattr(stage, name, None)), _resolve_ref(getattr(stage, name, None), status)]
                   for name in info.inputs},
        "datasets": _dump(stage.datasets),
        "hyperparameters": hyperparameters,
    }
    return {name: _digest(value) for name, value in parts.items()}


def fingerprint_changes(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """The parts whose hashes differ. Parts only one side has are not compared (a status written by
    an older version holds other parts: unknown is not changed)."""
    return [part for part in current if part in recorded and recorded[part] != current[part]]


def config_changes(old: StageRunConfig, new: StageRunConfig, limit: int = 3) -> str:
    """``hyperparameters.learningRate 0.001 -> 0.01, ...``: what differs between two resolved
    configs of a stage, in the parts its fingerprint covers (for a rerun's line, where the old
    config is at hand)."""
    def flat(value, prefix: str) -> dict[str, object]:
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}.{key}").items()}
        return {prefix: value}

    def parts(config: StageRunConfig) -> dict[str, object]:
        hyperparameters = {k: v for k, v in config.hyperparameters.items() if k not in NON_RESULT_HYPERPARAMETERS}
        data = config.model_dump(mode="json", include={"type", "algorithm", "base_model", "inputs", "datasets"})
        return flat({**data, "hyperparameters": hyperparameters}, "")

    before, after = parts(old), parts(new)
    changed = [f"{key.lstrip('.')} {before.get(key)!r} -> {after.get(key)!r}"
               for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)]
    return ", ".join(changed[:limit]) + (f" and {len(changed) - limit} more" if len(changed) > limit else "")


@dataclass(frozen=True)
class Rerun:
    """A stage reset to run again from its inputs. ``changed``: its own spec changed (not a rerun
    asked for, nor one that follows an earlier stage's)."""

    stage: str
    reason: str
    changed: bool = False


def _has_run(observed: StageStatus) -> bool:
    """Something of the stage's current spec ran (a reset stage is Pending again)."""
    return observed.phase != "Pending"


def _reset(observed: StageStatus, reason: str) -> StageStatus:
    # attempts keep counting, so a rerun's Jobs and log files never take an earlier run's names
    return StageStatus(name=observed.name, attempts=observed.attempts, rerun=observed.rerun + 1,
                       reason="Rerun", message=reason)


def plan_reruns(job: AlignmentJob, status: JobStatus, rerun: Iterable[str] = (),
                now: datetime | None = None) -> tuple[JobStatus, list[Rerun]]:
    """The status brought in line with the spec, and the stages reset on the way (one line of why
    each). One entry per spec stage, in spec order (new stages Pending, removed ones gone); a stage
    that ran and whose fingerprint changed, or that is named in ``rerun``, and every stage after it
    that ran, is reset: no phase, checkpoint or metrics of the old spec stay, and its next run
    starts from its inputs under a new storage key while the old checkpoints stay where they are.
    A finished job with a stage left to run is Running again. Both executors call this before they
    plan a run: ``alignops run`` each time it starts, the operator on every reconcile."""
    now = now or utcnow()
    status = reconcile_stage_list(job, status)
    asked = set(rerun)
    reruns: list[Rerun] = []
    cause: str | None = None
    for index, stage in enumerate(job.spec.stages):
        observed = status.stages[index]
        if not _has_run(observed):
            continue
        if cause is not None:
            reruns.append(Rerun(stage.name, f"stage {stage.name} reruns: stage {cause} before it reruns"))
        elif stage.name in asked:
            reruns.append(Rerun(stage.name, f"stage {stage.name} reruns from its inputs: a rerun was asked for"))
        else:
            changed = fingerprint_changes(observed.spec_fingerprint, stage_fingerprint(job, status, stage.name))
            if not changed:
                continue
            reruns.append(Rerun(stage.name, f"stage {stage.name} reruns from its inputs: its {' and '.join(changed)} "
                                            "changed since it ran", changed=True))
        status.stages[index] = _reset(observed, reruns[-1].reason)
        cause = cause or stage.name
    _reopen(job, status, reruns, now)
    return status, reruns


def _reopen(job: AlignmentJob, status: JobStatus, reruns: list[Rerun], now: datetime) -> None:
    """A Succeeded job with a stage left to run (added or reset), or a Failed one whose failed
    stage was reset, runs again; the Progressing condition says why."""
    status.output_model = output_model(job, status)
    failed = status.condition("Failed")
    if status.phase == "Failed" and (any(s.phase == "Failed" for s in status.stages)
                                     or (failed is not None and failed.reason == "InvalidSpec")):
        return  # still failed (InvalidSpec: the operator revives a corrected spec itself)
    left = [s.name for s in status.stages if s.phase != "Succeeded"]
    if status.phase in ("Succeeded", "Failed") and left:
        status.phase, status.completion_time = "Running", None
        status.conditions = [c for c in status.conditions if c.type not in ("Succeeded", "Failed")]
        if not reruns:
            set_condition(status, "Progressing", True, "StagesAdded", f"stages to run: {', '.join(left)}", now,
                          job.metadata.generation)
    if reruns:
        set_condition(status, "Progressing", True, "SpecChanged", "; ".join(r.reason for r in reruns), now,
                      job.metadata.generation)


def retry_failed(status: JobStatus) -> JobStatus:
    """A Failed job made to try its failed stage again (from its last checkpoint): the stage's failure
    count starts over. Used by ``alignops run --retry-failed`` and the operator's retry annotation."""
    status = status.model_copy(deep=True)
    if status.phase != "Failed":
        return status
    for stage in status.stages:
        if stage.phase == "Failed":
            stage.phase, stage.failures, stage.completion_time, stage.retry_after = "Retrying", 0, None, None
    status.phase, status.completion_time = "Running", None
    status.conditions = [c for c in status.conditions if c.type != "Failed"]
    return status


def next_action(job: AlignmentJob, status: JobStatus, defaults: Defaults, now: datetime | None = None) -> Action:
    """What should happen next. Stages run in spec order; the first not yet succeeded is the one."""
    now = now or utcnow()
    if status.phase in ("Succeeded", "Failed"):
        return Finished(status.phase)
    if job.spec.suspend:
        return Suspend()
    for stage, observed in zip(job.spec.stages, status.stages):
        if observed.phase == "Succeeded":
            continue
        if observed.phase == "Failed":
            return Finished("Failed")
        if observed.retry_after and parse_time(observed.retry_after) > now:
            return Wait((parse_time(observed.retry_after) - now).total_seconds(), f"backoff before attempt {observed.attempts + 1}")
        round_, role = split_position(stage, observed) or (None, "all")
        return StartRun(resolve_run(job, status, stage.name, observed.attempts + 1, defaults, role, round_))
    return Finished("Succeeded")


def mark_started(job: AlignmentJob, status: JobStatus, stage_name: str, now: datetime | None = None,
                 job_name: str | None = None) -> JobStatus:
    now = now or utcnow()
    status = status.model_copy(deep=True)
    observed = status.stage(stage_name)
    observed.attempts += 1
    observed.phase = "Running"
    observed.retry_after = None
    observed.job_name = job_name
    observed.start_time = observed.start_time or rfc3339(now)
    stage = job.stage(stage_name)
    observed.spec_fingerprint = stage_fingerprint(job, status, stage_name)
    position = split_position(stage, observed)
    if position is not None:
        observed.round, observed.role = position
    observed.gpus = run_gpus(stage, observed.role or "all")
    status.phase = "Running"
    status.current_stage = stage_name
    status.current_gpus = observed.gpus
    status.start_time = status.start_time or rfc3339(now)
    status.observed_generation = job.metadata.generation
    set_condition(status, "Progressing", True, "StageRunning", f"stage {stage_name} attempt {observed.attempts} running", now, job.metadata.generation)
    set_condition(status, "Suspended", False, "Running", "", now, job.metadata.generation)
    return status


def record_outcome(job: AlignmentJob, status: JobStatus, stage_name: str, outcome: RunOutcome,
                   now: datetime | None = None) -> JobStatus:
    """The status after a run of ``stage_name`` ended. The retry rule lives here."""
    now = now or utcnow()
    generation = job.metadata.generation
    status = status.model_copy(deep=True)
    stage = job.stage(stage_name)
    observed = status.stage(stage_name)
    observed.metrics = {**observed.metrics, **outcome.metrics}
    observed.message = outcome.message
    position = split_position(stage, observed)
    following = next_split_run(stage, position) if position is not None and outcome.exit_code == EXIT_OK else None
    if following is not None:
        # one run of a split stage succeeded; the stage goes on with the next run
        observed.round, observed.role = following
        observed.reason = outcome.reason or "Completed"
        observed.checkpoint_uri = outcome.checkpoint_uri or observed.checkpoint_uri
        set_condition(status, "Progressing", True, "SplitRunSucceeded",
                      f"stage {stage_name} round {position[0]} {position[1]} run succeeded", now, generation)
        return status
    if outcome.exit_code == EXIT_OK:
        observed.phase = "Succeeded"
        observed.reason = outcome.reason or "Completed"
        observed.checkpoint_uri = outcome.checkpoint_uri
        observed.completion_time = rfc3339(now)
        status.output_model = output_model(job, status)
        if all(s.phase == "Succeeded" for s in status.stages):
            status.phase = "Succeeded"
            status.completion_time = rfc3339(now)
            set_condition(status, "Succeeded", True, "AllStagesSucceeded", f"{len(status.stages)} stages succeeded", now, generation)
            set_condition(status, "Progressing", False, "Finished", "", now, generation)
        else:
            set_condition(status, "Progressing", True, "StageSucceeded", f"stage {stage_name} succeeded", now, generation)
        return status
    if outcome.exit_code == EXIT_SIGTERM and outcome.reason in (None, "Completed", "Error", "Terminated", "Suspended"):
        # checkpointed on SIGTERM: resumed later, not a failed attempt
        observed.phase = "Suspended"
        observed.reason = "Suspended"
        status.phase = "Suspended"
        set_condition(status, "Suspended", True, "StageStopped", f"stage {stage_name} stopped after committing a checkpoint", now, generation)
        set_condition(status, "Progressing", False, "Suspended", "", now, generation)
        return status
    reason = outcome.reason or ("ConfigurationError" if outcome.exit_code == EXIT_CONFIG else "Error")
    observed.reason = reason
    observed.failures += 1
    detail = f"stage {stage_name} attempt {observed.attempts} failed: {reason} (exit code {outcome.exit_code})"
    if outcome.message:
        detail += f": {outcome.message}"
    permanent = outcome.exit_code == EXIT_CONFIG
    if permanent or observed.failures > stage.backoff_limit:
        observed.phase = "Failed"
        observed.completion_time = rfc3339(now)
        status.phase = "Failed"
        status.completion_time = rfc3339(now)
        final_reason = reason if permanent else "BackoffLimitExceeded"
        if not permanent:
            detail += f"; {observed.failures} failed attempts exceed backoffLimit {stage.backoff_limit}"
        set_condition(status, "Failed", True, final_reason, detail, now, generation)
        set_condition(status, "Progressing", False, final_reason, detail, now, generation)
    else:
        delay = retry_delay(observed.failures)
        observed.phase = "Retrying"
        observed.retry_after = rfc3339(now + timedelta(seconds=delay))
        set_condition(status, "Progressing", True, reason, f"{detail}; retrying in {delay} s from the last checkpoint", now, generation)
    return status
