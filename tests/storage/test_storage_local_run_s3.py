"""`alignops run` with `spec.storage.uri: s3://...`: the same local run, checkpoints through S3."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import boto3
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.manifests import two_sft_job  # noqa: E402
from suite import run_cli  # noqa: E402

pytestmark = pytest.mark.slow


def test_local_run_commits_every_stage_to_s3_and_resumes_the_next_stage_from_it(tmp_path, s3_bucket, s3_env, moto_server):
    doc = two_sft_job()
    doc["spec"]["storage"] = {"uri": f"s3://{s3_bucket}/alignops", "pathStyle": True}
    for stage in doc["spec"]["stages"]:
        stage["hyperparameters"].update(maxSteps=6, checkpointEvery=3, keepCheckpoints=5)
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    workdir = tmp_path / "runs"

    out = run_cli("run", str(manifest), "--workdir", str(workdir), env=s3_env)
    assert out.returncode == 0, out.stdout + out.stderr
    status = json.loads((workdir / "demo" / "status.json").read_text())["status"]
    assert status["phase"] == "Succeeded"
    first, second = status["stages"]
    assert first["checkpointUri"] == f"s3://{s3_bucket}/alignops/default/demo/sft/checkpoint-6"
    assert second["checkpointUri"] == f"s3://{s3_bucket}/alignops/default/demo/sft2/checkpoint-6"
    # nothing was written to the local workdir's default storage
    assert not (workdir / "default").exists()

    s3 = boto3.client("s3", endpoint_url=moto_server)
    keys = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket) for o in page.get("Contents", [])}
    for stage in ("sft", "sft2"):
        for step in (3, 6):
            prefix = f"alignops/default/demo/{stage}/checkpoint-{step}/"
            assert {prefix + "manifest.json", prefix + "model.safetensors", prefix + "tokenizer.json"} <= keys
    manifest_doc = json.loads(s3.get_object(Bucket=s3_bucket, Key="alignops/default/demo/sft/checkpoint-6/manifest.json")["Body"].read())
    assert manifest_doc["step"] == 6 and any(f["path"] == "model.safetensors" for f in manifest_doc["files"])
