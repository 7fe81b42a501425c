"""The commit protocol on the local backend: files first, manifest last; nothing uncommitted is read."""

from __future__ import annotations

import json

import pytest

from alignops.storage import (
    ChecksumMismatch, StorageError, apply_retention, commit_checkpoint, fetch_checkpoint, latest_checkpoint,
    list_checkpoints, open_store,
)
from alignops.storage.layout import checkpoint_key, parse_checkpoint_key


@pytest.fixture
def store(tmp_path):
    return open_store(f"file://{tmp_path}/store")


@pytest.fixture
def checkpoint(tmp_path):
    directory = tmp_path / "ckpt"
    (directory / "sub").mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(b"\x00" * 1000)
    (directory / "sub" / "config.json").write_text("{}")
    return directory


def test_commit_writes_files_and_a_manifest_with_checksums(store, checkpoint):
    ref = commit_checkpoint(store, checkpoint, "ns/job/sft", 7)
    assert ref.uri == store.uri_for("ns/job/sft/checkpoint-7")
    manifest = json.loads(store.get_bytes("ns/job/sft/checkpoint-7/manifest.json"))
    assert manifest["step"] == 7 and manifest["round"] is None and manifest["createdAt"]
    entries = {f["path"]: f for f in manifest["files"]}
    assert set(entries) == {"model.safetensors", "sub/config.json"}
    assert entries["model.safetensors"]["size"] == 1000
    # sha256 of 1000 zero bytes
    assert entries["model.safetensors"]["sha256"] == "541b3e9daa09b20bf85fa273e5cbd3e80185aa4ec298e765db87742b70138a53"


def test_a_directory_without_manifest_is_never_a_checkpoint(store, checkpoint):
    commit_checkpoint(store, checkpoint, "ns/job/sft", 5)
    # an interrupted upload of step 10: files but no manifest
    store.put_file(checkpoint / "model.safetensors", "ns/job/sft/checkpoint-10/model.safetensors")
    assert [r.step for r in list_checkpoints(store, "ns/job/sft")] == [5]
    assert latest_checkpoint(store, "ns/job/sft").step == 5
    with pytest.raises(StorageError, match="not a committed checkpoint"):
        fetch_checkpoint(store, "ns/job/sft/checkpoint-10", checkpoint.parent / "cache")
    # the next attempt overwrites the leftover and commits
    commit_checkpoint(store, checkpoint, "ns/job/sft", 10)
    assert latest_checkpoint(store, "ns/job/sft").step == 10


def test_corruption_after_commit_is_detected_on_read(store, checkpoint, tmp_path):
    ref = commit_checkpoint(store, checkpoint, "ns/job/sft", 3)
    assert fetch_checkpoint(store, ref.key, tmp_path / "cache").is_dir()
    path = store.local_path(ref.key) / "model.safetensors"
    path.write_bytes(b"\x01" + path.read_bytes()[1:])  # same size, different content
    with pytest.raises(ChecksumMismatch, match="model.safetensors"):
        fetch_checkpoint(store, ref.key, tmp_path / "cache")


def test_rounds_order_before_steps_and_retention_keeps_the_newest(store, checkpoint):
    for round_, step in [(0, 4), (0, 8), (1, 12), (2, 16)]:
        commit_checkpoint(store, checkpoint, "ns/job/rl", step, round_)
    assert [(r.round, r.step) for r in list_checkpoints(store, "ns/job/rl")] == [(0, 4), (0, 8), (1, 12), (2, 16)]
    deleted = apply_retention(store, "ns/job/rl", keep_last=2)
    assert deleted == ["ns/job/rl/round-0/checkpoint-4", "ns/job/rl/round-0/checkpoint-8"]
    assert [r.step for r in list_checkpoints(store, "ns/job/rl")] == [12, 16]
    assert apply_retention(store, "ns/job/rl", keep_last=0) == ["ns/job/rl/round-1/checkpoint-12"]  # the newest always stays


def test_key_layout():
    assert checkpoint_key("ns/j/s", 5) == "ns/j/s/checkpoint-5"
    assert checkpoint_key("ns/j/s", 5, 2) == "ns/j/s/round-2/checkpoint-5"
    assert parse_checkpoint_key("/round-3/checkpoint-9") == (3, 9)
    assert parse_checkpoint_key("checkpoint-9") == (None, 9)
    assert parse_checkpoint_key("checkpoint-9/extra") is None


def test_unknown_scheme_names_the_fix():
    with pytest.raises(StorageError, match="use s3://bucket/prefix or file:///path"):
        open_store("gs://bucket/x")
