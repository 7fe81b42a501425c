"""Storage: one interface over a local directory (``file://``) or S3 (``s3://``), one key layout,
and the checkpoint commit protocol (files first, ``manifest.json`` last).

Layout: ``<prefix>/<namespace>/<job>/<stage>/[round-<n>/]checkpoint-<step>/``.
"""

from alignops.storage.base import ObjectStore, StorageError, StorageOptions, split_uri
from alignops.storage.checkpoints import (
    CheckpointRef,
    ChecksumMismatch,
    commit_checkpoint,
    fetch_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    apply_retention,
)
from alignops.storage.layout import (
    checkpoint_key,
    job_prefix,
    stage_prefix,
    summary_key,
)
from alignops.storage.manifest import MANIFEST_NAME, Manifest, ManifestFile
from alignops.storage.open import open_store

__all__ = [
    "MANIFEST_NAME",
    "CheckpointRef",
    "ChecksumMismatch",
    "Manifest",
    "ManifestFile",
    "ObjectStore",
    "StorageError",
    "StorageOptions",
    "apply_retention",
    "checkpoint_key",
    "commit_checkpoint",
    "fetch_checkpoint",
    "job_prefix",
    "latest_checkpoint",
    "list_checkpoints",
    "open_store",
    "split_uri",
    "stage_prefix",
    "summary_key",
]
