"""The recipes for real models in pipelines/hub/ (GPU-sized, Hub models: not run here, there is no
network) are valid manifests: the validator, the CRD's schema and CEL rules, no field the API server
would drop, and `alignops validate` from the command line."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from alignops.api.validation import parse_job
from core.cel import evaluate_rules
from core.test_core_crd import _schema, _unknown_fields
from suite import REPO, run_cli

HUB_RECIPES = sorted((REPO / "pipelines" / "hub").glob("*.yaml"))


def test_there_are_hub_recipes():
    assert {p.name for p in HUB_RECIPES} >= {"qwen2.5-0.5b-sft-dpo.yaml", "qwen2.5-1.5b-grpo-gsm8k.yaml", "llama-lora-dpo.yaml"}


@pytest.mark.parametrize("recipe", HUB_RECIPES, ids=[p.name for p in HUB_RECIPES])
def test_a_hub_recipe_is_valid_everywhere_it_is_checked(recipe: Path):
    document = yaml.safe_load(recipe.read_text())
    job = parse_job(document)
    assert job.spec.model.hub is not None and job.spec.model.location.startswith("hf://")
    jsonschema.Draft4Validator(_schema()).validate(document)
    assert evaluate_rules(_schema(), document) == []
    assert _unknown_fields(_schema()["properties"]["spec"], document["spec"], "spec") == []


def test_alignops_validate_accepts_them():
    out = run_cli("validate", *map(str, HUB_RECIPES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("is valid") == len(HUB_RECIPES)
