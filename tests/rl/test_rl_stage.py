"""The rl stage end to end on a tiny model: split and colocated placements compute the same rounds
from the same seed; a run killed (SIGKILL) or stopped (SIGTERM) mid-round resumes at the last
committed round and ends where an uninterrupted run ends; PPO's critic travels in the checkpoint."""

from __future__ import annotations

import json
import math
import re

import pytest

from alignops.api import parse_job
from alignops.local_executor import LocalExecutor
from rl_stage_helpers import checkpoint_dir, metrics_records, result, rl_job, run_stage, same_weights, write_config

pytestmark = pytest.mark.slow

STATUS_KEYS = {"accuracyBefore", "accuracyAfter", "rewardFirst", "rewardLast", "loss", "kl", "rounds", "steps"}


def _executor_run(document, workdir):
    executor = LocalExecutor(parse_job(document), workdir)
    status = executor.run()
    return executor, status


def test_split_and_colocated_give_the_same_rounds(tmp_path):
    colocated_doc = rl_job()
    split_doc = rl_job(placement="split")
    _, colocated = _executor_run(colocated_doc, tmp_path / "colocated")
    executor, split = _executor_run(split_doc, tmp_path / "split")
    assert colocated.phase == split.phase == "Succeeded"
    a, b = colocated.stage("rl"), split.stage("rl")
    assert a.attempts == 1 and b.attempts == 4  # rollout 1, train 1, rollout 2, train 2
    assert a.checkpoint_uri.endswith("rl/round-2/checkpoint-4") and b.checkpoint_uri.endswith("rl/round-2/checkpoint-4")
    assert same_weights(a.checkpoint_uri, b.checkpoint_uri)
    for round_ in (1, 2):
        rollouts = [(tmp_path / p / f"default/rl-demo/rl/round-{round_}/rollouts.jsonl").read_text() for p in ("colocated", "split")]
        assert rollouts[0] == rollouts[1]
    assert STATUS_KEYS <= set(a.metrics)
    for key in STATUS_KEYS:
        assert a.metrics[key] == pytest.approx(b.metrics[key], abs=1e-6), key
    # the split runs each left their config with their round and role
    configs = [json.loads((executor.stage_dir("rl") / f"run-a{n}.json").read_text()) for n in range(1, 5)]
    assert [(c["round"], c["role"]) for c in configs] == [(1, "rollout"), (1, "train"), (2, "rollout"), (2, "train")]
    # round records: the rollout runs log their generation figures, the train runs the whole round
    records = metrics_records(executor.stage_dir("rl") / "metrics.jsonl")
    assert [(r["round"], r.get("phase")) for r in records] == [(1, "rollout"), (1, None), (2, "rollout"), (2, None)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A 3-round PPO run (critic, KL in the reward) without interruption: the reference result."""
    base = tmp_path_factory.mktemp("uninterrupted")
    config = write_config(rl_job(algorithm="ppo", rounds=3, samplesPerPrompt=2), base / "store", base)
    done = run_stage(config, base)
    assert done.returncode == 0, done.stderr
    return base, result(base)


@pytest.mark.parametrize("signal_name, exit_code", [("SIGKILL", -9), ("SIGTERM", 143)])
def test_a_run_interrupted_mid_round_resumes_at_the_last_committed_round(tmp_path, uninterrupted, signal_name, exit_code):
    base, expected = uninterrupted
    config = write_config(rl_job(algorithm="ppo", rounds=3, samplesPerPrompt=2), tmp_path / "store", tmp_path)
    stage_root = tmp_path / "store" / "default/rl-demo/rl"
    # round 2: its rollouts are committed, then the process dies before its 2nd optimiser step
    killed = run_stage(config, tmp_path, kill_at=(2, 2, signal_name))
    assert killed.returncode == exit_code, killed.stderr
    if signal_name == "SIGTERM":
        assert "stopped while training round 2; rounds 1..1 are committed" in result(tmp_path)["message"]
    assert sorted(p.name for p in stage_root.glob("round-*/checkpoint-*")) == ["checkpoint-2"]
    assert (stage_root / "round-1/checkpoint-2/critic/model.safetensors").exists()
    assert [r["round"] for r in metrics_records(tmp_path / "metrics.jsonl")] == [1]
    round_2_rollouts = (stage_root / "round-2/rollouts.jsonl").stat().st_mtime_ns

    resumed = run_stage(config, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    # resumed at round 2 (round 1 is not trained again), reusing round 2's committed rollouts
    assert [r["round"] for r in metrics_records(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    assert (stage_root / "round-2/rollouts.jsonl").stat().st_mtime_ns == round_2_rollouts
    got = result(tmp_path)
    assert got["checkpointUri"].endswith("rl/round-3/checkpoint-6")
    # and it ends exactly where the uninterrupted run ends
    assert same_weights(got["checkpointUri"], expected["checkpointUri"])
    for key in ("rewardFirst", "rewardLast", "loss", "accuracyBefore", "accuracyAfter"):
        assert got["metrics"][key] == pytest.approx(expected["metrics"][key], abs=1e-6), key
    critic = checkpoint_dir(got["checkpointUri"]) / "critic" / "model.safetensors"
    assert critic.exists()


def test_ppo_records_value_loss_and_a_finite_loss(uninterrupted):
    base, expected = uninterrupted
    records = metrics_records(base / "metrics.jsonl")
    assert [r["round"] for r in records] == [1, 2, 3]
    for record in records:
        assert math.isfinite(record["loss"]) and math.isfinite(record["value_loss"])
        assert record["logprob_gap"] < 1e-3  # the colocated engine samples with the trainer's own weights
        assert 0.0 <= record["clip_fraction"] <= 1.0
    # the status figures are the round records' (rounded to 6 decimals): 3 rounds of 2 mini-batch
    # steps, the reward mean of the first and last round, the last round's loss and KL, the last
    # held-out accuracy
    metrics = expected["metrics"]
    assert STATUS_KEYS <= set(metrics)
    assert (metrics["rounds"], metrics["steps"]) == (3, 6)
    last = records[-1]
    for key, value in (("rewardFirst", records[0]["reward_mean"]), ("rewardLast", last["reward_mean"]), ("loss", last["loss"]),
                       ("kl", last["kl"]), ("accuracyAfter", [r["accuracy"] for r in records if "accuracy" in r][-1])):
        assert metrics[key] == pytest.approx(value, abs=1e-6), key


def _documented_series(doc: str) -> dict[str, str]:
    """rl.stage's metrics table as {record key: Prometheus series}. A row lists its keys and their
    series in the same order; a series written ``_x`` is short for ``alignops_stage_x``, one ending
    in ``...`` is a prefix, and keys past the last listed series (``step, total_steps``) have none."""
    lines = doc.splitlines()
    borders = [i for i, line in enumerate(lines) if re.fullmatch(r"=+( +=+)+", line)]
    table: dict[str, str] = {}
    for line in lines[borders[1] + 1 : borders[2]]:
        keys, series, _meaning = re.split(r"  +", line.strip(), maxsplit=2)
        expanded = [f"alignops_stage{name}" if name.startswith("_") else name for name in map(str.strip, series.split(","))]
        table.update(zip(map(str.strip, keys.split(",")), expanded))
    return table


def test_every_round_metric_is_in_the_prometheus_table(uninterrupted):
    from alignops.metrics import names
    from alignops.workloads.rl import stage as rl

    base, _ = uninterrupted
    doc = rl.__doc__
    table = _documented_series(doc)
    for record in metrics_records(base / "metrics.jsonl"):
        for key, value in record.items():
            if key in ("time", "round") or not isinstance(value, (int, float)):
                continue
            listed = "reward_<function>" if key.startswith("reward_") and key not in ("reward_mean", "reward_std") else key
            assert re.search(rf"(^|[ ,]){re.escape(listed)}([ ,]|$)", doc, re.M), f"{key} is not in rl.stage's metrics table"
            # the gauge the exporter makes of the key is the series the table names for it
            series, documented = names.record_metric(key).name, table.get(listed)
            if listed == "reward_<function>":
                assert series == documented.replace("<function>", key[len("reward_"):]), (key, series)
            elif documented is not None and documented.endswith("..."):
                assert series.startswith(documented[:-3]), (key, series, documented)
            elif documented is not None:
                assert series == documented, (key, series, documented)
    for key in ("reward_mean", "kl", "logprob_gap", "tokens_per_second_generate", "time_generate", "clip_fraction"):
        assert table[key] == names.record_metric(key).name, key
