"""The `rl` stage type in the API: defaults, cross-field checks (pydantic and the CRD's CEL rules
agree), input kinds, and the names the API lists agree with the registries that implement them."""

from __future__ import annotations

import copy
import typing

import jsonschema
import pytest

from alignops.algos import ADVANTAGE_ESTIMATORS, AGGREGATION_MODES, KL_ESTIMATORS, POLICY_LOSSES
from alignops.api import InvalidManifest, parse_job
from alignops.api.crd import build_crd
from alignops.api.rl import ADVANTAGE_ESTIMATOR_OF, POLICY_LOSS_OF, REWARD_OPTIONS, RL_ALGORITHMS, KlSettings, RewardName, RlHyperparameters
from alignops.api.stages import STAGE_TYPES
from alignops.workloads.rl.rewards import REWARD_FUNCTIONS
from core.cel import evaluate_rules

PROMPTS = {"train": {"generator": "arithmetic", "size": 64}}


def _job(*stages) -> dict:
    return {
        "apiVersion": "alignops.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": "demo"},
        "spec": {"model": {"architecture": {"hiddenSize": 32, "layers": 1, "heads": 2, "maxPositions": 32}},
                 "stages": list(stages)},
    }


SFT = {"name": "sft", "type": "sft", "datasets": {"train": {"generator": "arithmetic", "size": 64}}}
REWARD = {"name": "rm", "type": "reward", "datasets": {"train": {"generator": "arithmetic", "size": 64, "format": "pairs"}}}


def _rl(**fields) -> dict:
    return {"name": "rl", "type": "rl", "datasets": PROMPTS, **fields}


def _errors(document) -> list[str]:
    with pytest.raises(InvalidManifest) as caught:
        parse_job(document)
    return [str(e) for e in caught.value.errors]


def _cel(document) -> list[str]:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jsonschema.Draft4Validator(schema).validate(document)
    return evaluate_rules(schema, document)


def test_defaults_and_registration():
    job = parse_job(_job(SFT, _rl(policy={"fromStage": "sft"})))
    stage = job.stage("rl")
    assert stage.algorithm == "grpo"
    hp = stage.hyperparameters
    assert (hp.rounds, hp.samples_per_prompt, hp.engine, hp.placement, hp.loss_aggregation) == (20, 8, "transformers", "colocated", "token_mean")
    info = STAGE_TYPES["rl"]
    assert info.produces == "policy" and info.dataset_format == "prompts" and info.default_algorithm == "grpo"
    assert info.inputs == {"policy": ("policy",), "reference": ("policy",), "reward_model": ("rewardModel",)}


def test_names_in_the_api_are_the_registries_names():
    assert {ADVANTAGE_ESTIMATOR_OF[a] for a in RL_ALGORITHMS} <= set(ADVANTAGE_ESTIMATORS.names())
    assert ADVANTAGE_ESTIMATOR_OF["ppo"] == "gae"
    assert {POLICY_LOSS_OF[a] for a in RL_ALGORITHMS} == set(POLICY_LOSSES.names())
    assert set(typing.get_args(KlSettings.model_fields["estimator"].annotation.__args__[0])) == set(KL_ESTIMATORS.names())
    assert set(typing.get_args(RlHyperparameters.model_fields["loss_aggregation"].annotation)) == set(AGGREGATION_MODES.names())
    assert set(typing.get_args(RewardName)) == set(REWARD_FUNCTIONS.names()) == set(REWARD_OPTIONS)


@pytest.mark.parametrize("stage, words", [
    (_rl(algorithm="grpo", hyperparameters={"samplesPerPrompt": 1}), "samplesPerPrompt >= 2"),
    (_rl(hyperparameters={"rewards": [{"name": "reward_model"}]}), "needs the rewardModel input"),
    (_rl(hyperparameters={"rewards": [{"name": "regex"}]}), "needs options.pattern"),
    (_rl(hyperparameters={"rewards": [{"name": "exact_answer", "options": {"freeTokens": 3}}]}), "has no option freeTokens"),
    (_rl(hyperparameters={"rewards": [{"name": "regex", "options": {"pattern": "("}}]}), "not a valid regular expression"),
    (_rl(hyperparameters={"kl": {"beta": 0, "target": 0.1}}), "needs kl.beta > 0"),
    (_rl(algorithm="a2c"), "ppo"),
    (_rl(algorithm="p3o", hyperparameters={"samplesPerPrompt": 4}), "samplesPerPrompt: 2 and an even batchSize"),
    (_rl(algorithm="p3o", hyperparameters={"samplesPerPrompt": 2, "batchSize": 7}), "samplesPerPrompt: 2 and an even batchSize"),
    (_rl(hyperparameters={"stop": [""]}), "at least 1 character"),
])
def test_inconsistent_rl_stage_is_refused(stage, words):
    errors = _errors(_job(stage))
    assert any(words in e for e in errors), errors


def test_reward_model_must_come_from_a_reward_stage():
    errors = _errors(_job(SFT, _rl(rewardModel={"fromStage": "sft"}, hyperparameters={"rewards": [{"name": "reward_model"}]})))
    assert any("spec.stages[1].rewardModel.fromStage" in e and "produces a policy" in e for e in errors), errors
    parse_job(_job(SFT, REWARD, _rl(policy={"fromStage": "sft"}, rewardModel={"fromStage": "rm"})))


def test_ppo_with_a_single_sample_is_fine():
    parse_job(_job(_rl(algorithm="ppo", hyperparameters={"samplesPerPrompt": 1})))


@pytest.mark.parametrize("stage, message", [
    (_rl(hyperparameters={"samplesPerPrompt": 1}), "samplesPerPrompt must be >= 2"),
    (_rl(algorithm="rloo", hyperparameters={"samplesPerPrompt": 1}), "samplesPerPrompt must be >= 2"),
    (_rl(algorithm="p3o"), "need hyperparameters.samplesPerPrompt: 2 and an even batchSize"),
    (_rl(algorithm="p3o", hyperparameters={"samplesPerPrompt": 2, "batchSize": 5}), "need hyperparameters.samplesPerPrompt: 2"),
    (_rl(hyperparameters={"rewards": [{"name": "reward_model"}]}), "the reward_model reward needs the rewardModel input"),
    (_rl(rewardModel={"uri": "file:///rm"}, hyperparameters={"rewards": [{"name": "exact_answer"}]}), "no reward in hyperparameters.rewards uses it"),
])
def test_the_crd_refuses_what_the_validator_refuses(stage, message):
    failures = _cel(_job(stage))
    assert any(message in f for f in failures), failures


def test_the_crd_checks_the_reward_model_input_kind():
    bad = _job(SFT, _rl(rewardModel={"fromStage": "sft"}))
    assert any("rewardModel.fromStage of a rl stage must name a stage that produces a rewardModel" in f for f in _cel(bad))
    good = _job(SFT, REWARD, _rl(algorithm="ppo", policy={"fromStage": "sft"}, rewardModel={"fromStage": "rm"},
                                hyperparameters={"samplesPerPrompt": 1}))
    assert _cel(good) == []
    assert _cel(_job(_rl(algorithm="ppo", hyperparameters={"samplesPerPrompt": 1}))) == []
    assert _cel(_job(_rl(algorithm="p3o", hyperparameters={"samplesPerPrompt": 2}))) == []
    parse_job(_job(_rl(algorithm="p3o", hyperparameters={"samplesPerPrompt": 2})))


def test_rl_only_fields_are_refused_on_other_stage_types():
    doc = _job(dict(copy.deepcopy(SFT), hyperparameters={"rounds": 3}))
    assert any("hyperparameters.rounds applies only to stage types generate, rl" in f for f in _cel(doc))
    assert any("rounds" in e for e in _errors(doc))
