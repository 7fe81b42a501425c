"""What a cluster refuses that ``alignops run`` accepts (pure).

* Local paths (``file://``) mean nothing to a pod on another machine: refused with InvalidSpec.
* A job without ``spec.storage`` uses the operator's default storage; none configured: InvalidSpec.
* ``ALIGNOPS_*`` and ``PET_*`` (torchrun's rendezvous) environment variables and the volumes the
  operator mounts itself are reserved.

A spec change to a started job is not refused: the planner reruns what it changed
(``alignops.planner.plan_reruns``).
"""

from __future__ import annotations

from alignops.api.base import camel_case
from alignops.api.job import AlignmentJob
from alignops.api.stages import STAGE_TYPES
from alignops.api.validation import FieldError
from alignops.operator.builders import RESERVED_PATHS, RESERVED_VOLUMES
from alignops.operator.settings import RESERVED_ENV_PREFIXES, OperatorSettings

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
