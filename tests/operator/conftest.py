"""Fixtures of the operator tests: operator settings and the quickstart manifest."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
for extra in (REPO, REPO / "tests" / "storage", Path(__file__).resolve().parent):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from alignops.operator.settings import OperatorSettings  # noqa: E402


@pytest.fixture
def settings() -> OperatorSettings:
    return OperatorSettings(default_storage_uri="s3://alignops-ci/root", default_storage_endpoint="http://minio.storage:9000",
                            default_storage_secret="s3-credentials", stage_service_account="alignops-stage")


@pytest.fixture
def quickstart() -> dict:
    document = yaml.safe_load((REPO / "pipelines" / "quickstart.yaml").read_text())
    document["metadata"].update(namespace="ml-team", uid="uid-quickstart", generation=1, resourceVersion="10",
                                creationTimestamp="2026-01-01T00:00:00Z")
    return copy.deepcopy(document)
