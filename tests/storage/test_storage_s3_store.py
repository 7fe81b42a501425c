"""S3Store itself against a real moto server: key prefixes, bounded memory, checksums."""

from __future__ import annotations

import hashlib
import threading

import boto3

from alignops.storage.s3 import MiB, S3Tuning
from ckpt_files import SMALL_PARTS, store_for


def test_prefixes_do_not_leak_into_neighbours(s3_bucket):
    """checkpoint-1 must not list, delete or abort anything of checkpoint-10."""
    store = store_for(s3_bucket)
    for key in ("s/checkpoint-1/a", "s/checkpoint-10/a", "s/checkpoint-1"):
        store.put_bytes(key, b"x")
    client = boto3.client("s3")
    upload = client.create_multipart_upload(Bucket=s3_bucket, Key="runs/s/checkpoint-10/big")
    assert store.list_keys("s/checkpoint-1") == ["s/checkpoint-1/a"]
    assert store.abort_incomplete_uploads("s/checkpoint-1") == 0
    store.delete_prefix("s/checkpoint-1")
    assert store.list_keys("s") == ["s/checkpoint-10/a"]
    assert store.abort_incomplete_uploads("s/checkpoint-10") == 1
    assert "Uploads" not in client.list_multipart_uploads(Bucket=s3_bucket)
    assert upload["UploadId"]


class CountingSlots:
    """Stands in for the store's part-buffer semaphore and records how many were ever held at once."""

    def __init__(self, slots: int):
        self._semaphore = threading.Semaphore(slots)
        self._lock = threading.Lock()
        self.held = self.peak = 0

    def acquire(self, blocking: bool = True) -> bool:
        if not self._semaphore.acquire(blocking):
            return False
        with self._lock:
            self.held += 1
            self.peak = max(self.peak, self.held)
        return True

    def release(self) -> None:
        with self._lock:
            self.held -= 1
        self._semaphore.release()


def test_parts_in_memory_stay_bounded_across_files(s3_bucket, tmp_path):
    """Three multipart files at once, up and down, with one part worker: never more than two
    parts in memory, and every checksum still right (computed in order, in one pass)."""
    tuning = S3Tuning(**{**SMALL_PARTS.__dict__, "part_workers": 1, "file_workers": 3})
    store = store_for(s3_bucket, tuning=tuning)
    store._slots = slots = CountingSlots(tuning.part_workers + 1)
    blobs = {f"f{i}.bin": bytes([i]) * (3 * MiB) + hashlib.sha256(bytes([i])).digest() * (300 * 1024) for i in range(3)}
    for name, data in blobs.items():
        (tmp_path / name).write_bytes(data)

    sent = store.put_files((tmp_path / name, f"b/{name}") for name in blobs)
    got = store.get_files((f"b/{name}", tmp_path / "down" / name) for name in blobs)

    # three files compete for the two slots: the bound is reached (so the store really takes its
    # part buffers from these slots) and never passed, and every slot is given back
    assert slots.peak == 2 and slots.held == 0
    for name, up, down in zip(blobs, sent, got):
        expected = hashlib.sha256(blobs[name]).hexdigest()
        assert (up.sha256, down.sha256, up.size) == (expected, expected, len(blobs[name]))
        assert (tmp_path / "down" / name).read_bytes() == blobs[name]
