"""`alignops validate` and the API models refuse bad manifests, naming the field path and the fix."""

from __future__ import annotations

import copy

import pytest
import yaml

from alignops.api import InvalidManifest, parse_job
from suite import PIPELINES, run_cli
from core.manifests import sft_job, two_sft_job


def _mutate(fn):
    job = two_sft_job()
    fn(job)
    return job


def _stage(job, i):
    return job["spec"]["stages"][i]


def _reward_then_wrong_ref(job):
    # a reward stage produces a reward model; an sft stage's policy must be a policy
    job["spec"]["stages"][0] = {"name": "rm", "type": "reward", "datasets": {"train": {"generator": "arithmetic"}}}
    _stage(job, 1)["policy"] = {"fromStage": "rm"}


# (case, mutation, expected path in the message, expected words in the message)
BROKEN = [
    ("unknown stage type", lambda j: _stage(j, 0).update(type="sfx"), "spec.stages[0]", "unknown stage type sfx"),
    ("duplicate stage name", lambda j: _stage(j, 1).update(name="sft", policy=None) or _stage(j, 1).pop("policy"),
     "spec.stages[1].name", "duplicate stage name"),
    ("fromStage names a later stage", lambda j: _stage(j, 0).update(policy={"fromStage": "sft2"}),
     "spec.stages[0].policy.fromStage", "does not run before"),
    ("fromStage names an unknown stage", lambda j: _stage(j, 1).update(policy={"fromStage": "nope"}),
     "spec.stages[1].policy.fromStage", "no stage named 'nope'"),
    ("reference to a stage of the wrong kind", _reward_then_wrong_ref, "spec.stages[1].policy.fromStage", "produces a rewardModel"),
    ("misspelt field", lambda j: _stage(j, 0)["hyperparameters"].update(lerningRate=0.1),
     "spec.stages[0].hyperparameters.lerningRate", "unknown field"),
    ("string for a number", lambda j: _stage(j, 0)["hyperparameters"].update(learningRate="0.1"),
     "spec.stages[0].hyperparameters.learningRate", "valid number"),
    ("zero size", lambda j: _stage(j, 0)["hyperparameters"].update(batchSize=0), "spec.stages[0].hyperparameters.batchSize", "greater than or equal to 1"),
    ("negative size", lambda j: j["spec"]["model"]["architecture"].update(hiddenSize=-64), "spec.model.architecture.hiddenSize", "greater than or equal to 8"),
    ("invalid metadata.name", lambda j: j["metadata"].update(name="My_Job"), "metadata.name", "match pattern"),
    ("wrong apiVersion", lambda j: j.update(apiVersion="alignops.io/v1"), "apiVersion", "alignops.io/v1alpha1"),
    ("wrong kind", lambda j: j.update(kind="TrainJob"), "kind", "AlignmentJob"),
    ("no stages", lambda j: j["spec"].update(stages=[]), "spec.stages", "at least 1 item"),
    ("batch not split evenly across GPUs", lambda j: (_stage(j, 0).update(resources={"gpus": 3}), _stage(j, 0)["hyperparameters"].update(batchSize=16)),
     "spec.stages[0].hyperparameters.batchSize", "multiple of 3"),
    ("batch not split evenly across nodes", lambda j: (_stage(j, 0).update(resources={"gpus": 2, "nodes": 3}),
                                                        _stage(j, 0)["hyperparameters"].update(batchSize=16)),
     "spec.stages[0].hyperparameters.batchSize", "multiple of 6"),
    ("GPUs requested as a device", lambda j: _stage(j, 0).update(resources={"devices": {"nvidia.com/gpu": 8}}),
     "spec.stages[0].resources.devices", "request GPUs with resources.gpus"),
    ("a device that is no extended resource", lambda j: _stage(j, 0).update(resources={"devices": {"efa": 1}}),
     "spec.stages[0].resources.devices", "not an extended resource name"),
    ("offloadParameters without ZeRO-3", lambda j: _stage(j, 0).update(distributed={"zeroStage": 2, "offloadParameters": True}),
     "spec.stages[0].distributed", "needs zeroStage: 3"),
    ("storage URI with an unknown scheme", lambda j: j["spec"].update(storage={"uri": "gs://bucket/x"}), "spec.storage.uri", "match pattern"),
]


@pytest.mark.parametrize("case, mutate, path, words", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_manifest_is_refused_naming_the_field(case, mutate, path, words):
    job = _mutate(mutate)
    with pytest.raises(InvalidManifest) as caught:
        parse_job(job)
    messages = [str(e) for e in caught.value.errors]
    assert any(m.startswith(path + ":") and words in m for m in messages), messages


def test_valid_manifest_resolves_defaults():
    job = parse_job(two_sft_job())
    assert [s.name for s in job.spec.stages] == ["sft", "sft2"]
    assert job.spec.stages[0].hyperparameters.learning_rate == 1e-3  # default filled
    assert job.spec.stages[1].policy.from_stage == "sft"


@pytest.mark.parametrize("recipe", PIPELINES, ids=[p.name for p in PIPELINES])
def test_every_recipe_validates(recipe):
    job = parse_job(yaml.safe_load(recipe.read_text()))
    assert job.spec.stages


def test_cli_validate_exit_codes(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(sft_job()))
    bad = tmp_path / "bad.yaml"
    broken = sft_job()
    broken["spec"]["stages"][0]["hyperparameters"]["batchSize"] = "eight"
    bad.write_text(yaml.safe_dump(broken))
    garbled = tmp_path / "garbled.yaml"
    garbled.write_text("spec: [unclosed\n")

    ok = run_cli("validate", str(good))
    assert ok.returncode == 0, ok.stderr
    assert "is valid" in ok.stdout

    invalid = run_cli("validate", str(bad))
    assert invalid.returncode == 1
    assert "spec.stages[0].hyperparameters.batchSize" in invalid.stderr

    # error text is shown as is: a pattern's [brackets] are not eaten as markup
    named = sft_job()
    named["metadata"]["name"] = "Bad_Name"
    bad.write_text(yaml.safe_dump(named))
    pattern = run_cli("validate", str(bad))
    assert pattern.returncode == 1 and "^[a-z]([-a-z0-9]*[a-z0-9])?$" in pattern.stderr.replace("\n", "")

    assert run_cli("validate", str(garbled)).returncode == 2
    missing = run_cli("validate", str(tmp_path / "absent.yaml"))
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr


def test_every_error_is_reported_at_once():
    job = sft_job()
    job["spec"]["stages"][0]["hyperparameters"].update(batchSize=0, learningRate="x")
    job["metadata"]["name"] = "UPPER"
    with pytest.raises(InvalidManifest) as caught:
        parse_job(job)
    paths = {e.path for e in caught.value.errors}
    assert {"metadata.name", "spec.stages[0].hyperparameters.batchSize", "spec.stages[0].hyperparameters.learningRate"} <= paths


def test_broken_cases_are_distinct_from_the_base():
    # guards the table above: the unmutated base manifest is valid
    parse_job(copy.deepcopy(two_sft_job()))


def test_messages_and_cel_rules_name_input_fields_as_manifests_spell_them():
    # camel_case is the models' alias generator, so a field named in a message is the wire field
    from alignops.api.base import camel_case
    from alignops.api.stages import STAGE_TYPES

    inputs = {(name, field) for name, info in STAGE_TYPES.items() for field in info.inputs}
    assert ("sft", "policy") in inputs
    for name, field in inputs:
        assert STAGE_TYPES[name].model.model_fields[field].alias == camel_case(field)
    assert camel_case("reward_model") == "rewardModel"


def _generate_job(*stages) -> dict:
    return {"apiVersion": "alignops.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": "gen"},
            "spec": {"model": {"architecture": {"hiddenSize": 32, "layers": 1, "heads": 2}}, "stages": list(stages)}}


GEN = {"name": "gen", "type": "generate", "method": "self_instruct"}
PREFS = {"name": "prefs", "type": "generate", "method": "ai_preferences"}
SFT_ON = lambda source: {"name": "sft", "type": "sft", "datasets": {"train": {"fromStage": source}}}  # noqa: E731


@pytest.mark.parametrize("stages, words", [
    ([SFT_ON("gen"), GEN], "no earlier stage named 'gen'"),
    ([{"name": "base", "type": "sft", "datasets": {"train": {"generator": "arithmetic"}}}, SFT_ON("base")], "produces a policy, not a dataset"),
    ([PREFS, SFT_ON("prefs")], "writes pairs records, but this sft stage reads sft"),
    ([GEN, {"name": "sft", "type": "sft", "datasets": {"train": {"fromStage": "gen", "generator": "arithmetic"}}}],
     "exactly one of uri, hub, generator or fromStage"),
    ([{**GEN, "judge": {"uri": "file:///judge"}}], "judge labels pairs for method ai_preferences only"),
])
def test_a_dataset_from_a_stage_must_be_an_earlier_generate_stage_of_the_right_format(stages, words):
    from alignops.api import InvalidManifest, parse_job
    with pytest.raises(InvalidManifest) as caught:
        parse_job(_generate_job(*stages))
    assert any(words in str(e) for e in caught.value.errors), caught.value.errors


def test_the_crd_checks_dataset_references_too():
    from alignops.api import parse_job
    from alignops.api.crd import build_crd
    from core.cel import evaluate_rules
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    good = _generate_job(GEN, SFT_ON("gen"))
    parse_job(good)
    assert evaluate_rules(schema, good) == []
    bad = _generate_job({"name": "base", "type": "sft", "datasets": {"train": {"generator": "arithmetic"}}}, SFT_ON("base"))
    assert any("datasets.train.fromStage must name an earlier stage that produces a dataset" in f for f in evaluate_rules(schema, bad))
    judged = _generate_job({**GEN, "judge": {"uri": "file:///judge"}})
    assert any("judge labels pairs for method ai_preferences only" in f for f in evaluate_rules(schema, judged))
    assert evaluate_rules(schema, _generate_job({**PREFS, "judge": {"uri": "file:///judge"}})) == []
