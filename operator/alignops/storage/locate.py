"""An object named by a full URI: the store holding it and its key there."""

from __future__ import annotations

from alignops.storage.base import ObjectStore, StorageOptions, split_uri
from alignops.storage.open import open_store


def locate(uri: str, options: StorageOptions | None = None) -> tuple[ObjectStore, str]:
    """``(store, key)`` of ``uri``: the store is rooted at the bucket (``s3://``) or at ``/``
    (``file://``), so one function serves datasets, checkpoints and any other object."""
    scheme, bucket, path = split_uri(uri)
    if scheme == "file":
        return open_store("file:///", options), path.lstrip("/")
    return open_store(f"s3://{bucket}", options), path.strip("/")
