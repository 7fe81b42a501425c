"""Small manifests for tests, built in code so each test changes one thing."""

from __future__ import annotations

import copy


def sft_job(name: str = "demo", **spec_overrides) -> dict:
    job = {
        "apiVersion": "alignops.io/v1alpha1",
        "kind": "AlignmentJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"architecture": {"hiddenSize": 32, "layers": 1, "heads": 2, "maxPositions": 32}},
            "stages": [
                {"name": "sft", "type": "sft", "datasets": {"train": {"generator": "arithmetic", "size": 64}},
                 "hyperparameters": {"maxSteps": 4, "batchSize": 8, "evalSize": 8}},
            ],
        },
    }
    job["spec"].update(spec_overrides)
    return job


def two_sft_job() -> dict:
    job = sft_job()
    second = copy.deepcopy(job["spec"]["stages"][0])
    second["name"] = "sft2"
    second["policy"] = {"fromStage": "sft"}
    job["spec"]["stages"].append(second)
    return job
