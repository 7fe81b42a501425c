"""The manifest fields for real models: where the model is (exactly one of uri, hub, architecture;
revision with hub only), stage inputs naming a Hub model, the Hub token Secret, and LoRA adapters
(which stage types take one, the target-module syntax, no vllm sampling from a LoRA policy) -- in
the validator and, for what the API server must refuse, in the CRD's CEL rules."""

from __future__ import annotations

import copy

import pytest

from alignops.api.validation import InvalidManifest, parse_job
from alignops.planner import Defaults, initial_status, resolve_run
from core.cel import evaluate_rules
from core.test_core_crd import _schema

BASE = {"apiVersion": "alignops.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": "m"},
        "spec": {"model": {"hub": "Qwen/Qwen2.5-0.5B"},
                 "stages": [{"name": "sft", "type": "sft", "datasets": {"train": {"uri": "s3://bucket/train.jsonl"}}}]}}


def _with(model=None, stage=None) -> dict:
    document = copy.deepcopy(BASE)
    if model is not None:
        document["spec"]["model"] = model
    document["spec"]["stages"][0].update(stage or {})
    return document


def _error(document) -> str:
    with pytest.raises(InvalidManifest) as caught:
        parse_job(document)
    return " ".join(str(e) for e in caught.value.errors)


def test_the_model_is_exactly_one_of_uri_hub_or_architecture():
    job = parse_job(_with())
    assert job.spec.model.location == "hf://Qwen/Qwen2.5-0.5B@main" and job.spec.model.token_secret is None
    assert "exactly one of model.uri, model.hub or model.architecture" in _error(
        _with({"hub": "Qwen/Qwen2.5-0.5B", "uri": "s3://bucket/model"}))
    assert "model.revision applies to model.hub only" in _error(_with({"uri": "s3://bucket/model", "revision": "main"}))
    assert "spec.model.hub" in _error(_with({"hub": "not a repo id"}))
    secret = parse_job(_with({"hub": "meta-llama/Llama-3.2-1B", "revision": "refs/pr/3", "tokenSecret": {"name": "hf-token"}}))
    assert secret.spec.model.token_secret.key == "HF_TOKEN" and secret.spec.model.location.endswith("@refs/pr/3")


def test_a_stage_input_may_name_a_hub_model_and_the_run_gets_its_location():
    document = _with(stage={"policy": {"hub": "acme/tiny", "revision": "v2"}})
    job = parse_job(document)
    config = resolve_run(job, initial_status(job), "sft", 1, Defaults(storage_uri="file:///tmp/x"))
    assert config.inputs.policy == "hf://acme/tiny@v2"
    assert "set exactly one of fromStage, uri or hub" in _error(_with(stage={"policy": {"hub": "acme/tiny", "uri": "s3://bucket/m"}}))
    assert "revision applies to hub only" in _error(_with(stage={"policy": {"fromStage": "x", "revision": "v2"}}))


def test_the_adapter_reaches_the_run_and_its_target_modules_are_checked():
    job = parse_job(_with(stage={"adapter": {"rank": 8, "targetModules": "q_proj,v_proj", "merge": True}}))
    config = resolve_run(job, initial_status(job), "sft", 1, Defaults(storage_uri="file:///tmp/x"))
    assert config.adapter.rank == 8 and config.adapter.lora_alpha == 16.0 and config.adapter.modules == ["q_proj", "v_proj"]
    assert parse_job(_with(stage={"adapter": {}})).spec.stages[0].adapter.modules == "all-linear"
    assert "targetModules" in _error(_with(stage={"adapter": {"targetModules": "q_proj v_proj"}}))


def test_adapter_is_refused_where_it_does_not_apply_in_the_validator_and_the_crd():
    rank = {"name": "sft", "type": "rank", "adapter": {"rank": 4}}
    assert "adapter" in _error(_with(stage=rank))
    assert any("adapter applies only to stage types" in f for f in evaluate_rules(_schema(), _with(stage=rank)))
    vllm = {"name": "sft", "type": "rl", "adapter": {"rank": 4}, "hyperparameters": {"engine": "vllm"}}
    assert "engine vllm does not sample from a LoRA policy" in _error(_with(stage=vllm))
    assert any("engine vllm does not sample from a LoRA policy" in f for f in evaluate_rules(_schema(), _with(stage=vllm)))
    assert evaluate_rules(_schema(), _with(stage={**vllm, "hyperparameters": {"engine": "transformers"}})) == []
