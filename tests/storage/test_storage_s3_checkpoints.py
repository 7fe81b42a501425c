"""The checkpoint protocol over S3, against a real moto server."""

from __future__ import annotations

import boto3
import pytest

from alignops.storage import (
    MANIFEST_NAME,
    ChecksumMismatch,
    StorageOptions,
    apply_retention,
    commit_checkpoint,
    fetch_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    open_store,
)
from alignops.storage.base import ObjectNotFound
from ckpt_files import BIG_FILE, store_for, write_checkpoint

STAGE = "team/job-1/sft"


def assert_same_files(fetched, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert (fetched / name).read_bytes() == data, name


def test_round_trip_with_a_multipart_file(s3_bucket, tmp_path):
    files = write_checkpoint(tmp_path / "local", seed=1)
    store = store_for(s3_bucket)
    ref = commit_checkpoint(store, tmp_path / "local", STAGE, step=100)

    assert ref.uri == f"s3://{s3_bucket}/runs/{STAGE}/checkpoint-100"
    assert [r.key for r in list_checkpoints(store, STAGE)] == [ref.key]
    head = boto3.client("s3").head_object(Bucket=s3_bucket, Key=f"runs/{ref.key}/{BIG_FILE}")
    assert head["ETag"].strip('"').endswith("-3")  # 12 MiB in 5 MiB parts: it went up in parallel parts

    fetched = fetch_checkpoint(store, ref.key, tmp_path / "cache")
    assert_same_files(fetched, files)
    assert (fetched / MANIFEST_NAME).is_file()
    assert not list((tmp_path / "cache").rglob("*.partial"))


def test_open_store_uses_the_standard_endpoint_variable(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", boto3.client("s3").meta.endpoint_url)  # wins over AWS_ENDPOINT_URL
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    store = open_store(f"s3://{s3_bucket}/some/prefix", StorageOptions(path_style=True))
    files = write_checkpoint(tmp_path / "local", seed=2, big_size=20 * 1024 * 1024)  # default 16 MiB threshold
    ref = commit_checkpoint(store, tmp_path / "local", STAGE, step=1, round=3)
    assert latest_checkpoint(store, STAGE).key == f"{STAGE}/round-3/checkpoint-1"
    assert_same_files(fetch_checkpoint(store, ref.key, tmp_path / "cache"), files)
    with pytest.raises(ObjectNotFound, match=f"s3://{s3_bucket}/some/prefix/nothing/here"):
        store.get_bytes("nothing/here")


def test_an_object_corrupted_after_commit_fails_the_fetch(s3_bucket, tmp_path):
    files = write_checkpoint(tmp_path / "local", seed=3)
    store = store_for(s3_bucket)
    ref = commit_checkpoint(store, tmp_path / "local", STAGE, step=7)
    corrupted = bytearray(files[BIG_FILE])
    corrupted[len(corrupted) // 2] ^= 0xFF  # same size, one byte flipped
    boto3.client("s3").put_object(Bucket=s3_bucket, Key=f"runs/{ref.key}/{BIG_FILE}", Body=bytes(corrupted))

    with pytest.raises(ChecksumMismatch, match=f"{ref.uri}/{BIG_FILE}"):
        fetch_checkpoint(store, ref.key, tmp_path / "cache")


def test_retention_keeps_the_newest_and_clears_older_leftovers(s3_bucket, tmp_path):
    store = store_for(s3_bucket)
    local = tmp_path / "local"
    (local).mkdir()
    (local / "model.safetensors").write_bytes(b"weights")
    for step in (1, 2, 3, 4):
        commit_checkpoint(store, local, STAGE, step=step)
    store.put_bytes(f"{STAGE}/checkpoint-0/model.safetensors", b"half written")  # never committed
    boto3.client("s3").create_multipart_upload(Bucket=s3_bucket, Key=f"runs/{STAGE}/checkpoint-0/big")

    deleted = apply_retention(store, STAGE, keep_last=2)

    assert sorted(deleted) == [f"{STAGE}/checkpoint-{n}" for n in (0, 1, 2)]
    assert [ref.step for ref in list_checkpoints(store, STAGE)] == [3, 4]
    assert not [key for key in store.list_keys(STAGE) if "checkpoint-0/" in key or "checkpoint-1/" in key]
    assert "Uploads" not in boto3.client("s3").list_multipart_uploads(Bucket=s3_bucket)
    # keep_last below one still keeps the newest, and a protected one stays
    assert apply_retention(store, STAGE, keep_last=0, protect={f"{STAGE}/checkpoint-3"}) == []
    assert apply_retention(store, STAGE, keep_last=0) == [f"{STAGE}/checkpoint-3"]
    assert [ref.step for ref in list_checkpoints(store, STAGE)] == [4]
