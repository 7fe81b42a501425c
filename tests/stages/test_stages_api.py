"""The API and CRD know the reward, preference and rank stage types."""

import pytest

from alignops.api.crd import build_crd
from alignops.api.validation import InvalidManifest, parse_job
from alignops.planner import Defaults, initial_status, resolve_run


def job(*stages):
    return {"apiVersion": "alignops.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": "j"},
            "spec": {"model": {"architecture": {"hiddenSize": 32, "layers": 1, "heads": 2}}, "stages": list(stages)}}


DATA = {"train": {"generator": "arithmetic"}}
SFT = {"name": "sft", "type": "sft", "datasets": DATA}


def test_preference_defaults_to_dpo_and_its_reference_resolves_to_a_checkpoint():
    parsed = parse_job(job(SFT, {"name": "po", "type": "preference", "policy": {"fromStage": "sft"},
                                 "reference": {"fromStage": "sft"}, "datasets": DATA}))
    status = initial_status(parsed)
    status.stages[0].phase, status.stages[0].checkpoint_uri = "Succeeded", "file:///ckpt/sft/checkpoint-9"
    config = resolve_run(parsed, status, "po", 1, Defaults(storage_uri="file:///tmp"))
    assert config.algorithm == "dpo"
    assert config.inputs.policy == config.inputs.reference == "file:///ckpt/sft/checkpoint-9"
    assert config.hyperparameters["beta"] == 0.1


def test_reward_algorithm_is_left_to_the_data_unless_named():
    parsed = parse_job(job({"name": "rm", "type": "reward", "datasets": DATA}))
    assert resolve_run(parsed, initial_status(parsed), "rm", 1, Defaults(storage_uri="file:///tmp")).algorithm is None


@pytest.mark.parametrize("stages, path, message", [
    # a reward model is no policy to fine-tune
    ([{"name": "rm", "type": "reward", "datasets": DATA},
      {"name": "po", "type": "preference", "policy": {"fromStage": "rm"}, "datasets": DATA}],
     "spec.stages[1].policy.fromStage", "produces a rewardModel, but policy needs a policy"),
    ([{"name": "po", "type": "preference", "algorithm": "ppo", "datasets": DATA}],
     "spec.stages[0].algorithm", "'dpo', 'cdpo', 'ipo', 'simpo', 'orpo' or 'kto'"),
    ([{"name": "k", "type": "rank", "datasets": DATA, "hyperparameters": {"beta": 0.1}}],
     "spec.stages[0].hyperparameters.beta", "unknown field 'beta'"),
    ([{"name": "po", "type": "preference", "datasets": DATA, "hyperparameters": {"labelSmoothing": 0.5}}],
     "spec.stages[0].hyperparameters.labelSmoothing", "less than 0.5"),
    ([{"name": "po", "type": "preference", "algorithm": "kto", "datasets": DATA, "hyperparameters": {"rpoAlpha": 1.0}}],
     "spec.stages[0]", "rpoAlpha applies to dpo, cdpo, ipo and simpo only"),
])
def test_invalid_comparison_stages_name_their_field(stages, path, message):
    with pytest.raises(InvalidManifest) as caught:
        parse_job(job(*stages))
    assert any(e.path == path and message in e.message for e in caught.value.errors), caught.value.errors


def test_crd_lists_the_types_and_keeps_fields_to_their_types():
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    stage = schema["properties"]["stages"]["items"]
    assert {"reward", "preference", "rank"} <= set(stage["properties"]["type"]["enum"])
    assert {"bradley_terry", "plackett_luce", "dpo", "cdpo", "ipo", "simpo", "orpo", "kto", "rrhf"} <= set(
        stage["properties"]["algorithm"]["enum"])
    rules = {r["message"].partition(" applies only to stage types ")[0]: r["message"].partition(" applies only to stage types ")[2]
             for r in stage["x-kubernetes-validations"] if " applies only to " in r["message"]}
    # a field of these types only: a typo in a manifest's type is caught by the API server as well
    for field, owner in (("reference", "preference"), ("hyperparameters.beta", "preference"),
                         ("hyperparameters.rewardMargin", "reward"), ("hyperparameters.rankWeight", "rank")):
        owners = rules[field].split(", ")
        assert owner in owners and "sft" not in owners, (field, owners)


def test_the_crd_refuses_rpo_alpha_where_the_validator_does():
    from core.cel import evaluate_rules

    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for algorithm, refused in (("orpo", True), ("kto", True), ("dpo", False), ("simpo", False)):
        stage = {"name": "po", "type": "preference", "algorithm": algorithm, "datasets": DATA, "hyperparameters": {"rpoAlpha": 1.0}}
        failures = evaluate_rules(schema, job(stage))
        assert any("rpoAlpha applies to dpo, cdpo, ipo and simpo only" in f for f in failures) == refused, (algorithm, failures)
    # rpoAlpha 0 (the default) is fine with any loss
    assert evaluate_rules(schema, job({"name": "po", "type": "preference", "algorithm": "kto", "datasets": DATA,
                                       "hyperparameters": {"rpoAlpha": 0.0}})) == []
