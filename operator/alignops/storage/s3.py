"""The S3 backend of ObjectStore (AWS S3, MinIO, Ceph RGW, moto), on boto3.

Credentials come only from boto3's standard chain: environment variables (in pods, injected from the
Secret named by ``spec.storage.secretName``) or an IAM role (IRSA / Workload Identity, no keys at
all). Nothing here reads, logs or repeats a secret value.

Throughput: large files go up as parallel multipart uploads and come down as parallel ranged GETs;
many files move in parallel. The sha256 of every file is computed while it streams (parts are
hashed in file order as they are read, or as contiguous downloaded parts complete). Memory is
bounded per store, whatever the number and size of files: at most ``part_workers + 1`` parts of
large files, plus one small file (under the multipart threshold) per file worker.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError as BotoConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)

from alignops.storage.base import ObjectNotFound, ObjectStore, StorageError, StorageOptions, Transferred, join_key

log = logging.getLogger(__name__)
T = TypeVar("T")

MiB = 1 << 20
S3_MIN_PART = 5 * MiB  # S3's rule for every part but the last
S3_MAX_PARTS = 10_000

NO_CREDENTIALS = (
    "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
    "(spec.storage.secretName in a cluster) or use an IAM role (IRSA / Workload Identity)"
)
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
# 4xx answers a retry can change: a token refreshed by its provider, a timeout, throttling
_RETRYABLE_4XX = {"ExpiredToken", "RequestTimeout", "RequestTimeoutException", "SlowDown", "Throttling",
                  "ThrottlingException", "RequestThrottled", "BadDigest", "IncompleteBody", "PreconditionFailed"}
_TRANSIENT_CODES = {
    "RequestTimeout", "RequestTimeoutException", "SlowDown", "Throttling", "ThrottlingException",
    "RequestThrottled", "InternalError", "ServiceUnavailable", "IncompleteBody", "BadDigest",
    "XAmzContentSHA256Mismatch", "500", "502", "503", "504",
}  # fmt: skip


@dataclass(frozen=True)
class S3Tuning:
    """Transfer settings; the defaults suit S3 and S3-compatible servers on a fast link."""

    multipart_threshold: int = 16 * MiB  # files from this size up go as parallel parts
    part_size: int = 8 * MiB  # upload part size (grown for files over 10,000 parts)
    download_part_size: int = 16 * MiB  # ranged GET size; the first GET also learns the size
    part_workers: int = 8  # concurrent part transfers per store (also bounds buffered parts)
    file_workers: int = 8  # concurrent files in put_files/get_files
    max_attempts: int = 5  # botocore's attempts per request (throttling, 5xx, connection errors)
    part_attempts: int = 4  # our attempts around a request, for what botocore does not retry (a cut body)
    retry_mode: str = "standard"  # or "adaptive": client-side rate limiting after throttling
    backoff_base: float = 0.25  # seconds; our backoff is base * 2**attempt with full jitter
    backoff_max: float = 10.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    # x-amz-checksum-* on the wire (the server verifies each request); turn off for S3-compatible
    # servers that reject them.
    wire_checksums: bool = True
    # sha256 of each request body for SigV4 over plain http (botocore's default there): a second
    # hash of every byte on the client; the wire checksum and our file sha256 already cover integrity.
    sign_payload: bool = False

    def __post_init__(self) -> None:
        if self.part_size < S3_MIN_PART:
            raise ValueError(f"S3Tuning.part_size must be at least {S3_MIN_PART} bytes (S3's minimum part size)")
        if self.multipart_threshold < self.part_size:
            raise ValueError("S3Tuning.multipart_threshold must be at least part_size")
        if min(self.part_workers, self.file_workers, self.max_attempts, self.part_attempts) < 1:
            raise ValueError("S3Tuning workers and attempts must be at least 1")


class _Transient(Exception):
    """A part came back short or cut; worth another attempt."""


# connection refused/reset/timeouts, a body cut mid-stream (ResponseStreamingError), a short body;
# not OSError at large: a full local disk is no reason to retry
_CONNECTION_ERRORS = (BotoConnectionError, HTTPClientError, IncompleteReadError, _Transient, ConnectionError, TimeoutError)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return error.get("Code") in _TRANSIENT_CODES or status in (500, 502, 503, 504)
    return isinstance(exc, _CONNECTION_ERRORS)


def _error_code(exc: ClientError) -> tuple[str, int | None]:
    return exc.response.get("Error", {}).get("Code", ""), exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _read_exact(fd: int, size: int, offset: int, local: str) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            raise StorageError(f"{local} shrank while being uploaded: do not write a checkpoint while committing it")
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _preallocate(fd: int, size: int) -> None:
    """Reserves the blocks up front (a full disk fails now, not after gigabytes), or at least sets the size."""
    try:
        os.posix_fallocate(fd, 0, size)
    except (AttributeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise
        os.ftruncate(fd, size)  # a filesystem without fallocate: a sparse file does too


def _total_size(response: dict[str, Any]) -> int:
    """The object's size from a (possibly ranged) GET: ``Content-Range: bytes a-b/TOTAL``."""
    content_range = response.get("ContentRange")
    if content_range and "/" in content_range:
        return int(content_range.rsplit("/", 1)[1])
    return int(response["ContentLength"])


def _multipart_etag(part_etags: list[str]) -> str:
    """What S3 (and moto) name a completed multipart object: md5 of the parts' md5s, ``-N``."""
    md5s = b"".join(bytes.fromhex(etag.strip('"')) for etag in part_etags)
    return f'"{hashlib.md5(md5s).hexdigest()}-{len(part_etags)}"'


class S3Store(ObjectStore):
    """``s3://bucket/prefix``; keys are relative to the prefix."""

    def __init__(
        self, bucket: str, prefix: str = "", options: StorageOptions | None = None, tuning: S3Tuning | None = None
    ):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.options = options or StorageOptions()
        self.tuning = tuning or S3Tuning()
        self.root_uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._lock = threading.Lock()
        self._client_obj: Any = None
        self._part_pool: ThreadPoolExecutor | None = None
        # Buffers of parts in memory (read or downloaded, not yet sent or hashed), across all files.
        self._slots = threading.Semaphore(self.tuning.part_workers + 1)

    # ---- connection ---------------------------------------------------------------------------

    @property
    def _client(self) -> Any:
        """Created on first use, so a store can be built (and name URIs) without credentials."""
        if self._client_obj is None:
            with self._lock:
                if self._client_obj is None:
                    self._client_obj = self._make_client()
        return self._client_obj

    def _make_client(self) -> Any:
        session = boto3.session.Session(region_name=self.options.region)
        try:
            credentials = session.get_credentials()
        except PartialCredentialsError as exc:
            missing = exc.kwargs.get("cred_var", "a credential variable")
            raise StorageError(
                f"{self.root_uri}: incomplete S3 credentials in the environment, {missing} is missing: set both "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (spec.storage.secretName in a cluster) or neither to use an IAM role",
                permanent=True,
            ) from None
        except BotoCoreError as exc:  # not its text: a credential process's output could hold a secret
            provider = getattr(exc, "kwargs", {}).get("provider", "the standard chain")
            raise StorageError(
                f"{self.root_uri}: could not load S3 credentials from {provider} ({type(exc).__name__}): check "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (spec.storage.secretName) or the IAM role setup"
            ) from None
        if credentials is None:
            raise StorageError(f"{self.root_uri}: {self._no_credentials_message()}", permanent=True)
        tuning = self.tuning
        s3_config: dict[str, Any] = {"payload_signing_enabled": tuning.sign_payload}
        if self.options.path_style:
            s3_config["addressing_style"] = "path"
        checksums = "when_supported" if tuning.wire_checksums else "when_required"
        config = Config(
            retries={"mode": tuning.retry_mode, "max_attempts": tuning.max_attempts},
            s3=s3_config,
            max_pool_connections=tuning.part_workers + tuning.file_workers + 2,
            connect_timeout=tuning.connect_timeout,
            read_timeout=tuning.read_timeout,
            tcp_keepalive=True,
            request_checksum_calculation=checksums,
            response_checksum_validation=checksums,
        )
        # endpoint None: boto3 itself honours AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL
        return session.client("s3", endpoint_url=self.options.endpoint or None, config=config)

    @staticmethod
    def _no_credentials_message() -> str:
        has_id, has_secret = bool(os.environ.get("AWS_ACCESS_KEY_ID")), bool(os.environ.get("AWS_SECRET_ACCESS_KEY"))
        if has_secret and not has_id:
            return f"AWS_ACCESS_KEY_ID is missing (AWS_SECRET_ACCESS_KEY is set); {NO_CREDENTIALS}"
        return NO_CREDENTIALS

    @property
    def endpoint(self) -> str:
        client = self._client_obj
        return client.meta.endpoint_url if client is not None else (self.options.endpoint or "the default S3 endpoint")

    def _parts(self) -> ThreadPoolExecutor:
        if self._part_pool is None:
            with self._lock:
                if self._part_pool is None:
                    self._part_pool = ThreadPoolExecutor(self.tuning.part_workers, thread_name_prefix="s3-part")
        return self._part_pool

    def close(self) -> None:
        if self._part_pool is not None:
            self._part_pool.shutdown(wait=True)
            self._part_pool = None

    def __enter__(self) -> S3Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- errors and retries -------------------------------------------------------------------

    def _full(self, key: str) -> str:
        return join_key(self.prefix, key)

    def _raise(self, exc: BaseException, action: str, key: str) -> NoReturn:
        if isinstance(exc, StorageError):
            raise exc
        raise self._error(exc, action, key) from exc

    def _error(self, exc: BaseException, action: str, key: str) -> StorageError:
        """A StorageError naming the URI and the fix; never carries a credential value."""
        uri = self.uri_for(key)
        if isinstance(exc, NoCredentialsError):
            return StorageError(f"{action} {uri}: {self._no_credentials_message()}", permanent=True)
        if isinstance(exc, ClientError):
            return self._client_error(exc, action, uri)
        if isinstance(exc, _CONNECTION_ERRORS):
            return StorageError(
                f"{action} {uri}: the connection to {self.endpoint} kept failing after retries ({type(exc).__name__}): "
                "check spec.storage.endpoint / AWS_ENDPOINT_URL and the network, then retry"
            )
        return StorageError(f"{action} {uri} failed: {type(exc).__name__}: {exc}")

    def _client_error(self, exc: ClientError, action: str, uri: str) -> StorageError:
        code, status = _error_code(exc)
        if code in _NOT_FOUND_CODES:
            return ObjectNotFound(f"{uri} does not exist")
        fixes = {
            "NoSuchBucket": f"bucket {self.bucket!r} does not exist at {self.endpoint}: create it or fix spec.storage.uri",
            "InvalidAccessKeyId": "the S3 endpoint does not know this access key id: check AWS_ACCESS_KEY_ID "
            "(the Secret named by spec.storage.secretName), or remove the keys to use an IAM role",
            "SignatureDoesNotMatch": "the secret access key does not match the access key id: check AWS_SECRET_ACCESS_KEY "
            "(the Secret named by spec.storage.secretName)",
            "ExpiredToken": "the session token has expired: refresh AWS_SESSION_TOKEN or use an IAM role",
            "InvalidToken": "the session token is invalid: check AWS_SESSION_TOKEN or use an IAM role",
            "AccessDenied": "access denied: grant the credentials s3:ListBucket, s3:GetObject, s3:PutObject, "
            "s3:DeleteObject and s3:AbortMultipartUpload on this bucket and prefix",
            "PreconditionFailed": "the object changed while it was being read: retry",
            "SlowDown": "the endpoint kept throttling after retries: retry later or lower S3Tuning part_workers/file_workers",
        }
        if status == 403 and code not in fixes:  # a HEAD's 403 has no body, so no code
            code = "403 Forbidden"
            fixes[code] = (
                "wrong credentials or no permission: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(spec.storage.secretName) or the IAM role, and that it may read and write this bucket and prefix"
            )
        if code in _TRANSIENT_CODES and code not in fixes:
            code = "SlowDown"
        detail = fixes.get(code) or exc.response.get("Error", {}).get("Message", "")
        # a 4xx (no bucket, access denied, bad request) stays as it is; 5xx and throttling were retried
        permanent = status is not None and 400 <= status < 500 and status not in (408, 429) and code not in _RETRYABLE_4XX
        return StorageError(f"{action} {uri}: {code or status} from {self.endpoint}: {detail}", permanent=permanent)

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.tuning.backoff_max, self.tuning.backoff_base * 2**attempt))

    def _retry(self, action: str, key: str, call: Callable[[], T]) -> T:
        """``call`` with our attempts on top of botocore's, for errors botocore does not retry
        (a body cut mid-stream) or has given up on; wraps the final error."""
        for attempt in range(1, self.tuning.part_attempts + 1):
            try:
                return call()
            except Exception as exc:
                if isinstance(exc, StorageError) or attempt == self.tuning.part_attempts or not _is_transient(exc):
                    self._raise(exc, action, key)
                log.info("%s %s: %s, retrying (attempt %d)", action, self.uri_for(key), type(exc).__name__, attempt + 1)
                time.sleep(self._backoff(attempt))
        raise AssertionError("unreachable")

    # ---- small objects ------------------------------------------------------------------------

    def _put_object(self, key: str, data: bytes, digest: bytes) -> None:
        extra = {"ChecksumSHA256": base64.b64encode(digest).decode()} if self.tuning.wire_checksums else {}
        self._client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data, **extra)

    def put_bytes(self, key: str, data: bytes) -> None:
        digest = hashlib.sha256(data).digest()
        self._retry("upload to", key, lambda: self._put_object(key, data, digest))

    def get_bytes(self, key: str) -> bytes:
        def call() -> bytes:
            return self._client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read()

        return self._retry("download of", key, call)

    def exists(self, key: str) -> bool:
        try:
            self._retry("lookup of", key, lambda: self._client.head_object(Bucket=self.bucket, Key=self._full(key)))
        except ObjectNotFound:
            return False
        return True

    # ---- upload -------------------------------------------------------------------------------

    def put_file(self, local: Path, key: str) -> Transferred:
        with open(local, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < self.tuning.multipart_threshold:
                data = handle.read()
                if len(data) != size:
                    raise StorageError(f"{local} changed while being uploaded to {self.uri_for(key)}")
                digest = hashlib.sha256(data)
                self._retry(f"upload of {local} to", key, lambda: self._put_object(key, data, digest.digest()))
                return Transferred(key=key, size=size, sha256=digest.hexdigest())
            sha256 = self._put_multipart(handle.fileno(), size, key, str(local))
        return Transferred(key=key, size=size, sha256=sha256)

    def _part_size_for(self, size: int) -> int:
        smallest = -(-size // S3_MAX_PARTS)
        return max(self.tuning.part_size, -(-smallest // MiB) * MiB)

    def _put_multipart(self, fd: int, size: int, key: str, local: str) -> str:
        action = f"upload of {local} to"
        extra = {"ChecksumAlgorithm": "CRC32"} if self.tuning.wire_checksums else {}
        created = self._retry(
            action, key, lambda: self._client.create_multipart_upload(Bucket=self.bucket, Key=self._full(key), **extra)
        )
        upload_id = created["UploadId"]
        try:
            sha256, parts = self._upload_parts(fd, size, key, upload_id, local)
            self._complete(key, upload_id, parts, action)
        except BaseException:
            self._abort_quietly(key, upload_id)
            raise
        return sha256

    def _upload_parts(self, fd: int, size: int, key: str, upload_id: str, local: str) -> tuple[str, list[dict]]:
        """Reads parts in file order (hashing each as it is read) and hands them to the part pool;
        a slot is taken before each read and given back when the part is sent, so memory stays
        bounded however fast the disk is."""
        part_size = self._part_size_for(size)
        action = f"upload of {local} to"
        digest = hashlib.sha256()
        futures: list[Future[dict]] = []
        failed = threading.Event()

        def send(number: int, data: bytes) -> dict:
            try:
                return self._retry(action, key, lambda: self._upload_part(key, upload_id, number, data))
            except BaseException:
                failed.set()
                raise
            finally:
                self._slots.release()

        try:
            for number, offset in enumerate(range(0, size, part_size), start=1):
                self._slots.acquire()
                if failed.is_set():
                    self._slots.release()
                    break
                try:
                    data = _read_exact(fd, min(part_size, size - offset), offset, local)
                except BaseException:
                    self._slots.release()
                    raise
                digest.update(data)
                futures.append(self._parts().submit(send, number, data))
                del data
            parts = [future.result() for future in futures]  # raises the first failure
        except BaseException:
            failed.set()
            for future in futures:
                if future.cancel():  # a cancelled part never runs, so give its slot back
                    self._slots.release()
            for future in futures:
                if not future.cancelled():
                    future.exception()  # let parts in flight end before the caller aborts the upload
            raise
        return digest.hexdigest(), parts

    def _upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> dict:
        extra = {"ChecksumAlgorithm": "CRC32"} if self.tuning.wire_checksums else {}
        response = self._client.upload_part(
            Bucket=self.bucket, Key=self._full(key), UploadId=upload_id, PartNumber=number, Body=data, **extra
        )
        part = {"PartNumber": number, "ETag": response["ETag"]}
        if "ChecksumCRC32" in response:
            part["ChecksumCRC32"] = response["ChecksumCRC32"]
        return part

    def _complete(self, key: str, upload_id: str, parts: list[dict], action: str) -> None:
        full = self._full(key)

        def call() -> None:
            try:
                self._client.complete_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
            except ClientError as exc:
                # a retried complete whose first attempt succeeded (its response lost) finds no upload
                if _error_code(exc)[0] != "NoSuchUpload" or not self._is_completed(full, parts):
                    raise

        self._retry(action, key, call)

    def _is_completed(self, full_key: str, parts: list[dict]) -> bool:
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=full_key)
        except ClientError:
            return False
        return head.get("ETag") == _multipart_etag([part["ETag"] for part in parts])

    def _abort_quietly(self, key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=self._full(key), UploadId=upload_id)
        except Exception as exc:  # the next commit's abort_incomplete_uploads cleans it up
            log.warning("could not abort the multipart upload of %s (%s)", self.uri_for(key), type(exc).__name__)

    def abort_incomplete_uploads(self, prefix: str) -> int:
        full = self._full(prefix)
        pages = self._client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=full)
        aborted = 0
        try:
            for page in pages:
                for upload in page.get("Uploads", []):
                    if full and upload["Key"] != full and not upload["Key"].startswith(full + "/"):
                        continue  # checkpoint-1 must not match checkpoint-10
                    try:
                        self._client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        aborted += 1
                    except ClientError as exc:
                        if _error_code(exc)[0] != "NoSuchUpload":
                            raise
        except Exception as exc:
            self._raise(exc, "aborting incomplete uploads under", prefix)
        return aborted

    # ---- download -----------------------------------------------------------------------------

    def _get_range(self, key: str, start: int, end: int, etag: str | None) -> bytes:
        """Bytes ``start..end`` (inclusive) of the object as it was when the download began."""

        def call() -> bytes:
            extra = {"IfMatch": etag} if etag else {}
            response = self._client.get_object(
                Bucket=self.bucket, Key=self._full(key), Range=f"bytes={start}-{end}", **extra
            )
            data = response["Body"].read()
            if len(data) != end - start + 1:
                raise _Transient(f"short ranged read: {len(data)} of {end - start + 1} bytes")
            return data

        return self._retry("download of", key, call)

    def _open_first(self, key: str, part_size: int) -> tuple[int, str | None, bytes]:
        """The first part, the object's size and its ETag, in one GET (no HEAD round trip)."""

        def call() -> tuple[int, str | None, bytes]:
            try:
                response = self._client.get_object(
                    Bucket=self.bucket, Key=self._full(key), Range=f"bytes=0-{part_size - 1}"
                )
            except ClientError as exc:
                if _error_code(exc)[0] != "InvalidRange":
                    raise
                response = self._client.get_object(Bucket=self.bucket, Key=self._full(key))  # an empty object
            total = _total_size(response)
            expected = min(total, part_size) if response.get("ContentRange") else total  # range ignored: all of it
            data = response["Body"].read()
            if len(data) != expected:
                raise _Transient(f"short read: {len(data)} of {expected} bytes")
            return total, response.get("ETag"), data

        return self._retry("download of", key, call)

    def get_file(self, key: str, local: Path) -> Transferred:
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(local.name + ".partial")
        part_size = self.tuning.download_part_size
        self._slots.acquire()
        try:
            total, etag, first = self._open_first(key, part_size)
        finally:
            self._slots.release()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if total > len(first):
                _preallocate(fd, total)  # the parts land at their offsets in any order
            digest = hashlib.sha256(first)
            _write_all(fd, first, 0)
            del first
            self._get_rest(key, fd, total, part_size, etag, digest)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        # no fsync: a fetched copy is verified against its manifest on every fetch, never trusted later
        os.close(fd)
        os.replace(tmp, local)
        return Transferred(key=key, size=total, sha256=digest.hexdigest())

    def _get_rest(self, key: str, fd: int, total: int, part_size: int, etag: str | None, digest: Any) -> None:
        """Ranged GETs in parallel, each written at its offset; hashed in file order as the oldest
        outstanding part completes. A part holds a slot until it is hashed."""
        pending: deque[Future[bytes]] = deque()

        def fetch(start: int) -> bytes:
            data = self._get_range(key, start, min(start + part_size, total) - 1, etag)
            _write_all(fd, data, start)
            return data

        def hash_oldest() -> None:
            future = pending.popleft()
            try:
                digest.update(future.result())
            finally:
                self._slots.release()

        try:
            for start in range(part_size, total, part_size):
                # never block for a slot while holding finished parts only we can hash (deadlock)
                while not self._slots.acquire(blocking=False):
                    if pending:
                        hash_oldest()
                    else:
                        self._slots.acquire()
                        break
                pending.append(self._parts().submit(fetch, start))
            while pending:
                hash_oldest()
        except BaseException:
            for future in pending:
                future.cancel()
            for future in pending:
                if not future.cancelled():
                    try:
                        future.result()  # the file is closed after this returns: let writers finish
                    except Exception:
                        pass
                self._slots.release()
            raise

    # ---- many files ---------------------------------------------------------------------------

    def _run_all(self, jobs: list[Callable[[], Transferred]], weights: list[int]) -> list[Transferred]:
        """Runs jobs on a pool of file workers (heaviest first, so the long ones start early);
        results in input order; the first failure cancels what has not started and is raised."""
        if not jobs:
            return []
        results: list[Transferred | None] = [None] * len(jobs)
        order = sorted(range(len(jobs)), key=lambda index: -weights[index])
        pool = ThreadPoolExecutor(min(self.tuning.file_workers, len(jobs)), thread_name_prefix="s3-file")
        try:
            futures = {pool.submit(jobs[index]): index for index in order}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return [result for result in results if result is not None]

    def put_files(self, pairs: Iterable[tuple[Path, str]]) -> list[Transferred]:
        pairs = list(pairs)
        jobs = [lambda local=local, key=key: self.put_file(local, key) for local, key in pairs]
        return self._run_all(jobs, [os.path.getsize(local) for local, _ in pairs])

    def get_files(self, pairs: Iterable[tuple[str, Path]]) -> list[Transferred]:
        pairs = list(pairs)
        jobs = [lambda key=key, local=local: self.get_file(key, local) for key, local in pairs]
        return self._run_all(jobs, [0] * len(pairs))

    # ---- listing and deleting -----------------------------------------------------------------

    def _list_full(self, prefix: str) -> list[str]:
        full = self._full(prefix)
        list_prefix = full + "/" if full else ""
        keys: list[str] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=list_prefix)
            for page in pages:
                keys.extend(item["Key"] for item in page.get("Contents", []) if not item["Key"].endswith("/"))
        except Exception as exc:
            self._raise(exc, "listing", prefix)
        return keys

    def list_keys(self, prefix: str) -> list[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        return sorted(key[strip:] for key in self._list_full(prefix))

    def delete_prefix(self, prefix: str) -> None:
        """Deletes the object ``prefix`` itself and everything under ``prefix/``, 1000 per request."""
        keys = self._list_full(prefix)
        full = self._full(prefix)
        if full and full not in keys:
            keys.insert(0, full)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]

            def call(batch: list[dict] = batch) -> None:
                response = self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                errors = response.get("Errors", [])
                if errors:
                    first = errors[0]
                    raise StorageError(
                        f"deleting under {self.uri_for(prefix)}: {len(errors)} objects not deleted, "
                        f"first {first.get('Key')}: {first.get('Code')} {first.get('Message', '')}"
                    )

            self._retry("deleting under", prefix, call)
