"""Commits a checkpoint to S3 and stops, alive, in the middle of it: after ``K`` whole files and the
first part of a multipart upload it prints READY and waits to be SIGKILLed by the test.

Usage: python kill_uploader.py BUCKET LOCAL_DIR STAGE STEP K (AWS_* from the environment)
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from alignops.storage import commit_checkpoint
from alignops.storage.base import StorageOptions, Transferred
from alignops.storage.s3 import S3Store, S3Tuning

from ckpt_files import SMALL_PARTS


class StallingStore(S3Store):
    """Our own store, instrumented in this process only (boto3 is not touched)."""

    def __init__(self, *args, files_before_stall: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.files_before_stall = files_before_stall
        self.files_done = 0
        self.lock = threading.Lock()

    def put_file(self, local: Path, key: str) -> Transferred:
        moved = super().put_file(local, key)
        with self.lock:
            self.files_done += 1
        return moved

    def _upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> dict:
        part = super()._upload_part(key, upload_id, number, data)
        if self.files_done >= self.files_before_stall:
            print(f"READY {key} {self.files_done}", flush=True)
            time.sleep(600)
        return part


def main() -> None:
    bucket, local, stage, step, files_before = sys.argv[1:6]
    tuning = S3Tuning(**{**SMALL_PARTS.__dict__, "file_workers": 1, "part_workers": 1})
    store = StallingStore(bucket, "runs", StorageOptions(path_style=True), tuning, files_before_stall=int(files_before))
    commit_checkpoint(store, Path(local), stage, step=int(step))
    print("COMMITTED", flush=True)  # the test fails if it gets here


if __name__ == "__main__":
    main()
