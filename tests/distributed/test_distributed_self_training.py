"""The self-training stages (rejection_sampling, online_dpo, spin) on two processes through
`alignops run`: the recipes' stages as one tiny pipeline, each self-training stage on 2 gloo
processes, raft and rest under the default ZeRO-2, oaif and spin under ZeRO-3 (oaif's frozen
reference loaded and sharded rather than copied from the sharded policy).

The samples differ from a one-process run: each process samples its share of the prompts with its
calls' own seeds. The update of the same samples is the same global mean at any process count
(`IterativeStage.train_steps`); the equality of that arithmetic is what tests/distributed's SFT and
DPO tests check."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from stages.test_stages_iterative import ITERATIVE_TYPES, _overrides, _recipes_as_one_job
from suite import run_cli

pytestmark = pytest.mark.slow

ZERO3 = {"oaif", "spin"}


def test_every_self_training_stage_runs_on_two_processes(tmp_path):
    document = _recipes_as_one_job()
    manifest = tmp_path / "recipes.yaml"
    manifest.write_text(yaml.safe_dump(document))
    trained = [s["name"] for s in document["spec"]["stages"] if s["type"] in ITERATIVE_TYPES]
    assert ZERO3 <= set(trained), trained
    sets = ["--set", "stages.raft.hyperparameters.minReward=0.0"]  # a tiny model is never right: keep its best anyway
    for name in trained:
        sets += ["--set", f"stages.{name}.resources.gpus=2"]
        if name in ZERO3:
            sets += ["--set", f"stages.{name}.distributed.zeroStage=3"]
    done = run_cli("run", str(manifest), "--workdir", str(tmp_path), *_overrides(document), *sets, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    status = json.loads((tmp_path / "recipes" / "status.json").read_text())["status"]
    stages = {s["name"]: s for s in status["stages"]}
    for name in trained:
        metrics = stages[name]["metrics"]
        assert stages[name]["phase"] == "Succeeded" and metrics["worldSize"] == 2, (name, metrics)
        assert metrics["rounds"] == 2 and {"accuracyBefore", "accuracyAfter"} <= set(metrics), (name, metrics)
        assert stages[name]["checkpointUri"].endswith(f"/round-2/checkpoint-{int(metrics['steps'])}")
        assert "launching 2 processes" in (tmp_path / "recipes" / name / "attempt-1.log").read_text(), name
        records = [json.loads(line) for line in (tmp_path / "recipes" / name / "metrics.jsonl").read_text().splitlines()]
        # a tiny model's round may have nothing to learn from (no answer reaches a threshold, every
        # pair a tie); where a round trained, its figures are the processes' global ones, finite
        assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in records if "loss" in r), name
    # raft keeps its top answers (minReward 0) and spin pairs the SFT response with its own: both
    # train; oaif's verifier ties every pair of a tiny model, so it commits rounds without a step
    assert stages["raft"]["metrics"]["steps"] >= 1 and stages["spin"]["metrics"]["steps"] >= 1
