"""What a cluster refuses that ``alignops run`` accepts, and which spec changes a started job
refuses (pure).

* Local paths (``file://``) mean nothing to a pod on another machine: refused with InvalidSpec.
* A job without ``spec.storage`` uses the operator's default storage; none configured: InvalidSpec.
* ``ALIGNOPS_*`` and ``PET_*`` (torchrun's rendezvous) environment variables and the volumes the
  operator mounts itself are reserved.
* Once a stage has started, ``spec.model``, ``spec.storage`` and the stage's own training fields are
  fixed (its checkpoints depend on them); its resources, backoffLimit and deadlines may change and
  apply to its next attempt. Stages not yet started may be added, removed or edited freely, but not
  inserted before a started stage. A refused change leaves the job as it was, with the condition
  ``Progressing=False, reason SpecChangeRefused`` naming the fields, until the change is reverted.
"""

from __future__ import annotations

import hashlib
import json

from alignops.api.base import camel_case
from alignops.api.job import AlignmentJob
from alignops.api.stages import STAGE_TYPES
from alignops.api.status import JobStatus
from alignops.api.validation import FieldError
from alignops.operator.builders import RESERVED_PATHS, RESERVED_VOLUMES
from alignops.operator.settings import RESERVED_ENV_PREFIXES, OperatorSettings

# stage fields that may change after the stage started: they apply to its next attempt
MUTABLE_STAGE_FIELDS = ("resources", "backoffLimit", "activeDeadlineSeconds", "progressDeadlineSeconds")
LOCAL = "file://"


def _local(uri: str | None) -> bool:
    return bool(uri) and uri.startswith(LOCAL)


def cluster_errors(job: AlignmentJob, settings: OperatorSettings) -> list[FieldError]:
    """Errors of a valid manifest that can never run in a cluster."""
    errors: list[FieldError] = []
    local = "local paths (file://) do not exist in a cluster's pods; use an s3:// URI"
    storage = job.spec.storage
    if storage is not None and _local(storage.uri):
        errors.append(FieldError("spec.storage.uri", local))
    if storage is None:
        if not settings.default_storage_uri:
            errors.append(FieldError("spec.storage", "required: the operator has no default storage "
                                                     "(set spec.storage.uri, or ALIGNOPS_DEFAULT_STORAGE_URI on the operator)"))
        elif _local(settings.default_storage_uri):
            errors.append(FieldError("spec.storage", f"required: the operator's default storage {settings.default_storage_uri} "
                                                     "is a local path; set spec.storage.uri to an s3:// URI"))
    if _local(job.spec.model.uri):
        errors.append(FieldError("spec.model.uri", local))
    for index, stage in enumerate(job.spec.stages):
        path = f"spec.stages[{index}]"
        if stage.datasets is not None:
            for split in ("train", "eval"):
                source = getattr(stage.datasets, split)
                if source is not None and _local(source.uri):
                    errors.append(FieldError(f"{path}.datasets.{split}.uri", local))
        for field_name in STAGE_TYPES[stage.type].inputs:
            ref = getattr(stage, field_name, None)
            if ref is not None and _local(ref.uri):
                errors.append(FieldError(f"{path}.{camel_case(field_name)}.uri", local))
        resources = stage.resources
        for i, env in enumerate(resources.env or []):
            if env.name.startswith(RESERVED_ENV_PREFIXES):
                errors.append(FieldError(f"{path}.resources.env[{i}].name",
                                         f"{env.name}: {' and '.join(p + '*' for p in RESERVED_ENV_PREFIXES)} variables are set by the operator"))
        for i, volume in enumerate(resources.volumes or []):
            if volume.name in RESERVED_VOLUMES:
                errors.append(FieldError(f"{path}.resources.volumes[{i}].name",
                                         f"{volume.name!r} is reserved ({', '.join(RESERVED_VOLUMES)}); choose another name"))
            mount = volume.mount_path.rstrip("/") or "/"
            for reserved in RESERVED_PATHS:
                if mount == reserved or reserved.startswith(mount + "/") or mount.startswith(reserved + "/"):
                    errors.append(FieldError(f"{path}.resources.volumes[{i}].mountPath",
                                             f"{volume.mount_path} overlaps {reserved}, which the operator mounts"))
                    break
    return errors


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def spec_fingerprint(job: AlignmentJob, stage_name: str) -> dict[str, str]:
    """Hashes of what a started stage's checkpoints depend on. Fields left at their defaults are
    left out, so a new optional API field does not look like a change after an upgrade."""
    stage = job.stage(stage_name)
    own = stage.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    for name in MUTABLE_STAGE_FIELDS:
        own.pop(name, None)
    storage = job.spec.storage.model_dump(mode="json", by_alias=True, exclude_defaults=True) if job.spec.storage else None
    return {
        "model": _digest(job.spec.model.model_dump(mode="json", by_alias=True, exclude_defaults=True)),
        "storage": _digest(storage),
        "stage": _digest(own),
    }


def refused_changes(job: AlignmentJob, status: JobStatus) -> list[str]:
    """What the spec changed of started stages (empty: the spec may be applied)."""
    problems: list[str] = []
    names = [s.name for s in job.spec.stages]
    started = [s for s in status.stages if s.attempts > 0]
    for position, observed in enumerate(started):
        if observed.name not in names:
            problems.append(f"stage {observed.name!r} was removed after it started")
            continue
        index = names.index(observed.name)
        if index != position:
            problems.append(f"spec.stages[{index}] ({observed.name}): stages were inserted, removed or reordered before it after it started")
            continue
        if not observed.spec_fingerprint:
            continue
        now = spec_fingerprint(job, observed.name)
        for key, path in (("model", "spec.model"), ("storage", "spec.storage"), ("stage", f"spec.stages[{index}] ({observed.name})")):
            before = observed.spec_fingerprint.get(key)
            if before is not None and before != now[key]:
                text = f"{path} changed after stage {observed.name} started"
                if key == "stage":
                    text += " (only resources, backoffLimit, activeDeadlineSeconds and progressDeadlineSeconds may change)"
                if text not in problems and not any(p.startswith(path + " changed") for p in problems):
                    problems.append(text)
    return problems
