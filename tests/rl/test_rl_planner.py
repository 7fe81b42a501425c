"""The planner with an `rl` stage: placement colocated is one run (role all); placement split is
rollout 1, train 1, rollout 2, train 2, ... each a run with its round and role, in order, with
retries and SIGTERM applying to the run in hand."""

from __future__ import annotations

from datetime import datetime, timezone

from alignops.api import parse_job
from alignops.planner import (
    Defaults, Finished, RunOutcome, StartRun, Wait, initial_status, mark_started, next_action, record_outcome,
)

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
DEFAULTS = Defaults(storage_uri="file:///data")


def _job(placement: str, rounds: int = 2):
    return parse_job({
        "apiVersion": "alignops.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": "demo"},
        "spec": {
            "model": {"architecture": {"hiddenSize": 32, "layers": 1, "heads": 2, "maxPositions": 32}},
            "stages": [
                {"name": "sft", "type": "sft", "datasets": {"train": {"generator": "arithmetic", "size": 64}}},
                {"name": "rl", "type": "rl", "policy": {"fromStage": "sft"}, "backoffLimit": 1,
                 "datasets": {"train": {"generator": "arithmetic", "size": 64}},
                 "hyperparameters": {"rounds": rounds, "placement": placement}},
            ],
        },
    })


def _after_sft(job):
    status = mark_started(job, initial_status(job), "sft", NOW)
    return record_outcome(job, status, "sft", RunOutcome(0, "file:///data/default/demo/sft/checkpoint-4"), NOW)


def _run(job, status, exit_code=0, uri=None):
    """Start the planner's next run, end it with ``exit_code``; returns (its config, the new status)."""
    action = next_action(job, status, DEFAULTS, NOW)
    assert isinstance(action, StartRun), action
    config = action.config
    status = mark_started(job, status, config.stage, NOW)
    return config, record_outcome(job, status, config.stage, RunOutcome(exit_code, uri, {"rewardLast": 0.5}), NOW)


def test_colocated_is_one_run_of_every_round():
    job = _job("colocated")
    config, status = _run(job, _after_sft(job), uri="file:///data/default/demo/rl/round-2/checkpoint-2")
    assert (config.stage, config.role, config.round, config.algorithm) == ("rl", "all", None, "grpo")
    assert config.inputs.policy == "file:///data/default/demo/sft/checkpoint-4"
    assert status.phase == "Succeeded" and status.stage("rl").round is None


def test_split_runs_rollout_then_train_for_each_round_in_order():
    job = _job("split", rounds=2)
    status = _after_sft(job)
    seen = []
    for expected in [(1, "rollout"), (1, "train"), (2, "rollout"), (2, "train")]:
        action = next_action(job, status, DEFAULTS, NOW)
        config = action.config
        seen.append((config.round, config.role))
        status = mark_started(job, status, "rl", NOW)
        # while a run is in flight, status says which one it is
        assert (status.stage("rl").round, status.stage("rl").role) == expected
        uri = f"file:///data/default/demo/rl/round-{config.round}/checkpoint-{config.round}" if config.role == "train" else None
        status = record_outcome(job, status, "rl", RunOutcome(0, uri, {"rewardLast": float(config.round)}), NOW)
        if expected != (2, "train"):
            assert status.stage("rl").phase == "Running" and status.phase == "Running"
            assert status.condition("Progressing").reason == "SplitRunSucceeded"
    assert seen == [(1, "rollout"), (1, "train"), (2, "rollout"), (2, "train")]
    rl = status.stage("rl")
    assert rl.phase == "Succeeded" and status.phase == "Succeeded"
    assert rl.attempts == 4 and rl.failures == 0
    assert status.output_model == rl.checkpoint_uri == "file:///data/default/demo/rl/round-2/checkpoint-2"
    assert rl.metrics["rewardLast"] == 2.0
    assert isinstance(next_action(job, status, DEFAULTS, NOW), Finished)


def test_split_keeps_the_last_train_runs_checkpoint_between_runs():
    job = _job("split", rounds=2)
    status = _after_sft(job)
    _, status = _run(job, status)  # rollout 1
    _, status = _run(job, status, uri="file:///data/default/demo/rl/round-1/checkpoint-1")  # train 1
    _, status = _run(job, status)  # rollout 2 returns no checkpoint
    assert status.stage("rl").checkpoint_uri == "file:///data/default/demo/rl/round-1/checkpoint-1"


def test_a_failed_split_run_is_retried_as_the_same_run():
    job = _job("split", rounds=2)
    status = _after_sft(job)
    _, status = _run(job, status)  # rollout 1 ok
    config, status = _run(job, status, exit_code=1)  # train 1 fails
    assert (config.round, config.role) == (1, "train")
    assert status.stage("rl").phase == "Retrying"
    assert isinstance(next_action(job, status, DEFAULTS, NOW), Wait)
    later = datetime(2026, 1, 1, 0, 5, tzinfo=timezone.utc)
    retry = next_action(job, status, DEFAULTS, later).config
    assert (retry.round, retry.role, retry.attempt) == (1, "train", 3)


def test_a_stopped_split_run_resumes_as_the_same_run():
    job = _job("split", rounds=2)
    status = _after_sft(job)
    _, status = _run(job, status)  # rollout 1
    _, status = _run(job, status, exit_code=143)  # train 1 stopped by SIGTERM
    assert status.phase == "Suspended" and status.stage("rl").failures == 0
    status.phase = "Running"  # what the executor does on resume
    resumed = next_action(job, status, DEFAULTS, NOW).config
    assert (resumed.round, resumed.role) == (1, "train")


def test_rounds_lowered_below_the_current_round_end_with_the_last_train_run():
    job = _job("split", rounds=3)
    status = _after_sft(job)
    for _ in range(4):  # rollout 1, train 1, rollout 2, train 2: next is rollout 3
        _, status = _run(job, status)
    fewer = _job("split", rounds=2)
    config = next_action(fewer, status, DEFAULTS, NOW).config
    assert (config.round, config.role) == (2, "train")
