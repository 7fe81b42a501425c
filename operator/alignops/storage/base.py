"""The object-store interface and its local-directory backend (``open_store`` in open.py picks a
backend for a URI)."""

from __future__ import annotations

import hashlib
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

_CHUNK = 1 << 20
SCHEMES = ("file", "s3")


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI and what to fix. ``permanent``:
    trying again cannot help (a missing object or bucket, credentials refused), as opposed to a
    network failure, a 5xx or throttling that outlasted the retries."""

    permanent = False

    def __init__(self, message: str, permanent: bool | None = None):
        super().__init__(message)
        if permanent is not None:
            self.permanent = permanent


class ObjectNotFound(StorageError, FileNotFoundError):
    permanent = True


@dataclass(frozen=True)
class StorageOptions:
    """Connection settings that are not secret (credentials come from the environment only)."""

    endpoint: str | None = None
    region: str | None = None
    path_style: bool = False


@dataclass(frozen=True)
class Transferred:
    """What a put or get moved: the checksum is computed while streaming, never in a second pass."""

    key: str
    size: int
    sha256: str


def split_uri(uri: str) -> tuple[str, str, str]:
    """``(scheme, bucket_or_empty, path)``; raises StorageError on an unknown scheme."""
    parsed = urlparse(uri)
    if parsed.scheme not in SCHEMES:
        raise StorageError(f"storage URI {uri!r}: unknown scheme {parsed.scheme!r}; use s3://bucket/prefix or file:///path")
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"storage URI {uri!r}: a file URI needs an absolute path, e.g. file:///data/alignops")
        return "file", "", parsed.path
    if not parsed.netloc:
        raise StorageError(f"storage URI {uri!r}: no bucket; use s3://bucket/prefix")
    return "s3", parsed.netloc, parsed.path.strip("/")


def join_key(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


class ObjectStore(ABC):
    """Keys are ``/``-separated paths relative to the store's root URI."""

    root_uri: str

    def uri_for(self, key: str) -> str:
        return f"{self.root_uri.rstrip('/')}/{key.strip('/')}" if key else self.root_uri

    def key_for(self, uri: str) -> str:
        root = self.root_uri.rstrip("/")
        if uri.rstrip("/") == root:
            return ""
        if not uri.startswith(root + "/"):
            raise StorageError(f"{uri!r} is not under this store's root {root!r}")
        return uri[len(root) + 1 :].strip("/")

    @abstractmethod
    def put_file(self, local: Path, key: str) -> Transferred: ...

    @abstractmethod
    def get_file(self, key: str, local: Path) -> Transferred: ...

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Raises ObjectNotFound when the key does not exist."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix/`` (recursive), sorted."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None: ...

    def exists(self, key: str) -> bool:
        try:
            self.get_bytes(key)
        except ObjectNotFound:
            return False
        return True

    def put_files(self, pairs: Iterable[tuple[Path, str]]) -> list[Transferred]:
        """Upload many files; backends override this to transfer in parallel."""
        return [self.put_file(local, key) for local, key in pairs]

    def get_files(self, pairs: Iterable[tuple[str, Path]]) -> list[Transferred]:
        return [self.get_file(key, local) for key, local in pairs]

    def local_path(self, key: str) -> Path | None:
        """Where the object lies on this machine's disk, if it does (local backend only)."""
        return None

    def abort_incomplete_uploads(self, prefix: str) -> int:
        """Abort multipart uploads left under ``prefix`` by a killed writer; returns how many."""
        return 0


def _copy_with_digest(src: Path, dst: Path) -> Transferred:
    digest = hashlib.sha256()
    size = 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    with open(src, "rb") as reader, open(tmp, "wb") as writer:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            writer.write(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    os.replace(tmp, dst)
    return Transferred(key=str(dst), size=size, sha256=digest.hexdigest())


class LocalStore(ObjectStore):
    """A directory tree; writes go through a temporary file and an atomic rename."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root_uri = f"file://{self.root.resolve()}"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if path != self.root.resolve() and self.root.resolve() not in path.parents:
            raise StorageError(f"key {key!r} escapes the storage root {self.root_uri}")
        return path

    def put_file(self, local: Path, key: str) -> Transferred:
        moved = _copy_with_digest(Path(local), self._path(key))
        return Transferred(key=key, size=moved.size, sha256=moved.sha256)

    def get_file(self, key: str, local: Path) -> Transferred:
        source = self._path(key)
        if not source.is_file():
            raise ObjectNotFound(f"{self.uri_for(key)} does not exist")
        moved = _copy_with_digest(source, Path(local))
        return Transferred(key=key, size=moved.size, sha256=moved.sha256)

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        with open(tmp, "wb") as writer:
            writer.write(data)
            writer.flush()
            os.fsync(writer.fileno())
        os.replace(tmp, path)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(f"{self.uri_for(key)} does not exist")
        return path.read_bytes()

    def list_keys(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root.resolve()).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.endswith(".partial")
        )

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    def local_path(self, key: str) -> Path | None:
        return self._path(key)
