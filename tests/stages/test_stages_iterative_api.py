"""The API of the self-training stage types (rejection_sampling, online_dpo, spin): what the validator
refuses, that the CRD's CEL rules refuse the same manifests, and how the planner resolves an online
DPO stage's judge (a stage's checkpoint, or a hub id) into the run's config."""

import pytest

from alignops.api.crd import build_crd
from alignops.api.validation import InvalidManifest, parse_job
from alignops.planner import Defaults, initial_status, resolve_run
from core.cel import evaluate_rules

PROMPTS = {"train": {"generator": "arithmetic", "format": "prompts"}}
SFT_DATA = {"train": {"generator": "arithmetic"}}
SFT = {"name": "sft", "type": "sft", "datasets": SFT_DATA}
RM = {"name": "rm", "type": "reward", "datasets": {"train": {"generator": "arithmetic", "format": "pairs"}}}


def job(*stages):
    return {"apiVersion": "alignops.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": "j"},
            "spec": {"model": {"architecture": {"hiddenSize": 32, "layers": 1, "heads": 2}}, "stages": [SFT, RM, *stages]}}


def rs(**fields):
    return {"name": "rs", "type": "rejection_sampling", "datasets": PROMPTS, **fields}


def odpo(**fields):
    return {"name": "odpo", "type": "online_dpo", "datasets": PROMPTS, **fields}


SCHEMA = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

# (stage, text of the validator's message, text of the CRD rule's message)
REFUSED = [
    (rs(algorithm="rest"), "algorithm rest needs hyperparameters.thresholds", "algorithm rest needs hyperparameters.thresholds"),
    (rs(hyperparameters={"thresholds": [0.5]}), "thresholds applies to algorithm rest", "thresholds applies to algorithm rest"),
    (rs(algorithm="rest", hyperparameters={"thresholds": [0.5], "topK": 2}), "topK and minReward apply to algorithm raft",
     "topK and minReward apply to algorithm raft"),
    (rs(algorithm="rest", hyperparameters={"thresholds": [0.5], "minReward": 1.0}), "topK and minReward apply to algorithm raft",
     "topK and minReward apply to algorithm raft"),
    (rs(hyperparameters={"rewards": [{"name": "reward_model"}]}), "needs the rewardModel input", "needs the rewardModel input"),
    (rs(rewardModel={"fromStage": "rm"}, hyperparameters={"rewards": [{"name": "exact_answer"}]}), "no reward in hyperparameters.rewards uses it",
     "no reward in hyperparameters.rewards uses it"),
    (odpo(hyperparameters={"samplesPerPrompt": 1}), "samplesPerPrompt must be >= 2", "samplesPerPrompt must be >= 2"),
    (odpo(judge={"fromStage": "sft"}, hyperparameters={"rewards": [{"name": "exact_answer"}]}), "two kinds of judge", "two kinds of judge"),
    (odpo(judge={"fromStage": "sft"}, rewardModel={"fromStage": "rm"}), "two kinds of judge", "two kinds of judge"),
    (odpo(algorithm="orpo", hyperparameters={"rpoAlpha": 1.0}), "rpoAlpha applies to dpo, cdpo, ipo and simpo only",
     "rpoAlpha applies to dpo, cdpo, ipo and simpo only"),
    ({"name": "spin", "type": "spin", "algorithm": "orpo", "datasets": SFT_DATA, "hyperparameters": {"rpoAlpha": 1.0}},
     "rpoAlpha applies to dpo, cdpo, ipo and simpo only", "rpoAlpha applies to dpo, cdpo, ipo and simpo only"),
    # a reward model is no judge: it belongs in rewardModel
    (odpo(judge={"fromStage": "rm"}), "produces a rewardModel, but judge needs a policy", "judge.fromStage of a online_dpo stage"),
]


@pytest.mark.parametrize("stage, message, rule", REFUSED, ids=range(len(REFUSED)))
def test_the_validator_and_the_crd_refuse_the_same_stages(stage, message, rule):
    with pytest.raises(InvalidManifest) as caught:
        parse_job(job(stage))
    assert any(message in e.message for e in caught.value.errors), caught.value.errors
    failures = evaluate_rules(SCHEMA, job(stage))
    assert any(rule in f for f in failures), failures


@pytest.mark.parametrize("stage, message", [
    (rs(algorithm="rest", hyperparameters={"thresholds": [1.0, 0.5]}), "rise from one Improve step to the next"),
    ({"name": "spin", "type": "spin", "algorithm": "kto", "datasets": SFT_DATA}, "'dpo', 'cdpo', 'ipo', 'simpo' or 'orpo'"),
    (odpo(judge={"fromStage": "sft", "template": "{prompt}: {response_a}"}), "must contain {response_b}"),
])
def test_field_errors_name_the_fix(stage, message):
    with pytest.raises(InvalidManifest) as caught:
        parse_job(job(stage))
    assert any(message in e.message for e in caught.value.errors), caught.value.errors


ACCEPTED = [
    rs(hyperparameters={"topK": 2, "minReward": 1.0}),
    rs(algorithm="rest", hyperparameters={"thresholds": [0.5, 1.0, 1.0]}),
    rs(rewardModel={"fromStage": "rm"}),
    odpo(rewardModel={"fromStage": "rm"}, hyperparameters={"samplesPerPrompt": 2, "syncReference": True}),
    odpo(judge={"hub": "Qwen/Qwen2.5-1.5B-Instruct", "bothOrders": True}),
    {"name": "spin", "type": "spin", "policy": {"fromStage": "sft"}, "datasets": SFT_DATA, "hyperparameters": {"samplesPerPrompt": 1}},
]


@pytest.mark.parametrize("stage", ACCEPTED, ids=range(len(ACCEPTED)))
def test_valid_stages_pass_both(stage):
    parse_job(job(stage))
    assert evaluate_rules(SCHEMA, job(stage)) == []


def test_the_judge_resolves_to_a_checkpoint_or_a_hub_uri_and_its_settings_reach_the_run():
    template = "Q: {prompt}\nA: {response_a}\nB: {response_b}\nBetter:"
    parsed = parse_job(job(odpo(judge={"fromStage": "sft", "template": template, "bothOrders": True})))
    status = initial_status(parsed)
    status.stages[0].phase, status.stages[0].checkpoint_uri = "Succeeded", "file:///ckpt/sft/checkpoint-9"
    config = resolve_run(parsed, status, "odpo", 1, Defaults(storage_uri="file:///tmp"))
    assert config.type == "online_dpo" and config.algorithm == "dpo"
    assert config.inputs.judge == "file:///ckpt/sft/checkpoint-9" and config.inputs.policy is None
    assert config.judge.template == template and config.judge.both_orders
    # the wire form round-trips, camelCase inside the API object
    assert '"bothOrders": true' in config.to_json()
    assert type(config).from_json(config.to_json()).judge == config.judge

    hub = parse_job(job(odpo(judge={"hub": "org/judge", "revision": "v2"})))
    config = resolve_run(hub, initial_status(hub), "odpo", 1, Defaults(storage_uri="file:///tmp"))
    assert config.inputs.judge == "hf://org/judge@v2"
    # a stage without a judge has none in its config
    assert resolve_run(parsed, status, "sft", 1, Defaults(storage_uri="file:///tmp")).judge is None
