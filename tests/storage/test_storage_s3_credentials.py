"""Missing or wrong credentials: a clear error naming what is missing or wrong, and the secret
value nowhere in any output (logs at DEBUG, stdout, stderr, the exception and its chain)."""

from __future__ import annotations

import logging
import re
import traceback
import uuid

import boto3
import pytest

from alignops.storage import StorageError, commit_checkpoint
from ckpt_files import store_for, write_checkpoint
from s3_fixtures import apply_env, isolated_aws_env, running_moto_server

SECRET = f"s3cr3t-{uuid.uuid4().hex}"  # what must never be printed
log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """A second moto server that checks signatures after its first three requests, which create
    a user with an access key, and a bucket. Yields (endpoint, access key id, bucket)."""
    with running_moto_server(tmp_path_factory.mktemp("moto-auth") / "log", {"INITIAL_NO_AUTH_ACTION_COUNT": "3"}) as url:
        with pytest.MonkeyPatch.context() as patch:
            apply_env(patch, isolated_aws_env(url))
            iam = boto3.client("iam")
            iam.create_user(UserName="trainer")
            key_id = iam.create_access_key(UserName="trainer")["AccessKey"]["AccessKeyId"]
            boto3.client("s3").create_bucket(Bucket="guarded")
        yield url, key_id, "guarded"


def commit_and_report(bucket: str, tmp_path) -> StorageError:
    """Commits, expecting failure; the failure is printed and logged like an operator would."""
    write_checkpoint(tmp_path / "local", seed=5, big_size=6 * 1024 * 1024)
    with pytest.raises(StorageError) as failure:
        commit_checkpoint(store_for(bucket), tmp_path / "local", "team/job/sft", step=1)
    print("".join(traceback.format_exception(failure.value)))
    log.exception("commit failed", exc_info=failure.value)
    return failure.value


def assert_secret_nowhere(error: BaseException, caplog, capfd) -> None:
    out, err = capfd.readouterr()
    chain: list[str] = []
    while error is not None and len(chain) < 20:
        chain.append(f"{error!r} {error} {getattr(error, 'response', '')}")
        error = error.__cause__ or error.__context__
    for where, text in {"logs": caplog.text, "stdout": out, "stderr": err, "exception": "\n".join(chain)}.items():
        assert SECRET not in text, f"the secret value appears in {where}"
    assert "commit failed" in caplog.text and "Traceback" in out  # the capture did capture


@pytest.mark.parametrize(
    ("key_id", "secret", "expected"),
    [
        (None, None, r"no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \(spec.storage.secretName"),
        ("AKIAEXAMPLEKEYID0000", None, r"AWS_SECRET_ACCESS_KEY is missing"),
        (None, SECRET, r"AWS_ACCESS_KEY_ID is missing \(AWS_SECRET_ACCESS_KEY is set\).*IAM role"),
    ],
    ids=["no-keys", "no-secret", "no-key-id"],
)
def test_missing_credentials(s3_bucket, monkeypatch, caplog, capfd, tmp_path, key_id, secret, expected):
    caplog.set_level(logging.DEBUG)
    for name, value in (("AWS_ACCESS_KEY_ID", key_id), ("AWS_SECRET_ACCESS_KEY", secret)):
        monkeypatch.delenv(name) if value is None else monkeypatch.setenv(name, value)
    error = commit_and_report(s3_bucket, tmp_path)
    assert error.__class__ is StorageError
    assert f"s3://{s3_bucket}/runs" in str(error)
    assert re.search(expected, str(error)), str(error)
    assert_secret_nowhere(error, caplog, capfd)


@pytest.mark.parametrize(
    ("known_key", "expected"),
    [(False, "InvalidAccessKeyId.*check AWS_ACCESS_KEY_ID"), (True, "SignatureDoesNotMatch.*check AWS_SECRET_ACCESS_KEY")],
    ids=["unknown-key-id", "wrong-secret"],
)
def test_wrong_credentials(auth_server, monkeypatch, caplog, capfd, tmp_path, known_key, expected):
    endpoint, key_id, bucket = auth_server
    apply_env(monkeypatch, isolated_aws_env(endpoint, key_id if known_key else "AKIAUNKNOWNKEYID0000", SECRET))
    caplog.set_level(logging.DEBUG)
    error = commit_and_report(bucket, tmp_path)
    assert re.search(f"s3://{bucket}/runs/team/job/sft/checkpoint-1.*{expected}", str(error)), str(error)
    assert_secret_nowhere(error, caplog, capfd)
