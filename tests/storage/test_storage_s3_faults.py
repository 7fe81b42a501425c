"""Faults against a real moto server, which stays up: a writer SIGKILLed mid-checkpoint, and
connections cut mid-part by a proxy. Readers keep the previous commit, a retry commits, and no
multipart upload is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import boto3
import pytest

from alignops.storage import MANIFEST_NAME, StorageError, commit_checkpoint, fetch_checkpoint, latest_checkpoint
from alignops.storage.s3 import MiB, S3Tuning
from ckpt_files import SMALL_PARTS, store_for, write_checkpoint
from tcp_proxy import CutPolicy, CuttingProxy

STAGE = "team/job-2/grpo"
HERE = Path(__file__).parent


def uploads_left(bucket: str) -> list[dict]:
    return boto3.client("s3").list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def committed_step(bucket: str, endpoint: str | None = None) -> int | None:
    ref = latest_checkpoint(store_for(bucket, endpoint), STAGE)
    return ref.step if ref else None


@pytest.fixture
def proxy(moto_server):
    parsed = urlparse(moto_server)
    proxy = CuttingProxy(parsed.hostname, parsed.port)
    yield proxy
    proxy.close()


def test_sigkill_mid_upload_leaves_the_previous_commit_and_a_retry_cleans_up(s3_bucket, s3_env, tmp_path):
    first = write_checkpoint(tmp_path / "v1", seed=10)
    commit_checkpoint(store_for(s3_bucket), tmp_path / "v1", STAGE, step=1)
    second = tmp_path / "v2"
    second.mkdir()
    second_files = write_checkpoint(second, seed=11, big_size=6 * MiB)
    (second / "optimizer.pt").write_bytes(os.urandom(6 * MiB))  # two multipart files: 5 in all

    # the writer uploads the largest files first: model.safetensors, then optimizer.pt's first part
    writer = subprocess.Popen(
        [sys.executable, str(HERE / "kill_uploader.py"), s3_bucket, str(second), STAGE, "2", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**s3_env, "PYTHONPATH": str(HERE)}, cwd=HERE,
    )  # fmt: skip
    try:
        line = writer.stdout.readline().decode()
        assert line.startswith("READY"), line + writer.stderr.read().decode()
        assert len(uploads_left(s3_bucket)) == 1  # a part is up, the upload is open
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait(timeout=10)

    store = store_for(s3_bucket)
    written = store.list_keys(f"{STAGE}/checkpoint-2")
    assert written and f"{STAGE}/checkpoint-2/{MANIFEST_NAME}" not in written  # k of n files, no commit
    assert committed_step(s3_bucket) == 1
    fetched = fetch_checkpoint(store, latest_checkpoint(store, STAGE).key, tmp_path / "cache")
    assert (fetched / "config.json").read_bytes() == first["config.json"]

    commit_checkpoint(store, second, STAGE, step=2)  # the retry
    assert committed_step(s3_bucket) == 2
    assert uploads_left(s3_bucket) == []
    fetched = fetch_checkpoint(store, f"{STAGE}/checkpoint-2", tmp_path / "cache")
    assert (fetched / "model.safetensors").read_bytes() == second_files["model.safetensors"]


def test_connections_cut_mid_part_are_retried(s3_bucket, s3_env, proxy, tmp_path):
    files = write_checkpoint(tmp_path / "v1", seed=20)
    proxy.policy = CutPolicy(cut_up_after=int(2.5 * MiB), cuts_left=3)  # budget below a 5 MiB part
    through_proxy = store_for(s3_bucket, proxy.url)
    commit_checkpoint(through_proxy, tmp_path / "v1", STAGE, step=1)
    assert proxy.policy.cuts == 3

    # a body cut mid-stream is ours to retry (botocore only retries until the headers): fewer cuts
    # than SMALL_PARTS.part_attempts, as they may all hit the same part
    proxy.policy = CutPolicy(cut_down_after=int(2.5 * MiB), cuts_left=2)
    fetched = fetch_checkpoint(store_for(s3_bucket, proxy.url), f"{STAGE}/checkpoint-1", tmp_path / "cache")
    assert proxy.policy.cuts == 2
    assert (fetched / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert uploads_left(s3_bucket) == []


def test_a_link_that_keeps_failing_fails_cleanly_and_a_retry_commits(s3_bucket, s3_env, proxy, tmp_path):
    first = write_checkpoint(tmp_path / "v1", seed=30)
    commit_checkpoint(store_for(s3_bucket), tmp_path / "v1", STAGE, step=1)
    write_checkpoint(tmp_path / "v2", seed=31)

    proxy.policy = CutPolicy(cut_up_after=int(2.5 * MiB), cuts_left=float("inf"))
    impatient = S3Tuning(**{**SMALL_PARTS.__dict__, "max_attempts": 2, "part_attempts": 2})
    with pytest.raises(StorageError, match=f"s3://{s3_bucket}/runs/{STAGE}/checkpoint-2.*kept failing") as failure:
        commit_checkpoint(store_for(s3_bucket, proxy.url, impatient), tmp_path / "v2", STAGE, step=2)
    assert "AWS_ENDPOINT_URL" in str(failure.value)

    assert committed_step(s3_bucket) == 1  # readers still get the previous commit
    fetched = fetch_checkpoint(store_for(s3_bucket), f"{STAGE}/checkpoint-1", tmp_path / "cache")
    assert (fetched / "config.json").read_bytes() == first["config.json"]

    proxy.policy = CutPolicy()  # the link heals
    commit_checkpoint(store_for(s3_bucket, proxy.url), tmp_path / "v2", STAGE, step=2)
    assert committed_step(s3_bucket) == 2
    assert uploads_left(s3_bucket) == []
