"""Which failures are permanent (exit 78 at once) and which are transient (exit 1, retried): the run
contract's error classes, the S3 answers sorted into them, and stage runs against a real moto
server whose input path or bucket does not exist."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from alignops.contract import EXIT_CONFIG, EXIT_RETRY, PermanentError, TransientError
from alignops.storage import StorageOptions
from alignops.storage.base import ObjectNotFound, StorageError
from alignops.storage.s3 import S3Store
from alignops.workloads.context import ConfigError, exit_code_for
from stages.conftest import stage_run  # noqa: F401  (the fixture)


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@pytest.mark.parametrize("code, status, expected", [
    ("NoSuchKey", 404, EXIT_CONFIG),        # the path does not exist
    ("NoSuchBucket", 404, EXIT_CONFIG),
    ("AccessDenied", 403, EXIT_CONFIG),     # a retry with the same credentials is refused the same way
    ("", 403, EXIT_CONFIG),                 # a HEAD's 403 has no body
    ("InvalidAccessKeyId", 403, EXIT_CONFIG),
    ("SlowDown", 503, EXIT_RETRY),          # throttling that outlasted botocore's retries
    ("InternalError", 500, EXIT_RETRY),
    ("ServiceUnavailable", 503, EXIT_RETRY),
    ("RequestTimeout", 400, EXIT_RETRY),
    ("ExpiredToken", 400, EXIT_RETRY),      # its provider refreshes it
    ("TooManyRequests", 429, EXIT_RETRY),
])
def test_s3_answers_sort_into_permanent_and_transient(code, status, expected):
    store = S3Store(bucket="data", prefix="", options=StorageOptions())
    error = store._error(_client_error(code, status), "download of", "train.jsonl")
    assert isinstance(error, StorageError) and "s3://data/train.jsonl" in str(error)
    assert exit_code_for(error) == expected


def test_the_contract_classes_and_the_rest():
    store = S3Store(bucket="data", prefix="", options=StorageOptions())
    assert exit_code_for(store._error(EndpointConnectionError(endpoint_url="http://x"), "download of", "k")) == EXIT_RETRY
    assert exit_code_for(store._error(NoCredentialsError(), "download of", "k")) == EXIT_CONFIG
    assert exit_code_for(ObjectNotFound("s3://data/k does not exist")) == EXIT_CONFIG
    assert exit_code_for(ConfigError("bad")) == exit_code_for(PermanentError("bad")) == EXIT_CONFIG
    assert exit_code_for(TransientError("network")) == EXIT_RETRY
    assert exit_code_for(UnicodeDecodeError("utf-8", b"caf\xe9", 3, 4, "invalid continuation byte")) == EXIT_CONFIG
    assert exit_code_for(RuntimeError("CUDA error")) == EXIT_RETRY
    assert exit_code_for(OSError(28, "No space left on device")) == EXIT_RETRY  # a new pod may have room


@pytest.mark.slow
def test_stage_runs_against_s3_paths_that_do_not_exist_fail_at_once(stage_run, tmp_path, s3_bucket):
    sft = {"name": "sft", "type": "sft", "hyperparameters": {"maxSteps": 1, "evalSize": 2}}

    code, result = stage_run({**sft, "datasets": {"train": {"uri": f"s3://{s3_bucket}/missing.jsonl"}}}, tmp_path / "a")
    assert code == EXIT_CONFIG and f"dataset s3://{s3_bucket}/missing.jsonl not found" in result["message"]

    generated = {"train": {"generator": "arithmetic", "size": 8}}
    code, result = stage_run({**sft, "datasets": generated, "policy": {"uri": f"s3://{s3_bucket}/none/checkpoint-3"}}, tmp_path / "b")
    assert code == EXIT_CONFIG and f"s3://{s3_bucket}/none/checkpoint-3 is not a committed checkpoint" in result["message"]

    code, result = stage_run({**sft, "datasets": {"train": {"uri": f"s3://no-such-bucket-{s3_bucket}/train.jsonl"}}}, tmp_path / "c")
    assert code == EXIT_CONFIG, result
    assert f"s3://no-such-bucket-{s3_bucket}/train.jsonl" in result["message"] and "NoSuchBucket" in result["message"]


@pytest.mark.slow
def test_a_corrupt_checkpoint_in_s3_fails_at_once_after_a_second_download(stage_run, tmp_path, s3_bucket):
    import boto3

    from alignops.storage import commit_checkpoint, open_store

    files = tmp_path / "ckpt"
    files.mkdir()
    (files / "model.safetensors").write_bytes(b"\1" * 4096)
    (files / "config.json").write_text("{}")
    ref = commit_checkpoint(open_store(f"s3://{s3_bucket}"), files, "models/base", 3)
    boto3.client("s3").put_object(Bucket=s3_bucket, Key=f"{ref.key}/model.safetensors", Body=b"\1" * 4095 + b"\0")
    stage = {"name": "sft", "type": "sft", "policy": {"uri": ref.uri}, "hyperparameters": {"maxSteps": 1, "evalSize": 2},
             "datasets": {"train": {"generator": "arithmetic", "size": 8}}}
    code, result = stage_run(stage, tmp_path / "store")
    assert code == EXIT_CONFIG
    assert f"corrupt checkpoint: {ref.uri}/model.safetensors: downloaded 4096 bytes" in result["message"]
    assert "commit it again or point at another checkpoint" in result["message"]
