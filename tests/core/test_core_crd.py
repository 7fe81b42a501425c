"""The CRD: generated from the models, no drift, structural and bounded, and its CEL rules agree
with the validator (evaluated with cel-python, plus Kubernetes' `indexOf` from its lists library)."""

from __future__ import annotations

import jsonschema
import pytest
import yaml

from alignops.api.crd import build_crd, check_bounded, render_crd
from suite import PIPELINES, REPO, run_cli
from core.cel import evaluate_rules
from core.test_core_validation import BROKEN, _mutate

CRD_PATH = REPO / "crds" / "alignmentjobs.alignops.io.yaml"


def _schema():
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crd_matches_the_generator():
    assert CRD_PATH.read_text() == render_crd(), "crds/ drifted: run `alignops crd > crds/alignmentjobs.alignops.io.yaml`"


def test_cli_prints_the_same_crd():
    printed = run_cli("crd")
    assert printed.returncode == 0
    assert printed.stdout == CRD_PATH.read_text()


def test_crd_shape():
    crd = yaml.safe_load(CRD_PATH.read_text())
    spec = crd["spec"]
    assert (spec["group"], spec["scope"], spec["names"]["kind"], spec["names"]["plural"]) == (
        "alignops.io", "Namespaced", "AlignmentJob", "alignmentjobs")
    assert spec["names"]["shortNames"] == ["aj"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {"Phase": ".status.phase", "Stage": ".status.currentStage", "GPUs": ".status.currentGpus",
                       "Age": ".metadata.creationTimestamp"}


def _walk(node, path=""):
    yield path, node
    for key, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if "items" in node:
        yield from _walk(node["items"], path + "[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], path + "{}")


def test_schema_is_structural_and_bounded():
    schema = _schema()
    check_bounded(schema["properties"]["spec"], "spec")
    check_bounded(schema["properties"]["status"], "status")
    for path, node in _walk(schema["properties"]["spec"], "spec"):
        assert "x-kubernetes-preserve-unknown-fields" not in node, path
        assert "type" in node, f"{path} has no type"
        assert node.get("description") or path.endswith("[]") or path.endswith("{}"), f"{path} has no description"


def test_bound_checker_catches_an_unbounded_string():
    from alignops.api.crd import UnboundedField

    with pytest.raises(UnboundedField, match="spec.x: string without maxLength"):
        check_bounded({"type": "object", "properties": {"x": {"type": "string"}}}, "spec")


@pytest.mark.parametrize("recipe", PIPELINES, ids=[p.name for p in PIPELINES])
def test_every_recipe_passes_the_openapi_schema_and_cel_rules(recipe):
    document = yaml.safe_load(recipe.read_text())
    jsonschema.Draft4Validator(_schema()).validate(document)
    failures = evaluate_rules(_schema(), document)
    assert failures == [], failures


# The broken manifests whose error the CRD itself must catch at `kubectl apply` time.
CEL_TARGETS = {
    "duplicate stage name": "stage names must be unique",
    "fromStage names a later stage": "policy.fromStage must name an earlier stage",
    "fromStage names an unknown stage": "policy.fromStage must name an earlier stage",
    "reference to a stage of the wrong kind": "must name a stage that produces a policy",
    "batch not split evenly across GPUs": "batchSize must be a multiple of resources.gpus",
    "batch not split evenly across nodes": "batchSize must be a multiple of resources.gpus x resources.nodes",
    "GPUs requested as a device": "request nvidia.com/gpu with resources.gpus",
    "a device that is no extended resource": "resources.devices: extended resource names",
    "offloadParameters without ZeRO-3": "offloadParameters needs distributed.zeroStage: 3",
    "invalid metadata.name": "metadata.name must be a DNS-1123 label",
}


@pytest.mark.parametrize("case", sorted(CEL_TARGETS))
def test_cel_rules_reject_what_the_validator_rejects(case):
    mutate = next(b[1] for b in BROKEN if b[0] == case)
    document = _mutate(mutate)
    failures = evaluate_rules(_schema(), document)
    assert any(CEL_TARGETS[case] in message for message in failures), failures


# apiVersion and kind are routed by the API server (a wrong one names no such resource type)
SCHEMA_TARGETS = ["unknown stage type", "string for a number", "zero size", "negative size",
                  "no stages", "storage URI with an unknown scheme", "misspelt field"]


def _unknown_fields(schema, value, path: str = "") -> list[str]:
    """Paths the API server prunes from ``value`` (kubectl's strict field validation refuses them):
    keys an object schema does not list, unless it is a map (additionalProperties) or preserves
    unknown fields."""
    if isinstance(value, list) and "items" in schema:
        return [p for i, item in enumerate(value) for p in _unknown_fields(schema["items"], item, f"{path}[{i}]")]
    if not isinstance(value, dict) or schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("additionalProperties") is True:
        return []
    if isinstance(schema.get("additionalProperties"), dict):
        return [p for key, item in value.items() for p in _unknown_fields(schema["additionalProperties"], item, f"{path}.{key}")]
    properties = schema.get("properties", {})
    unknown = []
    for key, item in value.items():
        where = f"{path}.{key}" if path else key
        unknown += _unknown_fields(properties[key], item, where) if key in properties else [where]
    return unknown


def _rejected_paths(document) -> list[str]:
    """Where the API server refuses ``document`` with the generated schema: OpenAPI schema errors (CEL
    rules are checked apart) and the unknown fields it drops (metadata is the API server's own)."""
    schema = _schema()
    paths = ["".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
             for error in jsonschema.Draft4Validator(schema).iter_errors(document)]
    return paths + _unknown_fields(schema, {k: v for k, v in document.items() if k != "metadata"})


def test_the_manifest_the_cases_break_passes_the_schema_and_cel_rules():
    # else every rejection below could come from the base manifest, not from the case's change
    document = _mutate(lambda job: None)
    assert _rejected_paths(document) == []
    assert evaluate_rules(_schema(), document) == []


@pytest.mark.parametrize("recipe", PIPELINES, ids=[p.name for p in PIPELINES])
def test_no_recipe_field_is_dropped_by_the_api_server(recipe):
    assert _unknown_fields(_schema()["properties"]["spec"], yaml.safe_load(recipe.read_text())["spec"], "spec") == []


@pytest.mark.parametrize("case", SCHEMA_TARGETS)
def test_openapi_schema_rejects_what_the_validator_rejects(case):
    _, mutate, path, _ = next(b for b in BROKEN if b[0] == case)
    rejected = _rejected_paths(_mutate(mutate))
    # at the field the validator names (or inside it: an unknown stage type is refused at .type)
    assert any(p == path or p.startswith((path + ".", path + "[")) for p in rejected), rejected
