"""The planner: stage order, config resolution and the retry rule, as pure functions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from alignops.api import parse_job
from alignops.planner import (
    Defaults, Finished, RunOutcome, StartRun, Suspend, Wait, initial_status, mark_started, next_action,
    record_outcome, retry_delay,
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
