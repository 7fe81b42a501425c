"""``open_store``: the store for a URI. The one module that knows every backend, so that neither
backend imports the other (base.py holds the interface and the local backend, s3.py the S3 one)."""

from __future__ import annotations

from pathlib import Path

from alignops.storage.base import LocalStore, ObjectStore, StorageOptions, split_uri


def open_store(uri: str, options: StorageOptions | None = None) -> ObjectStore:
    """The store whose root is ``uri`` (``file:///path`` or ``s3://bucket/prefix``)."""
    scheme, bucket, path = split_uri(uri)
    if scheme == "file":
        return LocalStore(Path(path))
    from alignops.storage.s3 import S3Store  # boto3 is only imported when S3 is used

    return S3Store(bucket=bucket, prefix=path, options=options or StorageOptions())
