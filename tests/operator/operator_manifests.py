"""Manifests of every stage type for the operator tests (a module of its own: several test
directories have a conftest.py, so tests import helpers from here, never from ``conftest``)."""

from __future__ import annotations

from alignops.api.stages import STAGE_TYPES


# fields a stage type requires beyond name, type and datasets
REQUIRED = {"generate": {"method": "self_instruct"}}


def stage_manifest(type_: str, name: str | None = None, **extra) -> dict:
    """A minimal valid stage of ``type_`` on the arithmetic generator, in its dataset format."""
    info = STAGE_TYPES[type_]
    stage = {"name": name or f"s-{type_}", "type": type_,
             "datasets": {"train": {"generator": "arithmetic", "size": 50, "format": info.dataset_format}}}
    stage.update(REQUIRED.get(type_, {}))
    stage.update(extra)
    return stage


def job_manifest(name: str = "demo", stages: list[dict] | None = None, namespace: str = "ml-team", **spec) -> dict:
    return {
        "apiVersion": "alignops.io/v1alpha1",
        "kind": "AlignmentJob",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "generation": 1, "resourceVersion": "10",
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"model": {"architecture": {"hiddenSize": 32, "layers": 1, "heads": 2}},
                 "stages": stages or [stage_manifest("sft", "sft")], **spec},
    }
