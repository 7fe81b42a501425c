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
    assert columns == {"Phase": ".status.phase", "Stage": ".status.currentStage", "Age": ".metadata.creationTimestamp"}


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
    "two GPUs while unsupported": "resources.gpus",
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


@pytest.mark.parametrize("case", SCHEMA_TARGETS)
def test_openapi_schema_rejects_what_the_validator_rejects(case):
    mutate = next(b[1] for b in BROKEN if b[0] == case)
    document = _mutate(mutate)
    if case == "misspelt field":
        # the API server drops (or with kubectl's strict field validation, refuses) unknown fields;
        # jsonschema needs additionalProperties: false to show it
        schema = _close_objects(_schema())
    else:
        schema = _schema()
    assert list(jsonschema.Draft4Validator(schema).iter_errors(document)), case


def _close_objects(node):
    node = dict(node)
    if "properties" in node:
        node["properties"] = {k: _close_objects(v) for k, v in node["properties"].items()}
        node["additionalProperties"] = False
    if "items" in node:
        node["items"] = _close_objects(node["items"])
    return node
