"""The planner: stage order, config resolution and the retry rule, as pure functions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from alignops.api import parse_job
from alignops.planner import (
    Defaults, Finished, RunOutcome, StartRun, Suspend, Wait, config_changes, initial_status, mark_started, next_action,
    plan_reruns, record_outcome, resolve_run, retry_delay,
)
from core.manifests import two_sft_job

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
DEFAULTS = Defaults(storage_uri="file:///data")


def _job(**changes):
    doc = two_sft_job()
    doc["spec"]["stages"][0]["backoffLimit"] = 1
    doc["spec"].update(changes)
    return parse_job(doc)


def test_stages_run_in_order_and_the_second_gets_the_first_checkpoint():
    job = _job()
    status = initial_status(job)
    action = next_action(job, status, DEFAULTS, NOW)
    assert isinstance(action, StartRun)
    first = action.config
    assert (first.stage, first.attempt, first.inputs.policy) == ("sft", 1, None)
    assert first.stage_key == "default/demo/sft" and first.storage.uri == "file:///data"
    assert first.hyperparameters["maxSteps"] == 4 and first.hyperparameters["learningRate"] == 1e-3

    status = mark_started(job, status, "sft", NOW)
    assert status.phase == "Running" and status.current_stage == "sft" and status.stages[0].attempts == 1
    status = record_outcome(job, status, "sft", RunOutcome(0, "file:///data/default/demo/sft/checkpoint-4", {"loss": 0.5}), NOW)
    assert status.stages[0].phase == "Succeeded" and status.output_model.endswith("sft/checkpoint-4")

    second = next_action(job, status, DEFAULTS, NOW).config
    assert second.stage == "sft2" and second.inputs.policy == "file:///data/default/demo/sft/checkpoint-4"
    status = record_outcome(job, mark_started(job, status, "sft2", NOW), "sft2", RunOutcome(0, "file:///x/sft2/checkpoint-4"), NOW)
    assert status.phase == "Succeeded"
    assert status.condition("Succeeded").status == "True"
    assert status.output_model == "file:///x/sft2/checkpoint-4"
    assert isinstance(next_action(job, status, DEFAULTS, NOW), Finished)


def test_failure_is_retried_with_backoff_then_fails_after_backoff_limit():
    job = _job()
    status = mark_started(job, initial_status(job), "sft", NOW)
    status = record_outcome(job, status, "sft", RunOutcome(1, reason="OOMKilled", message="out of memory"), NOW)
    stage = status.stages[0]
    assert (stage.phase, stage.failures, stage.reason) == ("Retrying", 1, "OOMKilled")
    assert status.condition("Progressing").reason == "OOMKilled"
    waiting = next_action(job, status, DEFAULTS, NOW + timedelta(seconds=1))
    assert isinstance(waiting, Wait) and waiting.seconds == pytest.approx(9.0)  # the first retry is 10 s after the failure
    retry = next_action(job, status, DEFAULTS, NOW + timedelta(seconds=11))
    assert isinstance(retry, StartRun) and retry.config.attempt == 2

    status = mark_started(job, status, "sft", NOW)
    status = record_outcome(job, status, "sft", RunOutcome(1), NOW)
    assert status.phase == "Failed" and status.stages[0].phase == "Failed"
    failed = status.condition("Failed")
    assert failed.status == "True" and failed.reason == "BackoffLimitExceeded" and "backoffLimit 1" in failed.message
    assert isinstance(next_action(job, status, DEFAULTS, NOW), Finished)


def test_configuration_error_fails_at_once():
    job = _job()
    status = mark_started(job, initial_status(job), "sft", NOW)
    status = record_outcome(job, status, "sft", RunOutcome(78, message="dataset has no prompt field"), NOW)
    assert status.phase == "Failed"
    assert status.condition("Failed").reason == "ConfigurationError"
    assert "dataset has no prompt field" in status.condition("Failed").message
    assert status.stages[0].failures == 1


def test_sigterm_after_checkpoint_is_resumed_not_counted():
    job = _job()
    status = mark_started(job, initial_status(job), "sft", NOW)
    status = record_outcome(job, status, "sft", RunOutcome(143), NOW)
    assert status.phase == "Suspended" and status.stages[0].failures == 0
    again = next_action(job, status, DEFAULTS, NOW)
    assert isinstance(again, StartRun) and again.config.attempt == 2


def test_suspend_in_spec_stops_planning():
    job = _job(suspend=True)
    assert isinstance(next_action(job, initial_status(job), DEFAULTS, NOW), Suspend)


def test_retry_delay_is_exponential_and_capped():
    assert [retry_delay(n) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert retry_delay(30) == 600


def test_condition_transition_time_only_moves_on_a_change():
    job = _job()
    status = mark_started(job, initial_status(job), "sft", NOW)
    first = status.condition("Progressing").last_transition_time
    status = record_outcome(job, status, "sft", RunOutcome(0, "file:///c"), NOW + timedelta(minutes=5))
    # still Progressing=True (the next stage is to run): the transition time stays
    assert status.condition("Progressing").last_transition_time == first


# -- reruns after a spec change ---------------------------------------------------------------------

def _finished(doc) -> tuple:
    """The job of ``doc`` run to Succeeded: every stage started, ended with a checkpoint and metrics."""
    job = parse_job(doc)
    status = initial_status(job)
    for stage in job.spec.stages:
        status = mark_started(job, status, stage.name, NOW)
        uri = f"file:///data/default/demo/{stage.name}/checkpoint-4"
        status = record_outcome(job, status, stage.name, RunOutcome(0, uri, {"loss": 0.5}), NOW)
    assert status.phase == "Succeeded"
    return job, status


def test_an_unchanged_spec_reruns_nothing_and_settings_that_change_no_result_neither():
    doc = two_sft_job()
    job, status = _finished(doc)
    assert plan_reruns(job, status, now=NOW) == (status, [])
    for stage in doc["spec"]["stages"]:
        stage["hyperparameters"].update(logEvery=1, checkpointEvery=2, keepCheckpoints=7)
        stage["resources"] = {"cpu": "8"}
        stage["backoffLimit"] = 5
    doc["spec"]["storage"] = {"uri": "s3://elsewhere/runs"}
    same, reruns = plan_reruns(parse_job(doc), status, now=NOW)
    assert reruns == [] and same.phase == "Succeeded"


def test_a_changed_stage_and_every_stage_after_it_rerun_from_their_inputs_under_a_new_key():
    doc = two_sft_job()
    job, status = _finished(doc)
    doc["spec"]["stages"][0]["hyperparameters"]["learningRate"] = 0.01
    changed = parse_job(doc)
    planned, reruns = plan_reruns(changed, status, now=NOW)
    assert [(r.stage, r.changed) for r in reruns] == [("sft", True), ("sft2", False)]
    assert reruns[0].reason == "stage sft reruns from its inputs: its hyperparameters changed since it ran"
    assert reruns[1].reason == "stage sft2 reruns: stage sft before it reruns"
    # nothing of the old spec is reported: no phase, checkpoint, metrics or output model
    assert planned.phase == "Running" and planned.completion_time is None and planned.output_model is None
    assert planned.condition("Succeeded") is None
    assert planned.condition("Progressing").reason == "SpecChanged"
    for stage in planned.stages:
        assert (stage.phase, stage.checkpoint_uri, stage.metrics, stage.rerun, stage.attempts) == ("Pending", None, {}, 1, 1)
    first = next_action(changed, planned, DEFAULTS, NOW).config
    # attempts keep counting (new run names); the key is new, so no checkpoint of the old spec is resumed
    assert (first.stage, first.attempt, first.stage_key) == ("sft", 2, "default/demo/sft/rerun-1")
    assert first.hyperparameters["learningRate"] == 0.01
    # planning again changes nothing: the reset stages have not run yet
    assert plan_reruns(changed, planned, now=NOW)[1] == []
    # the rerun records the new fingerprint: once it ran, the same spec is not a change
    ran = record_outcome(changed, mark_started(changed, planned, "sft", NOW), "sft", RunOutcome(0, "file:///x/sft/rerun-1/checkpoint-4"), NOW)
    assert plan_reruns(changed, ran, now=NOW)[1] == []
    assert next_action(changed, ran, DEFAULTS, NOW).config.inputs.policy == "file:///x/sft/rerun-1/checkpoint-4"


def test_an_input_that_points_elsewhere_is_a_change():
    doc = two_sft_job()
    job, status = _finished(doc)
    doc["spec"]["stages"][1]["policy"] = {"uri": "s3://models/other/checkpoint-1"}
    _, reruns = plan_reruns(parse_job(doc), status, now=NOW)
    assert [(r.stage, r.reason) for r in reruns] == [("sft2", "stage sft2 reruns from its inputs: its inputs changed since it ran")]


def test_a_rerun_asked_for_resets_that_stage_and_the_ones_after_it():
    job, status = _finished(two_sft_job())
    planned, reruns = plan_reruns(job, status, rerun=("sft2",), now=NOW)
    assert [(r.stage, r.changed) for r in reruns] == [("sft2", False)]
    assert planned.stages[0].phase == "Succeeded" and planned.stages[1].phase == "Pending"
    assert next_action(job, planned, DEFAULTS, NOW).config.stage_key == "default/demo/sft2/rerun-1"


def test_a_stage_added_to_a_finished_job_runs_and_the_job_leaves_succeeded():
    doc = two_sft_job()
    job, status = _finished(doc)
    third = {**doc["spec"]["stages"][1], "name": "sft3", "policy": {"fromStage": "sft2"}}
    doc["spec"]["stages"].append(third)
    planned, reruns = plan_reruns(parse_job(doc), status, now=NOW)
    assert reruns == [] and planned.phase == "Running" and planned.condition("Succeeded") is None
    assert planned.condition("Progressing").reason == "StagesAdded"
    assert [s.phase for s in planned.stages] == ["Succeeded", "Succeeded", "Pending"]
    action = next_action(parse_job(doc), planned, DEFAULTS, NOW)
    assert action.config.stage == "sft3" and action.config.inputs.policy == "file:///data/default/demo/sft2/checkpoint-4"


def test_a_failed_job_whose_failed_stage_changed_runs_again_and_one_that_did_not_stays_failed():
    doc = two_sft_job()
    job = parse_job(doc)
    status = mark_started(job, initial_status(job), "sft", NOW)
    status = record_outcome(job, status, "sft", RunOutcome(78, message="maxLength too small"), NOW)
    assert status.phase == "Failed"
    assert plan_reruns(job, status, now=NOW)[0].phase == "Failed"
    doc["spec"]["stages"][0]["hyperparameters"]["maxLength"] = 128
    planned, reruns = plan_reruns(parse_job(doc), status, now=NOW)
    assert [r.stage for r in reruns] == ["sft"]
    assert planned.phase == "Running" and planned.condition("Failed") is None and planned.stages[0].failures == 0


def test_a_status_from_an_older_version_is_not_taken_for_a_change():
    job, status = _finished(two_sft_job())
    for stage in status.stages:  # the hashes an older operator recorded: other parts
        stage.spec_fingerprint = {"model": "0" * 16, "storage": "1" * 16, "stage": "2" * 16}
    assert plan_reruns(job, status, now=NOW)[1] == []


def test_config_changes_name_the_fields_with_old_and_new_values():
    job, status = _finished(two_sft_job())
    old = resolve_run(job, status, "sft", 1, DEFAULTS)
    doc = two_sft_job()
    doc["spec"]["stages"][0]["hyperparameters"].update(learningRate=0.01, logEvery=1)
    new = resolve_run(parse_job(doc), status, "sft", 2, DEFAULTS)
    assert config_changes(old, new) == "hyperparameters.learningRate 0.001 -> 0.01"
