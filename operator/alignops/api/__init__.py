"""The AlignmentJob API: pydantic models (the source of the CRD), validation and status."""

from alignops.api.common import Architecture, DatasetSource, Datasets, ModelSource, Resources, StageRef, StorageSpec
from alignops.api.job import AlignmentJob, AlignmentJobSpec, ObjectMeta
from alignops.api.stages import STAGE_TYPES, StageBase, StageType
from alignops.api.status import Condition, JobStatus, StageStatus
from alignops.api.validation import FieldError, InvalidManifest, UnreadableManifest, load_job, parse_job, read_manifest

__all__ = [
    "STAGE_TYPES",
    "AlignmentJob",
    "AlignmentJobSpec",
    "Architecture",
    "Condition",
    "DatasetSource",
    "Datasets",
    "FieldError",
    "InvalidManifest",
    "JobStatus",
    "ModelSource",
    "ObjectMeta",
    "Resources",
    "StageBase",
    "StageRef",
    "StageStatus",
    "StageType",
    "StorageSpec",
    "UnreadableManifest",
    "load_job",
    "parse_job",
    "read_manifest",
]
