"""Helpers for the stage tests: a tiny job's resolved stage config, and running the entrypoint
in this process (the same ``main`` a pod runs) with its result read back."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from alignops.api.validation import parse_job
from alignops.planner import Defaults, initial_status, resolve_run

TINY_ARCH = {"hiddenSize": 32, "layers": 1, "heads": 2, "maxPositions": 32, "seed": 0}


def tiny_job(stage: dict) -> dict:
    return {"apiVersion": "alignops.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": "tiny"},
            "spec": {"model": {"architecture": TINY_ARCH}, "stages": [stage]}}


@pytest.fixture
def stage_run(tmp_path, monkeypatch):
    """``stage_run(stage_dict, root, **config_overrides) -> (exit_code, result)``: resolve the stage
    of a one-stage tiny job against storage ``root`` and run ``alignops.workloads.entrypoint.main``."""
    from alignops.workloads.entrypoint import main

    monkeypatch.setenv("ALIGNOPS_SCRATCH", str(tmp_path))
    monkeypatch.delenv("ALIGNOPS_METRICS_LOG", raising=False)
    monkeypatch.delenv("ALIGNOPS_METRICS_PORT", raising=False)
    original = signal.getsignal(signal.SIGTERM)
    counter = iter(range(1000))

    def run(stage: dict, root: Path, **overrides) -> tuple[int, dict]:
        job = parse_job(tiny_job(stage))
        config = resolve_run(job, initial_status(job), stage["name"], 1, Defaults(storage_uri=f"file://{root}"))
        document = json.loads(config.to_json())
        document.update(overrides)
        n = next(counter)
        config_path, result_path = tmp_path / f"config-{n}.json", tmp_path / f"result-{n}.json"
        config_path.write_text(json.dumps(document))
        monkeypatch.setenv("ALIGNOPS_RESULT_PATH", str(result_path))
        code = main([str(config_path)])
        return code, json.loads(result_path.read_text())

    yield run
    signal.signal(signal.SIGTERM, original)  # make_context installed its own handler
